"""detailsr.imageio: every format variant built from real images, checked against an independent decoder.

Sources are small crops of the project's CC0 photos (tests/data/images, examples/). Each variant is
written into tmp_path with Pillow or OpenCV, read back with `read_image`, and compared with Pillow's
own decoding or with the numpy array it was made from: exactly for lossless formats, within a
tolerance for JPEG.
"""

import io
import os
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import photo
from PIL import Image, ImageOps

from detailsr.choices import READ_EXTENSIONS
from detailsr.errors import ImageError
from detailsr.imageio import (
    DEFAULT_MAX_PIXELS,
    WRITE_EXTENSIONS,
    LoadedImage,
    from_tensor,
    read_image,
    to_tensor,
    write_image,
)

# 72 x 56 boxes (left, upper, right, lower): small, detailed, and not square so that rotations show
BOXES = {"chelsea": (60, 40, 132, 96), "camera": (28, 24, 100, 80), "coffee": (114, 60, 186, 116)}


def _crop(name: str, mode: str) -> np.ndarray:
    with Image.open(photo(name)) as image:
        return np.asarray(image.convert(mode).crop(BOXES[name]))


@pytest.fixture
def rgb() -> np.ndarray:
    return _crop("chelsea", "RGB")  # the cat's eye and fur


@pytest.fixture
def gray() -> np.ndarray:
    return _crop("camera", "L")  # the photographer's face, hand and camera


@pytest.fixture
def alpha() -> np.ndarray:
    """A real, varying alpha channel (the luminance of another photograph) with a clear stripe."""
    matte = _crop("coffee", "L").copy()  # the cup's rim and the coffee
    matte[:, :6] = 0
    matte[:, -6:] = 255
    return matte


def _bgr(pixels: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(pixels[..., ::-1])


def _png_bytes(samples: np.ndarray, colour_type: int, bit_depth: int, trns: bytes = b"", size=None) -> bytes:
    """A minimal PNG, for variants neither Pillow nor OpenCV write (16-bit gray+alpha, 16-bit tRNS).

    `size` puts another width x height into the header than the samples have (a decompression bomb).
    """
    rows = samples.astype(">u2" if bit_depth == 16 else "u1").reshape(samples.shape[0], -1)
    width, height = size or (samples.shape[1], samples.shape[0])
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0))
    extra = chunk(b"tRNS", trns) if trns else b""
    return b"\x89PNG\r\n\x1a\n" + header + extra + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def _psnr(decoded: np.ndarray, reference: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of 8-bit images; `where` limits it to some pixels (lossy codecs may alter the colour
    under fully transparent pixels, which nobody sees)."""
    error = (decoded.astype(np.float64) - reference) ** 2
    return float(10 * np.log10(255**2 / (error if where is None else error[where]).mean()))


def _pillow_decoded(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode))


def _save(path: Path, image: Image.Image, **options) -> Path:
    image.save(path, **options)
    return path


def _cv2_save(path: Path, array: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), array)
    return path


# ------------------------------------------------------------------------------------------------ reading


def test_real_rgb_png_matches_pillow():
    path = photo("chelsea")
    loaded = read_image(path)
    assert isinstance(loaded, LoadedImage)
    assert loaded.pixels.dtype == np.uint8 and loaded.pixels.flags.c_contiguous
    np.testing.assert_array_equal(loaded.pixels, _pillow_decoded(path, "RGB"))
    assert loaded.alpha is None and not loaded.grayscale and loaded.path == path


def test_real_gray_png_is_three_channels_and_marked_gray():
    path = photo("camera")
    loaded = read_image(str(path))
    reference = _pillow_decoded(path, "L")
    assert loaded.pixels.shape == (*reference.shape, 3) and loaded.grayscale
    for channel in range(3):
        np.testing.assert_array_equal(loaded.pixels[..., channel], reference)


def _variant(name: str, folder: Path, rgb: np.ndarray, gray: np.ndarray, alpha: np.ndarray):
    """Write one variant; return (path, expected RGB pixels, expected alpha or None, expected gray flag)."""
    wide = rgb.astype(np.uint16) * 257 + np.arange(rgb.shape[1], dtype=np.uint16)[:, None]  # low byte used
    gray16 = gray.astype(np.uint16) * 257
    alpha16 = alpha.astype(np.uint16) * 257
    rgba = np.dstack([rgb, alpha])
    path = folder / name
    palette = Image.fromarray(rgb).quantize(32)
    if name == "rgb8.png":
        return _save(path, Image.fromarray(rgb)), rgb, None, False
    if name == "rgb16.png":
        return _cv2_save(path, _bgr(wide)), wide, None, False
    if name == "rgba8.png":
        return _save(path, Image.fromarray(rgba)), rgb, alpha, False
    if name == "rgba16.png":
        return _cv2_save(path, np.dstack([_bgr(wide), alpha16])), wide, alpha16, False
    if name == "gray16.png":
        return _cv2_save(path, gray16), np.dstack([gray16] * 3), None, True
    if name == "la8.png":
        return _save(path, Image.fromarray(np.dstack([gray, alpha]))), np.dstack([gray] * 3), alpha, True
    if name == "la16.png":
        path.write_bytes(_png_bytes(np.dstack([gray16, alpha16]), colour_type=4, bit_depth=16))
        return path, np.dstack([gray16] * 3), alpha16, True
    if name == "palette.png":
        _save(path, palette)
        return path, _pillow_decoded(path, "RGB"), None, False
    if name == "palette-transparency.png":
        _save(path, palette, transparency=bytes([255] * 5 + [0, 128] + [255] * 25))
        decoded = _pillow_decoded(path, "RGBA")
        return path, decoded[..., :3], decoded[..., 3], False
    if name == "rgb-trns.png":
        _save(path, Image.fromarray(rgb), transparency=tuple(int(v) for v in rgb[10, 10]))
        decoded = _pillow_decoded(path, "RGBA")
        return path, rgb, decoded[..., 3], False
    if name == "gray-trns.png":
        _save(path, Image.fromarray(gray), transparency=int(gray[10, 10]))
        decoded = _pillow_decoded(path, "LA")
        return path, np.dstack([gray] * 3), decoded[..., 1], True
    if name == "gray16-trns.png":
        value = int(gray16[10, 10])
        path.write_bytes(_png_bytes(gray16, 0, 16, trns=struct.pack(">H", value)))
        return path, np.dstack([gray16] * 3), np.where(gray16 == value, 0, 65535).astype(np.uint16), True
    if name == "bilevel.png":
        _save(path, Image.fromarray(gray > 128))
        return path, np.dstack([_pillow_decoded(path, "L")] * 3), None, True
    if name == "rgb8.tif":
        return _save(path, Image.fromarray(rgb)), rgb, None, False
    if name == "rgb16.tif":
        return _cv2_save(path, _bgr(wide)), wide, None, False
    if name == "rgba8.tif":  # Pillow writes unassociated alpha, which OpenCV would premultiply
        return _save(path, Image.fromarray(rgba)), rgb, alpha, False
    if name == "rgba16.tif":
        return _cv2_save(path, np.dstack([_bgr(wide), alpha16])), wide, alpha16, False
    if name == "la8.tif":
        return _save(path, Image.fromarray(np.dstack([gray, alpha]))), np.dstack([gray] * 3), alpha, True
    if name == "gray16.tif":
        return _cv2_save(path, gray16), np.dstack([gray16] * 3), None, True
    if name == "cmyk.tif":
        _save(path, Image.fromarray(rgb).convert("CMYK"))
        return path, _pillow_decoded(path, "RGB"), None, False
    if name == "palette.tif":
        _save(path, palette)
        return path, _pillow_decoded(path, "RGB"), None, False
    if name == "lossless.webp":
        return _save(path, Image.fromarray(rgb), lossless=True), rgb, None, False
    if name == "lossless-rgba.webp":  # exact: keep the colour under transparent pixels
        return _save(path, Image.fromarray(rgba), lossless=True, exact=True), rgb, alpha, False
    if name == "rgb.bmp":
        return _save(path, Image.fromarray(rgb)), rgb, None, False
    if name == "palette.gif":
        _save(path, palette)
        return path, _pillow_decoded(path, "RGB"), None, False
    raise AssertionError(name)


LOSSLESS_VARIANTS = [
    "rgb8.png", "rgb16.png", "rgba8.png", "rgba16.png", "gray16.png", "la8.png", "la16.png", "palette.png",
    "palette-transparency.png", "rgb-trns.png", "gray-trns.png", "gray16-trns.png", "bilevel.png",
    "rgb8.tif", "rgb16.tif", "rgba8.tif", "rgba16.tif", "la8.tif", "gray16.tif", "cmyk.tif", "palette.tif",
    "lossless.webp", "lossless-rgba.webp", "rgb.bmp", "palette.gif",
]  # fmt: skip


@pytest.mark.parametrize("name", LOSSLESS_VARIANTS)
def test_lossless_variant_decodes_exactly(name, tmp_path, rgb, gray, alpha):
    path, pixels, expected_alpha, grayscale = _variant(name, tmp_path, rgb, gray, alpha)
    loaded = read_image(path)
    assert loaded.pixels.dtype == pixels.dtype and loaded.pixels.shape == pixels.shape
    np.testing.assert_array_equal(loaded.pixels, pixels)
    if expected_alpha is None:
        assert loaded.alpha is None
    else:
        assert loaded.alpha is not None and loaded.alpha.dtype == pixels.dtype
        np.testing.assert_array_equal(loaded.alpha, expected_alpha)
    assert loaded.grayscale is grayscale


@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_matches_pillow_within_tolerance(mode, tmp_path, rgb):
    path = _save(tmp_path / f"{mode}.jpg", Image.fromarray(rgb).convert(mode), quality=92)
    loaded = read_image(path)
    reference = _pillow_decoded(path, "RGB")
    difference = np.abs(loaded.pixels.astype(int) - reference)
    assert difference.max() <= 2, mode
    assert loaded.grayscale is (mode == "L") and loaded.alpha is None
    if mode == "CMYK":  # Pillow writes Adobe (inverted) CMYK; the colours must come back, not negatives
        assert np.abs(loaded.pixels.astype(int) - rgb).mean() < 6


def test_lossy_webp_is_close_to_the_source(tmp_path, rgb):
    path = _save(tmp_path / "lossy.webp", Image.fromarray(rgb), quality=90)
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded.pixels, _pillow_decoded(path, "RGB"))
    assert np.abs(loaded.pixels.astype(int) - rgb).mean() < 6


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("ext", [".png", ".jpg", ".webp", ".tif"])
def test_exif_orientation_is_applied_once(ext, orientation, tmp_path, rgb):
    options = {".jpg": {"quality": 95}, ".webp": {"lossless": True}}.get(ext, {})
    path = _save(tmp_path / f"o{orientation}{ext}", Image.fromarray(rgb), exif=_exif(orientation), **options)
    with Image.open(path) as image:
        # For TIFF Pillow's decoder applies the tag itself; exif_transpose then has nothing left to do.
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    loaded = read_image(path)
    rotated = orientation >= 5
    assert loaded.pixels.shape == ((72, 56, 3) if rotated else (56, 72, 3))
    if ext == ".jpg":
        assert np.abs(loaded.pixels.astype(int) - expected).max() <= 2
    else:
        np.testing.assert_array_equal(loaded.pixels, expected)


@pytest.mark.parametrize("orientation", [3, 6, 7])
def test_exif_orientation_turns_alpha_with_the_pixels(orientation, tmp_path, rgb, alpha):
    path = _save(tmp_path / "o.png", Image.fromarray(np.dstack([rgb, alpha])), exif=_exif(orientation))
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image))
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded.pixels, expected[..., :3])
    np.testing.assert_array_equal(loaded.alpha, expected[..., 3])


def test_several_frames_use_the_first_with_a_warning(tmp_path, rgb, caplog):
    frames = [Image.fromarray(rgb), Image.fromarray(rgb[::-1].copy())]
    path = _save(tmp_path / "animated.gif", frames[0], save_all=True, append_images=frames[1:])
    loaded = read_image(path)
    with Image.open(path) as image:
        np.testing.assert_array_equal(loaded.pixels, np.asarray(image.convert("RGB")))
    assert "2 frames" in caplog.text and "animated.gif" in caplog.text


# ------------------------------------------------------------------------------------------- bad inputs


def _bad_input(case: str, folder: Path, rgb: np.ndarray, alpha: np.ndarray) -> tuple[Path, dict]:
    """Build one broken input; return its path and the read_image keyword arguments."""
    path = folder / f"{case}.png"
    real = photo("chelsea").read_bytes()  # a real PNG as an encoder wrote it
    if case == "missing":
        return path, {}
    if case == "folder":
        path.mkdir()
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "text":
        path.write_text("this is a text file, not a PNG\n")
    elif case == "truncated-png":
        path.write_bytes(real[: len(real) // 2])
    elif case == "png-without-end":
        path.write_bytes(real[:-12])
    elif case == "corrupt-png":
        damaged = bytearray(real)
        damaged[len(damaged) // 2 : len(damaged) // 2 + 64] = bytes(64)
        path.write_bytes(bytes(damaged))
    elif case in ("truncated-jpeg", "truncated-webp", "truncated-rgba-tiff"):
        form, image = {
            "truncated-jpeg": ("JPEG", Image.fromarray(rgb)),
            "truncated-webp": ("WEBP", Image.fromarray(rgb)),
            "truncated-rgba-tiff": ("TIFF", Image.fromarray(np.dstack([rgb, alpha]))),
        }[case]
        buffer = io.BytesIO()
        image.save(buffer, format=form)
        path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    elif case == "float-tiff":
        path = folder / "float.tif"
        Image.fromarray(rgb[..., 0].astype(np.float32) / 255).save(path)
    elif case == "too-large":
        path.write_bytes(_png_bytes(rgb, colour_type=2, bit_depth=8))
        return path, {"max_pixels": 72 * 56 - 1}
    elif case == "bomb":  # a 20000 x 20000 header with almost no data behind it
        path.write_bytes(_png_bytes(np.zeros((1, 1), np.uint8), 0, 8, size=(20000, 20000)))
        return path, {"max_pixels": 10**12}
    return path, {}


BAD_INPUTS = {
    "missing": "file not found",
    "folder": "is a folder",
    "empty": "empty",
    "text": "not an image",
    "truncated-png": "truncated",
    "png-without-end": "truncated",
    "corrupt-png": "corrupt",
    "truncated-jpeg": "truncated",
    "truncated-webp": "corrupt",
    "truncated-rgba-tiff": "truncated",
    "float-tiff": "float32",
    "too-large": "has 72x56 = 4032 pixels, more than the limit of 4031; raise it with --max-pixels",
    "bomb": "decompression-bomb",
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_raises_one_line_image_error(case, tmp_path, rgb, alpha):
    path, options = _bad_input(case, tmp_path, rgb, alpha)
    with pytest.raises(ImageError) as caught:
        read_image(path, **options)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert BAD_INPUTS[case] in message


def test_default_pixel_limit():
    assert DEFAULT_MAX_PIXELS == 16384 * 16384
    assert {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"} <= READ_EXTENSIONS
    assert WRITE_EXTENSIONS == {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}


# ------------------------------------------------------------------------------------------------ writing


def _png_ihdr(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) straight from the file."""
    data = path.read_bytes()
    return data[24], data[25]


@pytest.mark.parametrize("with_alpha", [False, True], ids=["opaque", "alpha"])
@pytest.mark.parametrize("depth", [8, 16])
@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
def test_png_and_tiff_round_trip_exactly_at_8_and_16_bits(ext, depth, with_alpha, tmp_path, rgb, alpha):
    pixels = rgb if depth == 8 else rgb.astype(np.uint16) * 257 + 3
    matte = None if not with_alpha else (alpha if depth == 8 else alpha.astype(np.uint16) * 257 + 1)
    path = tmp_path / f"out{ext}"
    write_image(path, pixels, matte)
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded.pixels, pixels)
    assert loaded.pixels.dtype == pixels.dtype and not loaded.grayscale
    if with_alpha:
        np.testing.assert_array_equal(loaded.alpha, matte)
    else:
        assert loaded.alpha is None
    if ext == ".png":
        assert _png_ihdr(path) == (depth, 6 if with_alpha else 2)
    else:
        with Image.open(path) as image:
            assert image.tag_v2[258] == (depth,) * (4 if with_alpha else 3)


@pytest.mark.parametrize("with_alpha", [False, True], ids=["opaque", "alpha"])
def test_bmp_round_trip_exactly(with_alpha, tmp_path, rgb, alpha):
    path = tmp_path / "out.bmp"
    write_image(path, rgb, alpha if with_alpha else None)
    loaded = read_image(path)
    np.testing.assert_array_equal(loaded.pixels, rgb)
    np.testing.assert_array_equal(_pillow_decoded(path, "RGB"), rgb)
    if with_alpha:
        np.testing.assert_array_equal(loaded.alpha, alpha)


@pytest.mark.parametrize("ext", [".jpg", ".jpeg", ".webp"])
def test_lossy_formats_round_trip_closely(ext, tmp_path, rgb, alpha):
    path = tmp_path / f"out{ext}"
    write_image(path, rgb, alpha if ext == ".webp" else None)
    loaded = read_image(path)
    assert loaded.pixels.dtype == np.uint8
    assert _psnr(loaded.pixels, rgb, where=alpha > 0) > 35
    np.testing.assert_array_equal(loaded.pixels, _pillow_decoded(path, "RGB"))
    if ext == ".webp":  # WebP keeps alpha losslessly
        np.testing.assert_array_equal(loaded.alpha, alpha)


def test_16_bit_becomes_8_bit_by_rounding_in_8_bit_formats(tmp_path):
    every_value = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    pixels = np.dstack([every_value, every_value[::-1], every_value.T.copy()])
    path = tmp_path / "out.bmp"
    write_image(path, pixels)
    expected = np.round(pixels / 257).astype(np.uint8)  # never an exact half: 257 is odd
    np.testing.assert_array_equal(read_image(path).pixels, expected)


def test_jpeg_drops_alpha_with_a_warning(tmp_path, rgb, alpha, caplog):
    path = tmp_path / "out.jpg"
    write_image(path, rgb, alpha)
    with Image.open(path) as image:
        assert image.mode == "RGB"
    assert "alpha" in caplog.text and "out.jpg" in caplog.text
    assert caplog.records[-1].levelname == "WARNING"


def test_grayscale_writes_one_channel_from_identical_channels(tmp_path, gray):
    for ext in (".png", ".tif", ".jpg", ".bmp"):
        path = tmp_path / f"gray{ext}"
        write_image(path, np.dstack([gray] * 3), grayscale=True)
        with Image.open(path) as image:
            assert image.mode == "L", ext
        loaded = read_image(path)
        assert loaded.grayscale, ext
        if ext != ".jpg":
            np.testing.assert_array_equal(loaded.pixels[..., 1], gray)


@pytest.mark.parametrize("depth", [8, 16])
def test_grayscale_of_colour_pixels_is_bt601_luma_rounded(depth, tmp_path, rgb):
    pixels = rgb if depth == 8 else rgb.astype(np.uint16) * 257 + 5
    path = tmp_path / "luma.png"
    write_image(path, pixels, grayscale=True)
    red, green, blue = (pixels[..., i].astype(np.float64) for i in range(3))
    # (299 R + 587 G + 114 B) / 1000 is exact in float64 at every tie, so this rounds halves up exactly.
    expected = np.floor((299 * red + 587 * green + 114 * blue) / 1000 + 0.5)
    loaded = read_image(path)
    assert _png_ihdr(path) == (depth, 0) and loaded.grayscale
    np.testing.assert_array_equal(loaded.pixels[..., 0], expected.astype(pixels.dtype))


@pytest.mark.parametrize(("name", "colour_type"), [("la.png", 4), ("la.tif", None), ("la16.png", 6), ("la.webp", None)])
def test_grayscale_with_alpha(name, colour_type, tmp_path, gray, alpha):
    deep = "16" in name
    gray_values = gray.astype(np.uint16) * 257 if deep else gray
    matte = alpha.astype(np.uint16) * 257 if deep else alpha
    path = tmp_path / name
    write_image(path, np.dstack([gray_values] * 3), matte, grayscale=True)
    loaded = read_image(path)
    if name.endswith(".png"):
        assert _png_ihdr(path) == (16 if deep else 8, colour_type)  # 16-bit: RGBA, the channels the gray
    if name == "la.tif":
        with Image.open(path) as image:
            assert image.mode == "LA"
    if name.endswith(".webp"):  # lossy, and WebP has no gray: an RGBA whose colours are the gray
        assert _psnr(loaded.pixels, np.dstack([gray] * 3), where=alpha > 0) > 35
        np.testing.assert_array_equal(loaded.alpha, matte)
        return
    np.testing.assert_array_equal(loaded.pixels, np.dstack([gray_values] * 3))
    np.testing.assert_array_equal(loaded.alpha, matte)


def test_overwrite_replaces_and_leaves_no_temporary_file(tmp_path, rgb, gray):
    path = tmp_path / "out.png"
    write_image(path, rgb)
    write_image(path, np.dstack([gray] * 3), overwrite=True)
    np.testing.assert_array_equal(read_image(path).pixels[..., 0], gray)
    assert os.listdir(tmp_path) == ["out.png"]


def test_written_file_permissions_follow_the_umask(tmp_path, rgb):
    previous = os.umask(0o027)
    try:
        write_image(tmp_path / "out.png", rgb)
    finally:
        os.umask(previous)
    assert (tmp_path / "out.png").stat().st_mode & 0o777 == 0o640


def _bad_write(case: str, folder: Path, rgb: np.ndarray, alpha: np.ndarray) -> tuple[Path, tuple, dict]:
    """One failing write_image call: (path, positional arguments after path, keyword arguments)."""
    if case == "gif":
        return folder / "out.gif", (rgb,), {}
    if case == "no-extension":
        return folder / "out", (rgb,), {}
    if case == "missing-folder":
        return folder / "nowhere" / "out.png", (rgb,), {}
    if case == "exists":
        return folder / "existing.png", (rgb,), {}
    if case == "folder-as-output":
        return folder / "sub.png", (rgb,), {"overwrite": True}
    if case == "float-pixels":
        return folder / "out.png", (rgb.astype(np.float32),), {}
    if case == "two-channels":
        return folder / "out.png", (rgb[..., :2],), {}
    if case == "alpha-shape":
        return folder / "out.png", (rgb, alpha[:-1]), {}
    if case == "alpha-dtype":
        return folder / "out.png", (rgb, alpha.astype(np.uint16)), {}
    raise AssertionError(case)


BAD_WRITES = {
    "gif": "extension '.gif'",
    "no-extension": "extension ''",
    "missing-folder": "does not exist",
    "exists": "exists; use --overwrite",
    "folder-as-output": "it is a folder",
    "float-pixels": "float32",
    "two-channels": "H x W x 3",
    "alpha-shape": "alpha must be",
    "alpha-dtype": "must match",
}


@pytest.mark.parametrize("case", BAD_WRITES)
def test_write_failure_raises_and_leaves_no_file(case, tmp_path, rgb, alpha):
    (tmp_path / "existing.png").write_bytes(b"keep me")
    (tmp_path / "sub.png").mkdir()
    before = sorted(os.listdir(tmp_path))
    path, arguments, options = _bad_write(case, tmp_path, rgb, alpha)
    with pytest.raises(ImageError) as caught:
        write_image(path, *arguments, **options)
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert BAD_WRITES[case] in message
    assert sorted(os.listdir(tmp_path)) == before and os.listdir(tmp_path / "sub.png") == []
    assert (tmp_path / "existing.png").read_bytes() == b"keep me"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root can write into any folder")
def test_unwritable_folder(tmp_path, rgb):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(ImageError, match="not writable"):
            write_image(folder / "out.png", rgb)
        assert os.listdir(folder) == []
    finally:
        folder.chmod(0o700)


# ------------------------------------------------------------------------------------------------ tensors


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tensor_round_trip_is_exact_for_every_value(dtype):
    top = np.iinfo(dtype).max
    values = np.arange(top + 1, dtype=np.int64)
    pixels = np.stack([values, values[::-1], (values * 7) % (top + 1)], axis=-1).astype(dtype).reshape(-1, 256, 3)
    tensor = to_tensor(pixels)
    assert tensor.shape == (1, 3, pixels.shape[0], 256) and tensor.dtype == torch.float32
    assert float(tensor.min()) == 0.0 and float(tensor.max()) == 1.0
    np.testing.assert_array_equal(tensor[0, 0].numpy(), pixels[..., 0] / np.float32(top))
    back = from_tensor(tensor, dtype)
    assert back.dtype == dtype and back.flags.c_contiguous
    np.testing.assert_array_equal(back, pixels)


def test_from_tensor_clamps_rounds_and_accepts_chw():
    t = torch.tensor([[[-0.5, 0.0, 1.49 / 255, 1.51 / 255, 1.0, 3.0, float("nan")]]])
    np.testing.assert_array_equal(from_tensor(t, np.uint8)[..., 0], [[0, 0, 1, 2, 255, 255, 0]])
    assert from_tensor(t[None], np.uint16).shape == (1, 7, 1)


def test_from_tensor_rejects_a_batch():
    with pytest.raises(ValueError, match="1 x C x H x W"):
        from_tensor(torch.zeros(2, 3, 4, 4), np.uint8)

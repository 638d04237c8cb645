"""The real `detailsr` command in a subprocess, on real images in every supported form."""

import cv2
import numpy as np
import pytest
from conftest import run_cli as detailsr
from conftest import shared_file
from PIL import Image


@pytest.fixture(scope="module")
def model():
    return shared_file("weights/CAMixerSR_S.pth")


def crop(relative, h=24, w=20):
    img = Image.open(shared_file(relative))
    return img.crop((0, 0, w, h))


def make_inputs(folder):
    """One small file per supported kind, cut from real dataset images."""
    rgb = crop("datasets/Set5/HR/butterfly.png")
    arr = np.asarray(rgb)
    gray = crop("datasets/Set14/HR/bridge.png")
    rgb.save(folder / "rgb8.png")
    cv2.imwrite(str(folder / "rgb16.png"), (arr[:, :, ::-1].astype(np.uint16) * 257))
    gray.save(folder / "gray8.png")
    cv2.imwrite(str(folder / "gray16.png"), np.asarray(gray).astype(np.uint16) * 257)
    rgb.quantize(32).save(folder / "palette.png")
    pal = rgb.quantize(32)
    pal.info["transparency"] = 0
    pal.save(folder / "palette_trns.png", transparency=0)
    rgb.convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    alpha = Image.fromarray(np.linspace(0, 255, 20 * 24).astype(np.uint8).reshape(24, 20))
    rgba = rgb.copy()
    rgba.putalpha(alpha)
    rgba.save(folder / "rgba.png")
    rgb.save(folder / "photo.jpg", quality=95)
    rgb.save(folder / "photo.webp", lossless=True)
    rgb.save(folder / "photo.tif")
    cv2.imwrite(str(folder / "photo16.tif"), (arr[:, :, ::-1].astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rgb.save(folder / "rotated.jpg", exif=exif, quality=95)
    rgb.crop((0, 0, 1, 1)).save(folder / "one_pixel.png")


@pytest.mark.slow
def test_folder_of_every_format(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    make_inputs(src)
    out = tmp_path / "out"
    result = detailsr("upscale", src, "-o", out, "-m", model, "-q")
    assert result.returncode == 0, result.stderr
    written = {p.name for p in out.iterdir()}
    assert written == {p.stem + "_x4" + p.suffix for p in src.iterdir()}

    def read(name):
        return cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)

    assert read("rgb8_x4.png").shape == (96, 80, 3) and read("rgb8_x4.png").dtype == np.uint8
    assert read("rgb16_x4.png").dtype == np.uint16 and read("rgb16_x4.png").shape == (96, 80, 3)
    assert read("gray8_x4.png").shape == (96, 80)
    assert read("gray16_x4.png").dtype == np.uint16 and read("gray16_x4.png").ndim == 2
    assert read("palette_x4.png").shape == (96, 80, 3)
    assert read("palette_trns_x4.png").shape == (96, 80, 4)
    assert read("cmyk_x4.jpg").shape == (96, 80, 3)
    rgba = read("rgba_x4.png")
    assert rgba.shape == (96, 80, 4)
    assert rgba[0, 0, 3] < 30 and rgba[-1, -1, 3] > 225  # the alpha ramp survives
    assert read("photo_x4.webp").shape == (96, 80, 3)
    assert read("photo_x4.tif").shape == (96, 80, 3)
    assert read("photo16_x4.tif").dtype == np.uint16
    assert read("rotated_x4.jpg").shape == (80, 96, 3)  # EXIF orientation applied
    assert read("one_pixel_x4.png").shape == (4, 4, 3)
    # 8-bit and 16-bit versions of the same picture agree
    assert np.abs(read("rgb16_x4.png") / 257.0 - read("rgb8_x4.png")).max() <= 1.0
    assert not list(out.glob(".*"))  # no temporary files left


def test_one_file_to_a_named_output_and_overwrite(tmp_path, model):
    src = tmp_path / "a.png"
    crop("datasets/Set5/HR/bird.png").save(src)
    dst = tmp_path / "result.png"
    assert detailsr("upscale", src, "-o", dst, "-m", model, "-s", "4", "--ratio", "0.25", "-q").returncode == 0
    before = dst.read_bytes()
    again = detailsr("upscale", src, "-o", dst, "-m", model, "-q")
    assert again.returncode == 1
    assert "exists; use --overwrite" in again.stderr
    assert dst.read_bytes() == before
    forced = detailsr("upscale", src, "-o", dst, "-m", model, "--overwrite", "--ratio", "1", "-q")
    assert forced.returncode == 0
    assert cv2.imread(str(dst)).shape == (96, 80, 3)


def test_glob_input_next_to_the_inputs_with_suffix(tmp_path, model):
    for name in ("x.png", "y.png", "z.jpg"):
        crop("datasets/Set5/HR/head.png", 16, 16).save(tmp_path / name)
    result = detailsr("upscale", str(tmp_path / "*.png"), "-m", model, "--suffix=-big", "--tile", "8", "-q")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-big.png", "x.png", "y-big.png", "y.png", "z.jpg"]


def _bad_inputs(tmp_path):
    good = tmp_path / "good.png"
    crop("datasets/Set5/HR/baby.png", 16, 16).save(good)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.png"
    full = (shared_file("datasets/Set5/HR/baby.png")).read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    text = tmp_path / "text.png"
    text.write_text("hello\n")
    ckpt = tmp_path / "bad.pth"
    ckpt.write_text("not weights")
    blocker = tmp_path / "afile"
    blocker.write_text("")
    return {
        "empty": (["upscale", empty], "empty"),
        "truncated": (["upscale", truncated], "truncated"),
        "not an image": (["upscale", text], "text.png"),
        "bomb": (["upscale", good, "--max-pixels", "100"], "limit"),
        "missing": (["upscale", tmp_path / "nope.png"], "does not exist"),
        "bad checkpoint": (["upscale", good, "-m", ckpt], "bad.pth"),
        "unknown model": (["upscale", good, "-m", "no-such-model"], "zoo model"),
        "wrong scale": (["upscale", good, "-s", "2"], "upscales by 4, not 2"),
        "unwritable": (["upscale", good, "-o", blocker / "out.png"], "afile"),
        "bad extension": (["upscale", good, "-o", tmp_path / "out.xyz"], "xyz"),
    }


@pytest.mark.parametrize("case", [
    "empty", "truncated", "not an image", "bomb", "missing", "bad checkpoint", "unknown model", "wrong scale",
    "unwritable", "bad extension",
])
def test_bad_input_one_line_nonzero_and_nothing_written(tmp_path, model, case):
    args, fragment = _bad_inputs(tmp_path)[case]
    before = {p.name for p in tmp_path.rglob("*")}
    if "-m" not in args:
        args = [*args, "-m", model]
    result = detailsr(*args, "-q")
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("detailsr: error: ") and fragment in lines[0]
    assert "Traceback" not in result.stderr
    assert {p.name for p in tmp_path.rglob("*")} == before


@pytest.mark.parametrize("args", [["-s", "0"], ["--ratio", "2"], ["--tile", "-3"], ["--ratio", "x"]])
def test_usage_errors_exit_2(tmp_path, model, args):
    src = tmp_path / "a.png"
    crop("datasets/Set5/HR/baby.png", 16, 16).save(src)
    result = detailsr("upscale", src, "-m", model, *args)
    assert result.returncode == 2
    assert not (tmp_path / "a_x4.png").exists()


def test_debug_shows_the_traceback(tmp_path, model):
    text = tmp_path / "text.png"
    text.write_text("hello\n")
    result = detailsr("--debug", "upscale", text, "-m", model)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ImageError" in result.stderr


def test_one_bad_file_in_a_batch(tmp_path, model):
    src = tmp_path / "in"
    src.mkdir()
    crop("datasets/Set5/HR/woman.png", 16, 16).save(src / "a.png")
    (src / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    out = tmp_path / "out"
    result = detailsr("upscale", src, "-o", out, "-m", model, "-q")
    assert result.returncode == 1
    assert "b.png" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["a_x4.png"]


def test_models_lists_the_zoo():
    result = detailsr("models")
    assert result.returncode == 0
    for fragment in ("camixersr-s-x4", "351,238", "Apache-2.0", "camixersr-odi-x4", "29.12/26.26/27.73/33.66"):
        assert fragment in result.stdout

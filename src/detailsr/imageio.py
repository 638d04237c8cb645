"""Reading and writing images: every supported format, bit depth, alpha, EXIF orientation, size limits.

This is the one edge where files become arrays (design section 3): numpy images are H x W x 3 RGB,
uint8 or uint16, with alpha kept apart; tensors are 1 x C x H x W float32 in [0, 1].

OpenCV decodes and encodes (8/16 bit and alpha survive `IMREAD_UNCHANGED`). Pillow only reads the
header first (lazily, to enforce the pixel limit before any decoding and to learn the colour mode and
EXIF orientation) and fills the gaps OpenCV has, each verified against OpenCV 5.0:

- `IMREAD_UNCHANGED` ignores EXIF orientation in JPEG, PNG and WebP, so it is applied here with numpy.
  For TIFF the orientation tag is applied by the decoders themselves (both OpenCV and Pillow), so
  it is not applied a second time.
- 8-bit TIFF with alpha: OpenCV's libtiff RGBA path premultiplies unassociated alpha into the
  colours and drops the alpha of gray+alpha; Pillow reads and writes these files instead.
- gray PNG with a tRNS transparent value: OpenCV drops it; the alpha is rebuilt from the value.
- CMYK TIFF comes back as BGRA with an opaque fourth channel, which is not alpha.
- 16-bit gray+alpha PNG is reported by Pillow as RGBA, so "gray" is read from the PNG header.
- OpenCV cannot encode 2-channel images: 8-bit gray+alpha PNG/TIFF are written by Pillow.
Palette images (with and without transparency) and CMYK JPEG (Adobe, inverted) decode correctly
in OpenCV; truncated files of every format make `cv2.imdecode` return None (never a partial image),
and Pillow is then asked what is wrong so that the message can say "truncated" or "corrupt".
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from detailsr.errors import ConfigError, ImageError

from .choices import DEFAULT_MAX_PIXELS, WRITE_EXTENSIONS

logger = logging.getLogger(__name__)


_MAX_VALUE = {np.dtype(np.uint8): 255, np.dtype(np.uint16): 65535}
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_PNG_END = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the IEND chunk: length 0, type, CRC
_EIGHT_BIT_ONLY = frozenset({".jpg", ".jpeg", ".webp", ".bmp"})
_TIFF = frozenset({".tif", ".tiff"})
# 4:4:4 chroma: subsampling would throw away the colour detail a super-resolved image was made for.
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95]
_JPEG_PARAMS += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
_CV2_WRITE_PARAMS: dict[str, list[int]] = {
    ".png": [cv2.IMWRITE_PNG_COMPRESSION, 3],
    ".jpg": _JPEG_PARAMS,
    ".jpeg": _JPEG_PARAMS,
    ".webp": [cv2.IMWRITE_WEBP_QUALITY, 95],
    ".tif": [],
    ".tiff": [],
    ".bmp": [],
}
# EXIF orientation -> how to turn the stored array into the displayed one (same for pixels and alpha).
_ORIENTATIONS: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


@dataclass
class LoadedImage:
    """A decoded image: RGB pixels, the alpha channel apart, and what is needed to write it back alike."""

    pixels: np.ndarray  # H x W x 3, RGB, uint8 or uint16 (3 channels also for gray sources)
    alpha: np.ndarray | None  # H x W, same dtype as pixels
    grayscale: bool  # the source had one colour channel: write the result back as gray
    path: Path | None


def _error(message: str) -> ImageError:
    # Library messages are one line: the CLI prints them after "detailsr: error: ".
    return ImageError(" ".join(message.split()))


# ---------------------------------------------------------------------------------------------- reading


def read_image(path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode an image file into RGB pixels (uint8/uint16) and a separate alpha channel.

    The size is checked against `max_pixels` from the header, before anything is decoded. Pillow's
    own decompression-bomb guard (2 x PIL.Image.MAX_IMAGE_PIXELS) applies as well. Every failure
    raises `ImageError` with a one-line message that names the file.
    """
    path = Path(path)
    return decode_image(_read_bytes(path), path, max_pixels)


def decode_image(data: bytes, path: str | os.PathLike[str], max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """`read_image` for the bytes of an image file (e.g. from standard input); `path` names it in errors."""
    if max_pixels < 1:
        raise ConfigError(f"max_pixels must be a positive number of pixels, not {max_pixels}")
    path = Path(path)
    if not data:
        raise _error(f"{path}: file is empty (0 bytes)")
    with _pillow_guard(path), _open_header(path, data) as header:
        _check_pixel_limit(path, header.size, max_pixels)
        _warn_if_several_frames(path, header)
        if _pillow_decodes(header):
            pixels, alpha = _decode_with_pillow(path, header)
        else:
            pixels, alpha = _decode_with_opencv(path, data, header)
        grayscale = _is_gray_source(header, data)
    return LoadedImage(pixels=pixels, alpha=alpha, grayscale=grayscale, path=path)


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise _error(f"{path}: file not found") from None
    except IsADirectoryError:
        raise _error(f"{path}: is a folder, not an image file") from None
    except OSError as exc:
        raise _error(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise _error(f"{path}: file is empty (0 bytes)")
    return data


@contextlib.contextmanager
def _pillow_guard(path: Path) -> Iterator[None]:
    # Our max_pixels check replaces Pillow's warning; its hard limit still stops bombs, as an ImageError.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except Image.DecompressionBombError as exc:
            raise _error(f"{path}: refused by Pillow's decompression-bomb guard ({exc})") from exc


def _open_header(path: Path, data: bytes) -> Image.Image:
    # Image.open only parses the header; pixel data is decoded later (by OpenCV, mostly).
    try:
        return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise _error(f"{path}: not an image file (or a format that cannot be read)") from None
    except (OSError, SyntaxError, ValueError, IndexError) as exc:
        raise _error(f"{path}: corrupt image header ({exc})") from exc


def _check_pixel_limit(path: Path, size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise _error(
            f"{path}: has {width}x{height} = {width * height} pixels, more than the limit of {max_pixels}; "
            "raise it with --max-pixels"
        )


def _warn_if_several_frames(path: Path, header: Image.Image) -> None:
    # MPO is a camera JPEG with extra preview or depth images; its first image is the photograph.
    frames = getattr(header, "n_frames", 1)
    if frames > 1 and header.format != "MPO":
        logger.warning("%s has %d frames; only the first is used", path, frames)


def _has_alpha(header: Image.Image) -> bool:
    return header.mode in _ALPHA_MODES or "transparency" in header.info


def _pillow_decodes(header: Image.Image) -> bool:
    # OpenCV's libtiff RGBA path premultiplies unassociated alpha and loses gray alpha (8-bit only).
    if header.format != "TIFF" or not _has_alpha(header):
        return False
    bits = header.tag_v2.get(258, (8,))
    return max(bits if isinstance(bits, tuple) else (bits,)) <= 8


def _is_gray_source(header: Image.Image, data: bytes) -> bool:
    if header.format == "PNG":
        # IHDR colour type (byte 25): 0 gray, 4 gray+alpha; Pillow reports 16-bit gray+alpha as RGBA.
        return data[25] in (0, 4)
    return header.mode in _GRAY_MODES


def _decode_with_pillow(path: Path, header: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    _load_or_explain(path, header)
    if header.mode in ("LA", "La"):
        gray_alpha = np.asarray(header.convert("LA"))
        return _gray_to_rgb(gray_alpha[..., 0]), gray_alpha[..., 1].copy()
    rgba = np.asarray(header.convert("RGBA"))
    return np.ascontiguousarray(rgba[..., :3]), rgba[..., 3].copy()


def _load_or_explain(path: Path, header: Image.Image) -> None:
    """Let Pillow decode, turning its failure into a message that says what is wrong with the file."""
    try:
        header.load()
    except (OSError, SyntaxError, ValueError, IndexError, EOFError) as exc:
        problem = "truncated" if "truncat" in str(exc).lower() else "corrupt"
        raise _error(f"{path}: {problem} image data ({exc})") from exc


def _decode_with_opencv(path: Path, data: bytes, header: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    array = _imdecode(path, data, header)
    _check_decoded(path, array, header)
    pixels, alpha = _split_bgr_alpha(array)
    if alpha is not None and not _has_alpha(header):
        alpha = None  # CMYK TIFF and some GIFs decode with an opaque 4th channel that is not alpha
    elif alpha is None and _has_alpha(header):
        alpha = _alpha_from_trns(path, array, header, data)
    orient = _ORIENTATIONS.get(_exif_orientation(path, header))
    if orient is not None:
        pixels = np.ascontiguousarray(orient(pixels))
        alpha = None if alpha is None else np.ascontiguousarray(orient(alpha))
    return pixels, alpha


def _imdecode(path: Path, data: bytes, header: Image.Image) -> np.ndarray:
    try:
        with _native_stderr_silenced():
            array = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise _error(f"{path}: cannot be decoded ({str(exc).strip().splitlines()[-1]})") from exc
    if array is None:
        # OpenCV says nothing about why; Pillow's decoder can tell truncated from corrupt.
        _load_or_explain(path, header)
        if header.format == "PNG" and not data.endswith(_PNG_END):
            raise _error(f"{path}: truncated image data (the PNG end chunk is missing)")
        raise _error(f"{path}: cannot be decoded (corrupt or unsupported {header.format} data)")
    return array


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """libpng and OpenCV's C++ code write their own complaints to file descriptor 2; a bad file
    must end in one error line of ours, so their output is discarded while decoding."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to protect
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _check_decoded(path: Path, array: np.ndarray, header: Image.Image) -> None:
    if array.dtype not in _MAX_VALUE:
        raise _error(f"{path}: has {array.dtype} samples; only 8- and 16-bit integer images are supported")
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise _error(f"{path}: has {array.shape[2]} channels; expected gray, RGB or RGBA")
    width, height = header.size
    if array.shape[:2] != (height, width):
        raise _error(f"{path}: decoded {array.shape[1]}x{array.shape[0]} pixels but the header says {width}x{height}")


def _split_bgr_alpha(array: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """OpenCV's BGR / BGRA / gray array -> RGB pixels and alpha (converted to RGB once, here)."""
    if array.ndim == 2 or array.shape[2] == 1:
        return _gray_to_rgb(array.reshape(array.shape[:2])), None
    if array.shape[2] == 3:
        return cv2.cvtColor(array, cv2.COLOR_BGR2RGB), None
    return cv2.cvtColor(array, cv2.COLOR_BGRA2RGB), array[..., 3].copy()


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))


def _alpha_from_trns(path: Path, array: np.ndarray, header: Image.Image, data: bytes) -> np.ndarray | None:
    """Alpha of a gray PNG with a transparent gray value (tRNS), which OpenCV ignores."""
    value = header.info.get("transparency")
    if header.format != "PNG" or array.ndim != 2 or not isinstance(value, int):
        logger.warning("%s: its transparency could not be decoded and is ignored", path)
        return None
    bit_depth = data[24]
    if bit_depth < 8:
        value *= 255 // (2**bit_depth - 1)  # the decoder scales 1/2/4-bit samples up to 8 bits
    return np.where(array == value, 0, _MAX_VALUE[array.dtype]).astype(array.dtype)


def _exif_orientation(path: Path, header: Image.Image) -> int:
    # TIFF decoders (OpenCV's and Pillow's) apply the orientation tag themselves.
    raw = header.info.get("exif")
    if header.format == "TIFF" or not raw:
        return 1
    exif = Image.Exif()
    try:
        exif.load(raw)
    except Exception as exc:  # a broken EXIF block must not make the pixels unreadable
        logger.warning("%s: unreadable EXIF data ignored (%s)", path, exc)
        return 1
    orientation = exif.get(0x0112, 1)
    return orientation if orientation in _ORIENTATIONS else 1


# ---------------------------------------------------------------------------------------------- writing


def write_image(
    path: str | os.PathLike[str],
    pixels: np.ndarray,
    alpha: np.ndarray | None = None,
    grayscale: bool = False,
    overwrite: bool = False,
) -> None:
    """Write RGB pixels (H x W x 3, uint8/uint16) and optional alpha (H x W) in the extension's format.

    16-bit stays 16-bit in PNG and TIFF; JPEG, WebP and BMP get 8 bits (x / 257, rounded). JPEG drops
    alpha with a warning. `grayscale` writes one colour channel (plus alpha where the format allows).
    The file is encoded in memory and written atomically: on any failure no output file appears.
    """
    path = Path(path)
    _check_extension(path, path.suffix.lower())
    _check_destination(path, overwrite)
    write_bytes_atomic(path, encode_image(pixels, path.suffix, alpha, grayscale, path))


def encode_image(
    pixels: np.ndarray,
    ext: str,
    alpha: np.ndarray | None = None,
    grayscale: bool = False,
    path: str | os.PathLike[str] = "<memory>",
) -> bytes:
    """The bytes of an image file of type `ext` (".png", "jpg", ...), as `write_image` writes it."""
    path, ext = Path(path), "." + ext.lower().lstrip(".")
    _check_extension(path, ext)
    _check_arrays(path, pixels, alpha)
    return _encode(path, ext, pixels, alpha, grayscale)


def _check_extension(path: Path, ext: str) -> None:
    if ext not in WRITE_EXTENSIONS:
        supported = " ".join(sorted(WRITE_EXTENSIONS))
        raise _error(f"{path}: cannot write images with extension '{ext}' (supported: {supported})")


def _check_destination(path: Path, overwrite: bool) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise _error(f"{path}: output folder {parent} does not exist")
    if path.exists() and not overwrite:
        raise _error(f"{path} exists; use --overwrite")
    if not os.access(parent, os.W_OK):
        raise _error(f"{path}: output folder {parent} is not writable")


def _check_arrays(path: Path, pixels: np.ndarray, alpha: np.ndarray | None) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.dtype not in _MAX_VALUE:
        kind = getattr(pixels, "dtype", type(pixels).__name__)
        raise _error(f"{path}: pixels must be a uint8 or uint16 numpy array, not {kind}")
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.size == 0:
        raise _error(f"{path}: pixels must be H x W x 3 (RGB), not {pixels.shape}")
    if alpha is not None and (not isinstance(alpha, np.ndarray) or alpha.shape != pixels.shape[:2]):
        raise _error(f"{path}: alpha must be an H x W array of shape {pixels.shape[:2]}")
    if alpha is not None and alpha.dtype != pixels.dtype:
        raise _error(f"{path}: alpha is {alpha.dtype} but pixels are {pixels.dtype}; they must match")


def _encode(path: Path, ext: str, pixels: np.ndarray, alpha: np.ndarray | None, grayscale: bool) -> bytes:
    if alpha is not None and ext in (".jpg", ".jpeg"):
        logger.warning("%s: JPEG has no alpha channel; the alpha channel is dropped", path)
        alpha = None
    colour = _gray_channel(pixels)[..., None] if grayscale else pixels  # at full depth, rounded once
    image = colour if alpha is None else np.dstack([colour, alpha])
    if ext in _EIGHT_BIT_ONLY and image.dtype == np.uint16:
        image = _to_uint8(image)
    gray_alpha = image.shape[2] == 2
    if gray_alpha and (image.dtype != np.uint8 or ext not in (".png", *_TIFF)):
        # No gray+alpha form can be written here (WebP, BMP, 16 bits): RGBA with the gray in R, G and B.
        logger.info("%s: gray with alpha is written as RGBA", path)
        image, gray_alpha = image[..., [0, 0, 0, 1]], False
    if image.dtype == np.uint8 and (gray_alpha or (image.shape[2] == 4 and ext in _TIFF)):
        # OpenCV cannot encode 2 channels, and its TIFF writer leaves the alpha unmarked (ExtraSamples).
        return _pillow_encode(path, ext, image)
    return _cv2_encode(path, ext, _rgb_to_bgr(image))


def _rgb_to_bgr(image: np.ndarray) -> np.ndarray:
    """RGB(A) or one-channel H x W x C -> what OpenCV encodes: BGR(A), or H x W for gray."""
    if image.shape[2] == 1:
        return image[..., 0]
    return image[..., [2, 1, 0] if image.shape[2] == 3 else [2, 1, 0, 3]]


def _to_uint8(array: np.ndarray) -> np.ndarray:
    # round(x / 257) with halves up, in integers: floor((2x + 257) / 514).
    return ((array.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)


def _gray_channel(pixels: np.ndarray) -> np.ndarray:
    red, green, blue = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    if np.array_equal(red, green) and np.array_equal(red, blue):
        return red.copy()
    # ITU-R BT.601 luma, rounded half up; integers so that exact halves round the same everywhere.
    weighted = 299 * red.astype(np.int64) + 587 * green.astype(np.int64) + 114 * blue.astype(np.int64)
    return ((weighted + 500) // 1000).astype(pixels.dtype)


def _cv2_encode(path: Path, ext: str, array: np.ndarray) -> bytes:
    try:
        ok, encoded = cv2.imencode(ext, np.ascontiguousarray(array), _CV2_WRITE_PARAMS[ext])
    except cv2.error as exc:
        raise _error(f"{path}: cannot be encoded ({str(exc).strip().splitlines()[-1]})") from exc
    if not ok:
        raise _error(f"{path}: OpenCV could not encode the image as {ext}")
    return encoded.tobytes()


def _pillow_encode(path: Path, ext: str, array: np.ndarray) -> bytes:
    if ext == ".png":
        options = {"format": "PNG", "compress_level": 3}
    else:
        options = {"format": "TIFF", "compression": "tiff_lzw"}  # LZW, as OpenCV's TIFF writer uses
    buffer = io.BytesIO()
    try:
        Image.fromarray(array).save(buffer, **options)
    except (OSError, ValueError) as exc:
        raise _error(f"{path}: cannot be encoded ({exc})") from exc
    return buffer.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write to a hidden temporary file next to `path`, then rename it over `path`."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    # os.open with 0o666 lets the umask decide the permissions, as for any new file (mkstemp gives 0600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        with os.fdopen(os.open(temporary, flags, 0o666), "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except OSError as exc:
        _remove_quietly(temporary)
        raise _error(f"cannot write {path}: {_describe_os_error(exc, path)}") from exc
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        _remove_quietly(temporary)
        raise


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _describe_os_error(exc: OSError, path: Path) -> str:
    if isinstance(exc, IsADirectoryError):
        return "it is a folder"
    if isinstance(exc, PermissionError):
        return f"output folder {path.parent} is not writable"
    return exc.strerror or str(exc)


# ---------------------------------------------------------------------------------------------- tensors


def to_tensor(pixels: np.ndarray) -> torch.Tensor:
    """H x W x C uint8/uint16 -> 1 x C x H x W float32 in [0, 1] (divided by 255 or 65535)."""
    if pixels.dtype not in _MAX_VALUE or pixels.ndim != 3:
        raise ValueError(f"expected an H x W x C uint8 or uint16 array, got {pixels.dtype} {pixels.shape}")
    scaled = pixels.astype(np.float32) / np.float32(_MAX_VALUE[pixels.dtype])
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1))).unsqueeze(0)


def from_tensor(t: torch.Tensor, dtype: np.dtype | type = np.uint8) -> np.ndarray:
    """1 x C x H x W or C x H x W float -> H x W x C of dtype: clamp to [0, 1], scale, round halves up."""
    dtype = np.dtype(dtype)
    if dtype not in _MAX_VALUE:
        raise ValueError(f"dtype must be uint8 or uint16, not {dtype}")
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 3:
        raise ValueError(f"expected a 1 x C x H x W or C x H x W tensor, got shape {tuple(t.shape)}")
    # NaN would cast to an arbitrary integer; a network that produced it gets black, not noise.
    values = torch.nan_to_num(t.detach().to("cpu", torch.float32), nan=0.0).clamp(0.0, 1.0)
    scaled = torch.floor(values * _MAX_VALUE[dtype] + 0.5)
    return np.ascontiguousarray(scaled.permute(1, 2, 0).numpy().astype(dtype))

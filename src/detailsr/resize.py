"""MATLAB-compatible bicubic resizing (``imresize(img, f, 'bicubic')``) and the benchmark degradation.

The benchmark LR files (Set5, Set14, B100, Urban100 ``LR_bicubic``) were made with MATLAB's
``imresize`` on the uint8 HR image after a top-left mod-crop. Reproducing them bit-exactly needs
every detail of MATLAB's algorithm (see ``../shared/datasets/README.md``, "MATLAB-compatible
bicubic"): the Keys kernel (a = -0.5) stretched by ``1/f`` when shrinking (antialiasing),
half-sample symmetric borders, one 1-D pass per dimension (the stronger reduction first, height on
a tie), double-precision sums taken in tap order, and -- for integer images -- rounding half away
from zero and saturating after *each* pass.

The passes are vectorised: each output line is a weighted sum of ``P`` gathered input lines, so the
only Python loop runs over the (at most ``4*s + 2``) taps, never over pixels.

Speed, a benchmark note rather than a test (a 2K image, 2040x1356x3 uint8, downscaled by 4)::

    PYTHONPATH=src python -m timeit -s "import numpy as np; from detailsr.resize import \
bicubic_downscale; x = np.random.default_rng(0).integers(0, 256, (1356, 2040, 3), dtype=np.uint8)" \
"bicubic_downscale(x, 4)"

gave "1 loop, best of 5: 98.6 msec per loop" on a 2-core development VM (x2: about 190 ms).
"""

from __future__ import annotations

import math

import numpy as np

from detailsr.errors import ConfigError

# Keys' cubic convolution kernel has support |x| <= 2, i.e. a width of 4 samples.
_KERNEL_WIDTH = 4.0


def mod_crop(img: np.ndarray, scale: int) -> np.ndarray:
    """Top-left crop of ``img`` (H x W or H x W x C) to a height and width divisible by ``scale``."""
    _check_scale(scale)
    if img.ndim not in (2, 3):
        raise ConfigError(f"expected an H x W or H x W x C image, got an array of shape {img.shape}")
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def bicubic_downscale(hr: np.ndarray, scale: int, *, round_once: bool = False) -> np.ndarray:
    """The benchmark degradation: mod-crop ``hr`` to a multiple of ``scale``, then ``imresize`` by 1/scale.

    ``round_once=True`` is the variant that rounds to the integer type once after both passes
    instead of after each pass; it is how the Set5 X8 LR files shipped with SwinIR were made.
    """
    cropped = mod_crop(hr, scale)
    h, w = cropped.shape[:2]
    if h == 0 or w == 0:
        raise ConfigError(f"image of size {hr.shape[1]}x{hr.shape[0]} is smaller than the scale {scale}")
    # Passing the size (not 1/scale) keeps the output size exact; MATLAB derives the same
    # factor out/in == 1/scale from it, so the weights are identical.
    return imresize(cropped, size=(h // scale, w // scale), round_once=round_once)


def imresize(
    img: np.ndarray,
    scale: float | None = None,
    size: tuple[int, int] | None = None,
    *,
    round_once: bool = False,
) -> np.ndarray:
    """MATLAB ``imresize(img, scale or size, 'bicubic')`` with antialiasing when shrinking.

    ``img`` is H x W or H x W x C; channels are resized independently with the same weights.
    Give exactly one of ``scale`` (output size ``ceil(scale * input)``, as MATLAB) and ``size``
    (``(out_h, out_w)``). Integer images come back in their own type, rounded half away from zero and
    saturated after each 1-D pass like MATLAB (after the last one only with ``round_once``); float32
    and float64 images come back in their own type without rounding. Sums are taken in double.
    """
    dims = _plan(img, scale, size)
    out = img
    # MATLAB resizes the dimension with the smaller factor first; the stable sort keeps height
    # first on a tie, which the benchmark files depend on.
    for axis in sorted(range(2), key=lambda a: dims[a][0]):
        factor, out_len = dims[axis]
        weights, indices = _contributions(img.shape[axis], out_len, factor)
        out = _resize_axis(out, axis, weights, indices)
        if not round_once:
            out = _to_dtype(out, img.dtype)
    return _to_dtype(out, img.dtype)


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")


def _plan(img: np.ndarray, scale: float | None, size: tuple[int, int] | None) -> list[tuple[float, int]]:
    """(factor, output length) for height and width, validated."""
    if img.ndim not in (2, 3):
        raise ConfigError(f"expected an H x W or H x W x C image, got an array of shape {img.shape}")
    if not (np.issubdtype(img.dtype, np.integer) or img.dtype in (np.float32, np.float64)):
        raise ConfigError(f"unsupported image dtype {img.dtype}: use an integer type, float32 or float64")
    if (scale is None) == (size is None):
        raise ConfigError("give exactly one of scale and size to imresize")
    in_h, in_w = img.shape[:2]
    if in_h == 0 or in_w == 0:
        raise ConfigError(f"cannot resize an empty image of shape {img.shape}")
    if size is not None:
        out_h, out_w = (int(n) for n in size)
        if out_h < 1 or out_w < 1:
            raise ConfigError(f"output size must be positive, got {tuple(size)}")
        return [(out_h / in_h, out_h), (out_w / in_w, out_w)]
    factor = float(scale)
    if not math.isfinite(factor) or factor <= 0:
        raise ConfigError(f"scale must be a positive number, got {scale!r}")
    out_h, out_w = math.ceil(factor * in_h), math.ceil(factor * in_w)
    return [(factor, out_h), (factor, out_w)]


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB's 'bicubic')."""
    ax = np.abs(x)
    ax2 = ax * ax
    ax3 = ax2 * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return inner + outer


def _contributions(in_len: int, out_len: int, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and 0-based input indices (both out_len x P) of one 1-D pass, built as MATLAB does."""
    width = _KERNEL_WIDTH
    antialias = factor < 1
    if antialias:
        # Stretching the kernel by 1/f low-passes the input before it is sampled more sparsely.
        width = width / factor
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / factor + 0.5 * (1 - 1 / factor)  # output pixel centre in 1-based input coordinates
    left = np.floor(u - width / 2)
    taps = math.ceil(width) + 2
    indices = left[:, None] + np.arange(taps, dtype=np.float64)[None, :]
    dist = u[:, None] - indices
    raw = factor * _cubic(factor * dist) if antialias else _cubic(dist)
    weights = raw / _sum_in_order(raw)[:, None]
    # Half-sample symmetric borders: 0 -> 1, -1 -> 2, n+1 -> n (1-based), by indexing a mirrored ramp.
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len - 1, -1, -1)])
    idx = mirror[np.mod(indices.astype(np.int64) - 1, 2 * in_len)]
    keep = np.any(weights != 0, axis=0)  # MATLAB drops taps that are zero for every output
    return weights[:, keep], idx[:, keep]


def _sum_in_order(values: np.ndarray) -> np.ndarray:
    """Row sums added left to right (numpy's pairwise sum would change the last bits)."""
    total = np.zeros(values.shape[0], dtype=np.float64)
    for k in range(values.shape[1]):
        total = total + values[:, k]
    return total


def _resize_axis(img: np.ndarray, axis: int, weights: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """One 1-D pass along ``axis`` (0 = height, 1 = width) in double precision, taps summed in order."""
    # Gathering whole contiguous lines is much faster than gathering along an inner axis, so the
    # resized axis is moved to the front (one copy) and every other axis is flattened.
    src = np.ascontiguousarray(np.moveaxis(img, axis, 0))
    lines = src.reshape(src.shape[0], -1)
    out = np.zeros((weights.shape[0], lines.shape[1]), dtype=np.float64)
    term = np.empty_like(out)
    for k in range(weights.shape[1]):
        np.multiply(weights[:, k, None], lines[indices[:, k]], out=term)
        out += term
    return np.moveaxis(out.reshape((weights.shape[0],) + src.shape[1:]), 0, axis)


def _to_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Convert the double result of a pass back to the input type the way MATLAB does."""
    if values.dtype == dtype:
        return values
    if np.issubdtype(dtype, np.floating):
        return values.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(_round_half_away(values), info.min, info.max).astype(dtype)


def _round_half_away(values: np.ndarray) -> np.ndarray:
    """Round half away from zero exactly (floor(v + 0.5) misrounds 0.49999999999999994)."""
    magnitude = np.abs(values)
    whole = np.floor(magnitude)
    whole += (magnitude - whole) >= 0.5
    return np.copysign(whole, values, out=whole)

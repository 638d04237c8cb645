"""Image quality metrics as the SR papers compute them: PSNR/SSIM (Y or RGB) and WS-PSNR/WS-SSIM.

Everything follows BasicSR 1.4.2 (``calculate_psnr``, ``calculate_ssim``, ``to_y_channel``) and the
ODI code's ``odi_metric.py`` (see ``../shared/spec/arch-camixer.md`` sections 8 and 12.4), but
in float64 throughout.

Inputs are H x W x C (RGB) or H x W (gray) arrays. The protocols are defined for uint8 images on the
[0, 255] scale; uint16 images use the peak 65535 for RGB metrics; float arrays are taken to be on the
[0, 255] scale (like BasicSR, which casts its uint8 images to float64 first). The Y channel is always
on the 8-bit studio scale [16, 235], so Y metrics use the peak 255 whatever the input type.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from detailsr.errors import ConfigError

# BT.601 studio-range luma weights for R', G', B' in [0, 1], as BasicSR's rgb2ycbcr.
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_PROTOCOLS = ("y", "rgb", "ws")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """BasicSR's Y channel (BT.601 studio range, [16, 235]) of an RGB or gray image, float64, not rounded.

    ``img`` is H x W x 3 (RGB order) or H x W / H x W x 1 (gray, treated as R = G = B, which gives the
    same result as replicating it to three channels).
    """
    scaled = np.asarray(img, dtype=np.float64) / _peak(img)
    if scaled.ndim == 3 and scaled.shape[2] == 1:
        scaled = scaled[..., 0]
    if scaled.ndim == 2:
        red = green = blue = scaled
    elif scaled.ndim == 3 and scaled.shape[2] == 3:
        red, green, blue = scaled[..., 0], scaled[..., 1], scaled[..., 2]
    else:
        raise ConfigError(f"rgb_to_y expects an H x W x 3 RGB or H x W gray image, got shape {img.shape}")
    return _Y_WEIGHTS[0] * red + _Y_WEIGHTS[1] * green + _Y_WEIGHTS[2] * blue + 16.0


def psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB, ``10 log10(peak^2 / mse)`` in float64, all channels together; ``inf`` when equal."""
    a, b, peak = _prepare(sr, hr, crop_border, y_channel)
    return _psnr_from_mse(np.mean((a - b) ** 2), peak)


def ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """BasicSR's MATLAB-style SSIM (Gaussian 11x11, sigma 1.5, valid part); per channel, then the mean."""
    a, b, peak = _prepare(sr, hr, crop_border, y_channel)
    return float(np.mean([np.mean(_ssim_map(x, y, peak)) for x, y in _channels(a, b)]))


def ws_psnr(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """WS-PSNR of an equirectangular image: squared errors weighted by the cosine of each row's latitude."""
    a, b, peak = _prepare(sr, hr, crop_border, y_channel)
    weights = erp_row_weights(a.shape[0]).reshape((-1,) + (1,) * (a.ndim - 1))
    # Both means run over every element (the row weight broadcast to each column and channel).
    mse = np.mean(weights * (a - b) ** 2) / np.mean(np.broadcast_to(weights, a.shape))
    return _psnr_from_mse(mse, peak)


def ws_ssim(sr: np.ndarray, hr: np.ndarray, crop_border: int = 0, y_channel: bool = False) -> float:
    """WS-SSIM: the SSIM map averaged with ERP row weights, per channel, then the mean over channels.

    As the official ``odi_metric.py``, the weights are computed for the rows of the (valid, 10 rows
    shorter) SSIM map itself, not taken from the image rows the map points sit on.
    """
    a, b, peak = _prepare(sr, hr, crop_border, y_channel)
    values = []
    for x, y in _channels(a, b):
        ssim_map = _ssim_map(x, y, peak)
        weights = np.broadcast_to(erp_row_weights(ssim_map.shape[0])[:, None], ssim_map.shape)
        values.append(np.mean(ssim_map * weights) / np.mean(weights))
    return float(np.mean(values))


def evaluate(sr: np.ndarray, hr: np.ndarray, scale: int, protocol: str = "y") -> dict[str, float]:
    """The metrics of one evaluation protocol for an SR image and its (mod-cropped) ground truth.

    ``"y"``: PSNR/SSIM on the Y channel with ``crop_border = scale`` (classic benchmarks);
    ``"rgb"``: PSNR/SSIM on RGB without crop (large-image protocol); ``"ws"``: WS-PSNR/WS-SSIM on RGB
    without crop plus the plain RGB PSNR/SSIM (ODI protocol). Keys: ``psnr``, ``ssim`` and, for
    ``"ws"``, ``ws_psnr``, ``ws_ssim``.
    """
    if protocol not in _PROTOCOLS:
        raise ConfigError(f"unknown metric protocol {protocol!r}; expected one of {', '.join(_PROTOCOLS)}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")
    if protocol == "y":
        return {"psnr": psnr(sr, hr, scale, True), "ssim": ssim(sr, hr, scale, True)}
    result = {"psnr": psnr(sr, hr), "ssim": ssim(sr, hr)}
    if protocol == "ws":
        result.update(ws_psnr=ws_psnr(sr, hr), ws_ssim=ws_ssim(sr, hr))
    return result


def _peak(img: np.ndarray) -> float:
    """The value of white for an image of this type (floats: the uint8 scale)."""
    dtype = np.asarray(img).dtype
    if dtype == np.uint8 or np.issubdtype(dtype, np.floating):
        return 255.0
    if dtype == np.uint16:
        return 65535.0
    raise ConfigError(f"unsupported image dtype {dtype} for metrics: use uint8, uint16 or float")


def _prepare(
    sr: np.ndarray, hr: np.ndarray, crop_border: int, y_channel: bool
) -> tuple[np.ndarray, np.ndarray, float]:
    """Check the pair, crop the border, convert to Y if asked; float64 arrays and the peak value."""
    sr, hr = np.asarray(sr), np.asarray(hr)
    if sr.shape != hr.shape:
        raise ConfigError(
            f"image shapes differ: sr {sr.shape} vs hr {hr.shape} (mod-crop the HR to the SR size first)"
        )
    if sr.ndim not in (2, 3):
        raise ConfigError(f"expected H x W or H x W x C images, got shape {sr.shape}")
    peak = _peak(sr)
    if _peak(hr) != peak:
        raise ConfigError(f"image types differ: sr is {sr.dtype}, hr is {hr.dtype}")
    if isinstance(crop_border, bool) or not isinstance(crop_border, (int, np.integer)) or crop_border < 0:
        raise ConfigError(f"crop_border must be a non-negative integer, got {crop_border!r}")
    if 2 * crop_border >= min(sr.shape[:2]):
        raise ConfigError(f"crop_border {crop_border} leaves nothing of a {sr.shape[1]}x{sr.shape[0]} image")
    if crop_border:
        sr = sr[crop_border:-crop_border, crop_border:-crop_border]
        hr = hr[crop_border:-crop_border, crop_border:-crop_border]
    if y_channel:
        return rgb_to_y(sr), rgb_to_y(hr), 255.0
    return sr.astype(np.float64), hr.astype(np.float64), peak


def _channels(a: np.ndarray, b: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The pair split into 2-D channels (a gray image is one channel)."""
    if a.ndim == 2:
        return [(a, b)]
    return [(a[..., c], b[..., c]) for c in range(a.shape[2])]


def _psnr_from_mse(mse: float, peak: float) -> float:
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10(peak * peak / mse))


def _ssim_map(a: np.ndarray, b: np.ndarray, peak: float) -> np.ndarray:
    """BasicSR's SSIM map of two 2-D float64 channels: only the points whose window lies inside the image."""
    if min(a.shape) < _SSIM_WINDOW:
        size = f"{_SSIM_WINDOW}x{_SSIM_WINDOW}"
        raise ConfigError(f"SSIM needs at least {size} pixels, got {a.shape[1]}x{a.shape[0]}")
    c1 = (0.01 * peak) ** 2
    c2 = (0.03 * peak) ** 2
    kernel = cv2.getGaussianKernel(_SSIM_WINDOW, _SSIM_SIGMA)
    window = np.outer(kernel, kernel.transpose())
    half = _SSIM_WINDOW // 2

    def local_mean(x: np.ndarray) -> np.ndarray:
        # The border mode of filter2D does not matter: the padded rows are cut off.
        return cv2.filter2D(np.ascontiguousarray(x), -1, window)[half:-half, half:-half]

    mu1, mu2 = local_mean(a), local_mean(b)
    mu1_sq, mu2_sq, mu1_mu2 = mu1**2, mu2**2, mu1 * mu2
    sigma1_sq = local_mean(a**2) - mu1_sq
    sigma2_sq = local_mean(b**2) - mu2_sq
    sigma12 = local_mean(a * b) - mu1_mu2
    numerator = (2 * mu1_mu2 + c1) * (2 * sigma12 + c2)
    return numerator / ((mu1_sq + mu2_sq + c1) * (sigma1_sq + sigma2_sq + c2))


def erp_row_weights(rows: int) -> np.ndarray:
    """Cosine of the latitude of each row centre of an equirectangular image with ``rows`` rows."""
    i = np.arange(rows, dtype=np.float64)
    # Same operation order as the official genERP: (i - N/2 + 0.5) * pi / N.
    return np.cos((i - rows / 2 + 0.5) * math.pi / rows)

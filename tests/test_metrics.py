"""PSNR/SSIM against scikit-image on real SR pairs; WS-PSNR/WS-SSIM against the spec's formulas.

How skimage relates to BasicSR's SSIM (the quantity both compute):
``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)`` uses an 11-tap Gaussian (radius ``int(3.5 * 1.5 + 0.5) = 5``, the same normalised
weights as ``cv2.getGaussianKernel(11, 1.5)``), computes the SSIM map ``S`` on the whole image with
``mode='reflect'`` padding, and returns ``S[5:-5, 5:-5].mean()`` (it crops ``pad = (win - 1) // 2 =
5`` before the mean). Those are exactly the points whose 11x11 window lies inside the image, i.e.
BasicSR's ``filter2D(...)[5:-5, 5:-5]`` valid part, where padding plays no role. So skimage's
returned mean, on the *same* border-cropped (``crop_border``) array, is the same number with no
further cropping; with ``full=True``, ``S[5:-5, 5:-5]`` equals our map point by point. For RGB,
``channel_axis=2`` averages the per-channel means, as BasicSR does.

Real images: the cross-checks run over benchmark images and ODI panoramas from ../shared, and over
the project's CC0 photos so that they also run in any clone; the tests of the metrics' mechanics
use the photos only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
from conftest import photo, shared_file
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from detailsr.errors import ConfigError
from detailsr.metrics import _ssim_map, evaluate, psnr, rgb_to_y, ssim, ws_psnr, ws_ssim
from detailsr.resize import mod_crop

SKIMAGE_SSIM = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False, "data_range": 255}
PSNR_TOL = 1e-4  # dB
SSIM_TOL = 1e-5


def _read(relative: str) -> np.ndarray:
    return _read_file(shared_file(relative))


def _read_file(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img.ndim == 3 else img


def _sr_pair(set_name: str, name: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """A realistic (prediction, ground truth): cv2 bicubic upscale of the shipped LR, mod-cropped HR.

    `set_name` "photo": a project photo, its LR made with cv2 (area averaging) from the mod-cropped HR.
    """
    if set_name == "photo":
        hr = mod_crop(_read_file(photo(name)), scale)
        lr = cv2.resize(hr, (hr.shape[1] // scale, hr.shape[0] // scale), interpolation=cv2.INTER_AREA)
    else:
        hr = mod_crop(_read(f"datasets/{set_name}/HR/{name}.png"), scale)
        lr = _read(f"datasets/{set_name}/LR_bicubic/X{scale}/{name}x{scale}.png")
    sr = cv2.resize(lr, (lr.shape[1] * scale, lr.shape[0] * scale), interpolation=cv2.INTER_CUBIC)
    assert sr.shape == hr.shape
    return sr, hr


def _skimage_y(img: np.ndarray) -> np.ndarray:
    """Y from skimage's own BT.601 conversion (gray replicated to RGB), an independent rgb_to_y."""
    rgb = img if img.ndim == 3 else np.stack([img] * 3, axis=-1)
    return rgb2ycbcr(rgb)[..., 0]


PAIRS = [
    ("Set5", "baby"),
    ("Set5", "woman"),
    ("Set14", "bridge"),  # gray
    ("Set14", "comic"),
    ("B100", "3096"),
    ("B100", "101085"),  # portrait
    ("photo", "chelsea"),
    ("photo", "camera"),  # gray
]
PAIR_CASES = [pytest.param(s, n, k, id=f"{s}-{n}-x{k}") for s, n in PAIRS for k in (2, 3, 4)]


@pytest.mark.parametrize(("set_name", "name", "scale"), PAIR_CASES)
def test_y_channel_metrics_match_skimage(set_name: str, name: str, scale: int) -> None:
    sr, hr = _sr_pair(set_name, name, scale)
    c = scale
    y_sr, y_hr = _skimage_y(sr)[c:-c, c:-c], _skimage_y(hr)[c:-c, c:-c]
    np.testing.assert_allclose(rgb_to_y(sr)[c:-c, c:-c], y_sr, rtol=0, atol=1e-9)
    assert (
        abs(psnr(sr, hr, c, y_channel=True) - peak_signal_noise_ratio(y_hr, y_sr, data_range=255)) < PSNR_TOL
    )
    assert abs(ssim(sr, hr, c, y_channel=True) - structural_similarity(y_hr, y_sr, **SKIMAGE_SSIM)) < SSIM_TOL


@pytest.mark.parametrize(("set_name", "name", "scale"), PAIR_CASES)
def test_rgb_metrics_match_skimage(set_name: str, name: str, scale: int) -> None:
    sr, hr = _sr_pair(set_name, name, scale)
    channel_axis = 2 if sr.ndim == 3 else None
    assert abs(psnr(sr, hr) - peak_signal_noise_ratio(hr, sr, data_range=255)) < PSNR_TOL
    expected = structural_similarity(hr, sr, channel_axis=channel_axis, **SKIMAGE_SSIM)
    assert abs(ssim(sr, hr) - expected) < SSIM_TOL


def test_ssim_map_is_skimages_map_without_its_padded_border() -> None:
    sr, hr = _sr_pair("photo", "coffee", 4)
    y_sr, y_hr = rgb_to_y(sr), rgb_to_y(hr)
    _, full = structural_similarity(y_hr, y_sr, full=True, **SKIMAGE_SSIM)
    ours = _ssim_map(y_sr, y_hr, 255.0)
    assert ours.shape == (y_sr.shape[0] - 10, y_sr.shape[1] - 10)
    np.testing.assert_allclose(ours, full[5:-5, 5:-5], rtol=0, atol=1e-9)


def test_evaluate_y_protocol_crops_the_scale() -> None:
    sr, hr = _sr_pair("photo", "coffee", 3)
    result = evaluate(sr, hr, 3)
    y_sr, y_hr = _skimage_y(sr)[3:-3, 3:-3], _skimage_y(hr)[3:-3, 3:-3]
    assert set(result) == {"psnr", "ssim"}
    assert abs(result["psnr"] - peak_signal_noise_ratio(y_hr, y_sr, data_range=255)) < PSNR_TOL
    assert abs(result["ssim"] - structural_similarity(y_hr, y_sr, **SKIMAGE_SSIM)) < SSIM_TOL


def test_evaluate_rgb_and_ws_protocols() -> None:
    sr, hr = _photo_erp_pair()
    rgb = evaluate(sr, hr, 4, protocol="rgb")
    assert rgb == {"psnr": psnr(sr, hr), "ssim": ssim(sr, hr)}
    ws = evaluate(sr, hr, 4, protocol="ws")
    assert ws == {
        "psnr": psnr(sr, hr),
        "ssim": ssim(sr, hr),
        "ws_psnr": ws_psnr(sr, hr),
        "ws_ssim": ws_ssim(sr, hr),
    }
    with pytest.raises(ConfigError):
        evaluate(sr, hr, 4, protocol="lpips")
    with pytest.raises(ConfigError):
        evaluate(sr, hr, 0, protocol="rgb")


# --- Y channel, PSNR and SSIM properties --------------------------------------------------


def test_rgb_to_y_range_and_gray() -> None:
    np.testing.assert_allclose(rgb_to_y(np.zeros((2, 2, 3), np.uint8)), 16.0, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rgb_to_y(np.full((2, 2, 3), 255, np.uint8)), 235.0, rtol=0, atol=1e-12)
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    np.testing.assert_array_equal(rgb_to_y(gray), rgb_to_y(np.stack([gray] * 3, axis=-1)))
    np.testing.assert_allclose(rgb_to_y(gray), 219 * gray.astype(np.float64) / 255 + 16, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rgb_to_y(gray[..., None]), rgb_to_y(gray))
    with pytest.raises(ConfigError):
        rgb_to_y(np.zeros((4, 4, 4), np.uint8))


def test_psnr_of_a_known_error() -> None:
    hr = np.full((20, 30, 3), 100, np.uint8)
    sr = hr.copy()
    sr[:, :, 1] += 6  # mse = 36 / 3 = 12 over all three channels together
    assert psnr(sr, hr) == pytest.approx(10 * math.log10(255**2 / 12), abs=1e-12)
    assert psnr(hr, hr) == math.inf
    assert ws_psnr(hr, hr) == math.inf


def test_psnr_crop_border_ignores_the_border() -> None:
    hr = np.full((20, 20), 50, np.uint8)
    sr = hr.copy()
    sr[:2] = 0
    sr[5, 5] = 60
    assert psnr(sr, hr, crop_border=2) == pytest.approx(10 * math.log10(255**2 / (100 / 256)), abs=1e-12)


def test_uint16_uses_its_own_peak() -> None:
    # Scaling 8-bit values by 257 maps 255 to 65535: the same image, so the same PSNR and SSIM.
    sr, hr = _sr_pair("photo", "chelsea", 4)
    sr16, hr16 = sr.astype(np.uint16) * 257, hr.astype(np.uint16) * 257
    assert psnr(sr16, hr16) == pytest.approx(psnr(sr, hr), abs=1e-9)
    assert ssim(sr16, hr16) == pytest.approx(ssim(sr, hr), abs=1e-9)
    assert psnr(sr16, hr16, 4, y_channel=True) == pytest.approx(psnr(sr, hr, 4, y_channel=True), abs=1e-9)


def test_ssim_identity_and_gray() -> None:
    sr, hr = _sr_pair("photo", "camera", 2)  # gray
    assert ssim(hr, hr) == pytest.approx(1.0, abs=1e-12)
    assert ssim(sr, hr) == pytest.approx(ssim(np.stack([sr] * 3, -1), np.stack([hr] * 3, -1)), abs=1e-12)


def test_mismatched_inputs_are_config_errors() -> None:
    a = np.zeros((32, 32, 3), np.uint8)
    for fn in (psnr, ssim, ws_psnr, ws_ssim):
        with pytest.raises(ConfigError, match="shapes differ"):
            fn(a, a[:31])
        with pytest.raises(ConfigError):
            fn(a, a.astype(np.uint16))
        with pytest.raises(ConfigError):
            fn(a, a, crop_border=16)
        with pytest.raises(ConfigError):
            fn(a, a, crop_border=-1)
    with pytest.raises(ConfigError):
        ssim(a[:10, :10], a[:10, :10])  # smaller than the 11x11 window


# --- WS-PSNR / WS-SSIM ------------------------------------------------------------------


def _erp_pair(name: str, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """A small 2:1 ERP ground truth (an ODI panorama) and a x4 bicubic prediction of it (cv2 only)."""
    return _small_2_to_1_pair(_read(f"datasets/ODI/{name}"), width)


def _photo_erp_pair(name: str = "coffee", width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """The same from a project photo: its central 2:1 band stands in for a panorama."""
    img = _read_file(photo(name))
    rows = img.shape[1] // 2
    top = (img.shape[0] - rows) // 2
    return _small_2_to_1_pair(img[top : top + rows], width)


def _small_2_to_1_pair(img: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    hr = cv2.resize(img, (width, width // 2), interpolation=cv2.INTER_AREA)
    lr = cv2.resize(hr, (width // 4, width // 8), interpolation=cv2.INTER_AREA)
    sr = cv2.resize(lr, (width, width // 2), interpolation=cv2.INTER_CUBIC)
    return sr, hr


ERP_IMAGES = ["bedroom_horizonnet.png", "park_360sr.png", "synthetic_cubefaces_py360convert.png"]


def _latitude_weight(row: int, rows: int) -> float:
    """papers.md 4.3: w_j = cos((j + 0.5 - H/2) * pi / H)."""
    return math.cos((row + 0.5 - rows / 2) * math.pi / rows)


def _direct_ws_psnr(sr: np.ndarray, hr: np.ndarray) -> float:
    """WMSE = sum_j w_j sum_(i,c) (x - y)^2 / sum_(j,i,c) w_j, one image row at a time."""
    rows = hr.shape[0]
    num = den = 0.0
    for j in range(rows):
        err = sr[j].astype(np.float64) - hr[j].astype(np.float64)
        w = _latitude_weight(j, rows)
        num += w * float(np.sum(err * err))
        den += w * err.size
    return 10 * math.log10(255**2 / (num / den))


def _direct_ws_ssim(sr: np.ndarray, hr: np.ndarray, image_rows: bool = False) -> float:
    """Spec 12.4 with skimage's SSIM map; weights for the map's own rows (or, image_rows, for i + 5)."""
    channels = [(sr, hr)] if sr.ndim == 2 else [(sr[..., c], hr[..., c]) for c in range(sr.shape[2])]
    values = []
    for x, y in channels:
        _, full = structural_similarity(y.astype(np.float64), x.astype(np.float64), full=True, **SKIMAGE_SSIM)
        smap = full[5:-5, 5:-5]
        rows = smap.shape[0]
        num = den = 0.0
        for j in range(rows):
            w = _latitude_weight(j + 5, rows + 10) if image_rows else _latitude_weight(j, rows)
            num += w * float(np.sum(smap[j]))
            den += w * smap.shape[1]
        values.append(num / den)
    return float(np.mean(values))


@pytest.mark.parametrize("name", ERP_IMAGES)
def test_ws_psnr_matches_direct_formula(name: str) -> None:
    sr, hr = _erp_pair(name)
    assert ws_psnr(sr, hr) == pytest.approx(_direct_ws_psnr(sr, hr), abs=1e-9)


@pytest.mark.parametrize("name", ERP_IMAGES)
def test_ws_ssim_matches_direct_formula_with_recomputed_weights(name: str) -> None:
    sr, hr = _erp_pair(name)
    assert ws_ssim(sr, hr) == pytest.approx(_direct_ws_ssim(sr, hr), abs=1e-9)
    # The quirk matters: weights of the image rows under the map points give another number.
    assert abs(ws_ssim(sr, hr) - _direct_ws_ssim(sr, hr, image_rows=True)) > 1e-6


def test_ws_metrics_crop_and_y_channel() -> None:
    sr, hr = _photo_erp_pair("chelsea")
    c = 4
    y_sr, y_hr = _skimage_y(sr)[c:-c, c:-c], _skimage_y(hr)[c:-c, c:-c]
    assert ws_psnr(sr, hr, c, y_channel=True) == pytest.approx(_direct_ws_psnr(y_sr, y_hr), abs=1e-9)
    assert ws_ssim(sr, hr, c, y_channel=True) == pytest.approx(_direct_ws_ssim(y_sr, y_hr), abs=1e-9)
    assert ws_psnr(sr, hr, c) == pytest.approx(_direct_ws_psnr(sr[c:-c, c:-c], hr[c:-c, c:-c]), abs=1e-9)


def test_ws_psnr_equals_psnr_for_an_error_constant_across_rows() -> None:
    # Every sample off by exactly 3: each row has the same mse, so the weights cancel out.
    _, hr = _photo_erp_pair()
    sign = np.where(hr < 128, 3, -3)
    sr = (hr.astype(np.int16) + sign).astype(np.uint8)
    expected = 20 * math.log10(255 / 3)
    assert psnr(sr, hr) == pytest.approx(expected, abs=1e-9)
    assert ws_psnr(sr, hr) == pytest.approx(expected, abs=1e-9)


def test_ws_ssim_equals_ssim_when_every_row_is_the_same() -> None:
    # An image that does not vary down its height has the same SSIM map row, so any row weights
    # give the plain mean.
    sr, hr = _photo_erp_pair()
    sr_rows, hr_rows = np.repeat(sr[30:31], 40, axis=0), np.repeat(hr[30:31], 40, axis=0)
    assert ws_ssim(sr_rows, hr_rows) == pytest.approx(ssim(sr_rows, hr_rows), abs=1e-12)
    assert ws_psnr(sr_rows, hr_rows) == pytest.approx(psnr(sr_rows, hr_rows), abs=1e-9)


def test_ws_psnr_weights_the_equator_more_than_the_poles() -> None:
    _, hr = _photo_erp_pair()
    rows = hr.shape[0]
    polar, equatorial = hr.astype(np.int16), hr.astype(np.int16)
    polar[0] += np.where(hr[0] < 128, 20, -20)
    equatorial[rows // 2] += np.where(hr[rows // 2] < 128, 20, -20)
    plain = psnr(polar.astype(np.uint8), hr)
    assert plain == pytest.approx(psnr(equatorial.astype(np.uint8), hr), abs=1e-12)
    assert ws_psnr(polar.astype(np.uint8), hr) > plain > ws_psnr(equatorial.astype(np.uint8), hr)


def test_ws_metrics_are_symmetric_under_a_vertical_flip() -> None:
    # cos latitude weights are symmetric about the equator.
    sr, hr = _photo_erp_pair("chelsea")
    assert ws_psnr(sr[::-1], hr[::-1]) == pytest.approx(ws_psnr(sr, hr), abs=1e-9)
    assert ws_ssim(sr[::-1], hr[::-1]) == pytest.approx(ws_ssim(sr, hr), abs=1e-9)


def test_ws_metrics_on_gray() -> None:
    sr, hr = _photo_erp_pair()
    gray_sr, gray_hr = sr[..., 1], hr[..., 1]
    assert ws_psnr(gray_sr, gray_hr) == pytest.approx(_direct_ws_psnr(gray_sr, gray_hr), abs=1e-9)
    assert ws_ssim(gray_sr, gray_hr) == pytest.approx(_direct_ws_ssim(gray_sr, gray_hr), abs=1e-9)

"""360° (ERP) panoramas end to end: the ODI `ws` evaluation protocol and seamless panorama upscaling.

Inputs are small 2:1 copies of ../shared/datasets/ODI written by the tests (the originals, up to
6656x3328, take minutes on a small CPU); `shared_file` skips outside CI when the data is missing.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, shared_file
from PIL import Image

import detailsr
from detailsr.data.erp import erp_lr_image
from detailsr.errors import ImageError
from detailsr.evaluation import evaluate_folder, hr_files, load_pair
from detailsr.imageio import from_tensor, read_image, to_tensor, write_image
from detailsr.inference import panorama_padding, run, upscale, wrap_pad
from detailsr.metrics import psnr, ws_psnr, ws_ssim
from detailsr.models.camixersr import latitude_condition
from detailsr.models.registry import build_untrained
from detailsr.resize import bicubic_downscale

ODI = (
    "bathroom_lgtnet.png", "bedroom_horizonnet.png", "hotelroom_lgtnet.jpg",
    "park_360sr.png", "street_equirec2perspec.jpg", "synthetic_cubefaces_py360convert.png",
)


@pytest.fixture(scope="module")
def net(one_thread):
    return detailsr.load_model()  # the embedded CAMixerSR-S x4


def _odi(name: str) -> np.ndarray:
    return read_image(shared_file(f"datasets/ODI/{name}")).pixels


def _small(name: str, width: int, height: int | None = None) -> np.ndarray:
    """An ODI panorama resized (Pillow bilinear, as the ODI scripts resize) to width x height (2:1 default)."""
    size = (width, height or width // 2)
    return np.array(Image.fromarray(_odi(name)).resize(size, Image.Resampling.BILINEAR))


def _write(path: Path, pixels: np.ndarray, overwrite: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path, pixels, overwrite=overwrite)


def _odi_folder(folder: Path, width: int = 256) -> Path:
    """The 6 ODI panoramas as width x width/2 PNGs directly in `folder` (no HR/, like ODI/ itself)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ODI:
        write_image(folder / f"{Path(name).stem}.png", _small(name, width))
    return folder


def _seamless(name: str, width: int) -> np.ndarray:
    """A width x width/2 panorama whose left and right edges really continue each other.

    The source is rolled by half its width (its meridian becomes an inner column pair of the
    photo) and box-downscaled with one copy on each side, so the resize has wrap-around context.
    """
    pixels = np.roll(_odi(name), _odi(name).shape[1] // 2, axis=1)
    three = Image.fromarray(np.concatenate([pixels] * 3, axis=1)).resize((3 * width, width // 2), Image.Resampling.BOX)
    return np.array(three)[:, width : 2 * width]


# -------------------------------------------------------------------------------- ws protocol


def test_ws_takes_a_folder_of_panoramas_without_hr(tmp_path):
    folder = _odi_folder(tmp_path / "ODI", 64)
    (folder / ".hidden.png").write_bytes((folder / "park_360sr.png").read_bytes())
    (folder / "notes.txt").write_text("not an image")
    assert [p.name for p in hr_files(folder, "ws")] == [f"{Path(n).stem}.png" for n in ODI]
    for protocol in ("y", "rgb"):  # the flat-image protocols still need HR/
        with pytest.raises(ImageError, match="no HR/ folder"):
            hr_files(folder, protocol)
    with pytest.raises(ImageError, match="does not exist"):
        hr_files(tmp_path / "missing", "ws")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no images"):
        hr_files(tmp_path / "empty", "ws")


def test_ws_lr_is_the_odi_fisheye_degradation_of_the_uncropped_panorama(tmp_path):
    # 258x130: not a multiple of 4, so the HR is cropped and the fisheye size follows the 130 rows.
    pixels = _small("park_360sr.png", 258, 130)
    _write(tmp_path / "park.png", pixels)
    lr, hr = load_pair(tmp_path / "park.png", tmp_path, 4, "ws")
    assert hr.shape == (128, 256, 3) and np.array_equal(hr, pixels[:128, :256])
    assert lr.shape == (32, 64, 3) and np.array_equal(lr, erp_lr_image(pixels, 4))
    assert not np.array_equal(lr, erp_lr_image(pixels[:128, :256], 4))  # side from 130 rows, not 128
    # Not the flat protocols' MATLAB bicubic, which the same image gets under "rgb" (with HR/).
    assert float(np.abs(lr.astype(int) - bicubic_downscale(hr, 4)).mean()) > 0.5


def test_ws_uses_the_folders_lr_file_where_there_is_one(tmp_path):
    _write(tmp_path / "park.png", _small("park_360sr.png", 128))
    shipped = np.full((16, 32, 3), 7, np.uint8)
    _write(tmp_path / "LR_fisheye" / "X4" / "park.png", shipped)
    lr, _ = load_pair(tmp_path / "park.png", tmp_path, 4, "ws")
    assert np.array_equal(lr, shipped)
    _write(tmp_path / "LR_fisheye" / "X4" / "park.png", shipped[:8], overwrite=True)
    with pytest.raises(ImageError, match="not HR/4"):
        load_pair(tmp_path / "park.png", tmp_path, 4, "ws")


def test_ws_scores_are_the_odi_metrics_of_the_saved_output(tmp_path, net):
    folder = tmp_path / "ODI"
    _write(folder / "bathroom.png", _small("bathroom_lgtnet.png", 256))
    result = evaluate_folder(net, folder, 4, protocol="ws", save_dir=tmp_path / "out")
    scores = result.images["bathroom.png"]
    sr = read_image(tmp_path / "out" / "ODI" / "bathroom.png").pixels
    _, hr = load_pair(folder / "bathroom.png", folder, 4, "ws")
    assert scores.extra["ws_psnr"] == pytest.approx(ws_psnr(sr, hr), abs=1e-9)
    assert scores.extra["ws_ssim"] == pytest.approx(ws_ssim(sr, hr), abs=1e-9)
    assert scores.psnr == pytest.approx(psnr(sr, hr), abs=1e-9)
    assert scores.extra["ws_psnr"] != pytest.approx(scores.psnr, abs=0.01)  # the latitude weights count


def test_latitude_condition_reaches_camixerosr(tmp_path):
    osr = build_untrained("camixersr-odi-x4")  # random weights: only the plumbing is checked
    folder = tmp_path / "ODI"
    _write(folder / "park.png", _small("park_360sr.png", 256))  # LR 64x32: multiples of 16
    evaluate_folder(osr, folder, 4, protocol="ws", save_dir=tmp_path / "out")
    saved = read_image(tmp_path / "out" / "ODI" / "park.png").pixels
    x = to_tensor(load_pair(folder / "park.png", folder, 4, "ws")[0])
    with torch.inference_mode():
        with_latitude = from_tensor(osr(x, latitude_condition(32, 64)).clamp(0, 1))
        without = from_tensor(osr(x).clamp(0, 1))  # the official default: zeros
    assert np.array_equal(saved, with_latitude)
    assert not np.array_equal(saved, without)


def test_eval_ws_on_the_odi_panoramas_prints_a_table_and_json(tmp_path):
    folder = _odi_folder(tmp_path / "ODI")  # the 6 panoramas as 256x128
    report = tmp_path / "ws.json"
    done = run_cli("eval", "-d", folder, "-s", "4", "--protocol", "ws", "--json", report, "--threads", "1")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("PSNR (dB) / SSIM on WS on RGB, no crop")
    assert lines[2].split()[:2] == ["ODI", "6"] and "WS-PSNR" in lines[3] and "WS-SSIM" in lines[3]
    data = json.loads(report.read_text())
    assert data["protocol"] == "ws" and data["scale"] == 4
    images = data["datasets"]["ODI"]["images"]
    assert sorted(images) == sorted(f"{Path(n).stem}.png" for n in ODI)
    # The table's WS line is the mean over the images.
    ws_mean = np.mean([i["ws_psnr"] for i in images.values()])
    assert f"WS-PSNR {ws_mean:.2f}" in lines[3]
    # The embedded model beats a bicubic upscale of the same LR on the weighted metric.
    bicubic = []
    for name in images:
        lr, hr = load_pair(folder / name, folder, 4, "ws")
        up = np.array(Image.fromarray(lr).resize((hr.shape[1], hr.shape[0]), Image.Resampling.BICUBIC))
        bicubic.append(ws_psnr(up, hr))
    assert ws_mean > np.mean(bicubic) + 0.3, (ws_mean, np.mean(bicubic))


def test_eval_refuses_a_folder_without_hr_for_the_flat_protocols(tmp_path):
    folder = _odi_folder(tmp_path / "ODI", 64)
    done = run_cli("eval", "-d", folder, "-s", "4", "--protocol", "rgb")
    assert done.returncode != 0 and done.stdout == ""
    assert done.stderr.strip().count("\n") == 0 and "no HR/ folder" in done.stderr


# ------------------------------------------------------------------------------ panoramas


def _seam(y: np.ndarray) -> float:
    """Mean absolute difference of the last and first columns: the pair across the ±180° meridian."""
    return float(np.abs(y[:, -1].astype(float) - y[:, 0]).mean())


def _boundary_pairs(y: np.ndarray, scale: int) -> np.ndarray:
    """The same for every inner output column pair that straddles two LR pixels, as the meridian does."""
    y = y.astype(float)
    return np.abs(y[:, scale::scale] - y[:, scale - 1 : -1 : scale]).mean(axis=(0, 2))


@pytest.mark.parametrize("name", ["bathroom_lgtnet.png", "park_360sr.png"])
def test_panorama_output_has_no_seam_at_the_meridian(name, net):
    lr = _seamless(name, 128)
    plain, wrapped = upscale(lr, net), upscale(lr, net, panorama=True)
    assert wrapped.shape == plain.shape == (256, 512, 3)
    # Rolled by half the width, the meridian is an inner column pair of the image: the reference.
    rolled = upscale(np.roll(lr, 64, axis=1), net)
    inner = float(np.abs(rolled[:, 255].astype(float) - rolled[:, 256]).mean())
    assert abs(_seam(wrapped) - inner) < 0.3, (_seam(wrapped), inner)
    assert _seam(wrapped) <= np.percentile(_boundary_pairs(wrapped, 4), 90)
    assert _seam(plain) > 2 * _seam(wrapped), (_seam(plain), _seam(wrapped))


def test_panorama_upscale_commutes_with_a_roll_by_half_the_width(net):
    lr = _seamless("street_equirec2perspec.jpg", 128)
    y = upscale(lr, net, panorama=True).astype(float)
    rolled = upscale(np.roll(lr, 64, axis=1), net, panorama=True).astype(float)
    diff = np.abs(np.roll(y, 256, axis=1) - rolled)
    # Only the global steps differ (the predictor's statistics, which windows rank among the top K).
    assert diff.mean() < 0.3 and np.abs(diff.mean(axis=(0, 2))).max() < 1.5, (diff.mean(), diff.max())


def test_panorama_padding_keeps_window_multiples():
    osr = build_untrained("camixersr-odi-x4")
    for width in (16, 64, 100, 256):
        left, right = panorama_padding(osr, width)
        assert left == 32 and right >= 32 and (left + width + right) % 16 == 0
    x = torch.arange(5.0).view(1, 1, 1, 5)
    assert wrap_pad(x, 2, 8).flatten().tolist() == [3, 4, 0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1, 2]


def test_panorama_feeds_camixerosr_the_padded_latitude_map():
    osr = build_untrained("camixersr-odi-x4")
    lr = _small("park_360sr.png", 64)  # 64x32: padded to 32 + 64 + 32 columns
    x = to_tensor(lr)
    y = run(osr, x, panorama=True)
    with torch.inference_mode():
        full = osr(wrap_pad(x, 32, 32), latitude_condition(32, 128)).clamp(0, 1)
    assert torch.equal(y, full[..., 128:384])


def test_panorama_works_with_tiles_and_alpha(net):
    lr = _seamless("bathroom_lgtnet.png", 128)
    whole = upscale(lr, net, panorama=True).astype(float)
    tiled = upscale(lr, net, panorama=True, tile=64, tile_overlap=16).astype(float)  # streamed tiles
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).mean() < 1.0  # tiles change the output only near their borders
    assert _seam(tiled) <= np.percentile(_boundary_pairs(tiled, 4), 90)
    tensor = upscale(torch.from_numpy(lr).permute(2, 0, 1).float() / 255, net, panorama=True, tile=64)
    assert np.abs(from_tensor(tensor).astype(float) - tiled).max() <= 1  # the float-tiles path alike
    alpha = np.tile(np.linspace(0, 255, 128).astype(np.uint8), (64, 1))  # 0 at the left edge, 255 at the right
    rgba = upscale(np.dstack([lr, alpha]), net, panorama=True)
    assert rgba.shape == (256, 512, 4)
    assert rgba[:, 0, 3].mean() > 40  # the wrap brings the opaque right edge in (without it: ~0)
    assert np.array_equal(rgba[:, :, :3], whole.astype(np.uint8))


def test_upscale_cli_panorama_flag(tmp_path, net):
    source = tmp_path / "pano.png"
    _write(source, _seamless("park_360sr.png", 128))
    out = tmp_path / "pano_x4.png"
    done = run_cli("upscale", source, "-o", out, "--panorama", "--threads", "1")
    assert done.returncode == 0, done.stderr
    expected = upscale(read_image(source).pixels, net, panorama=True)
    assert np.array_equal(read_image(out).pixels, expected)
    # Two same-size inputs in one batch take the same path.
    copy = tmp_path / "copy.png"
    copy.write_bytes(source.read_bytes())
    done = run_cli("upscale", source, copy, "-o", tmp_path / "batch", "--panorama", "--batch", "2", "--threads", "1")
    assert done.returncode == 0, done.stderr
    batched = read_image(tmp_path / "batch" / "copy_x4.png").pixels.astype(int)
    assert np.abs(batched - expected).max() <= 1  # a batch may round differently


def test_ws_pads_lr_sides_camixerosr_cannot_take(tmp_path):
    # 260x130 at x4: HR cropped to 260x128, LR 65x32; CAMixerOSR needs multiples of 16, so the LR and
    # its latitude map are padded on the right for the network and the output cropped back.
    osr = build_untrained("camixersr-odi-x4")
    _write(tmp_path / "hotel.png", _small("hotelroom_lgtnet.jpg", 260, 130))
    lr, hr = load_pair(tmp_path / "hotel.png", tmp_path, 4, "ws")
    assert lr.shape == (32, 65, 3) and hr.shape == (128, 260, 3)
    result = evaluate_folder(osr, tmp_path, 4, protocol="ws", save_dir=tmp_path / "out")
    assert np.isfinite(result.images["hotel.png"].extra["ws_psnr"])
    assert read_image(tmp_path / "out" / tmp_path.name / "hotel.png").pixels.shape == hr.shape

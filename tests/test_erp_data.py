"""detailsr.data.erp: the ODI fisheye degradation of ERP panoramas and the ERP training patches (spec §12)."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import shared_file
from PIL import Image
from torch.utils.data import default_collate

from detailsr.data.erp import ERPPatches, erp_downsample_fisheye, erp_lr_image
from detailsr.errors import ConfigError, ImageError
from detailsr.imageio import read_image, write_image
from detailsr.train.losses import ws_l1_loss

PANORAMAS = ("bathroom_lgtnet.png", "synthetic_cubefaces_py360convert.png")  # both 1024x512


def _panorama(name: str, rows: int) -> np.ndarray:
    """A real ODI panorama resized to rows x 2 rows the way spec §12.2 resizes (Pillow bilinear)."""
    pixels = read_image(shared_file(f"datasets/ODI/{name}")).pixels
    return np.array(Image.fromarray(pixels).resize((2 * rows, rows), Image.Resampling.BILINEAR))


def _to_float(pixels: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> (3, H, W) float32 / 255, as torchvision ToTensor."""
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(255)


def _u8(t: torch.Tensor) -> np.ndarray:
    """(3, H, W) float made from uint8 / 255 -> H x W x 3 uint8 (exact)."""
    return np.round(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _fill(rows: int, values: np.ndarray, along: str) -> np.ndarray:
    """A grey rows x 2 rows ERP whose value depends only on the row ("lat") or the column ("lon")."""
    v = values.astype(np.uint8)
    grid = np.broadcast_to(v[:, None] if along == "lat" else v[None, :], (rows, 2 * rows))
    return np.repeat(grid[:, :, None], 3, axis=2)


# ------------------------------------------------------------------------------------- degradation


@pytest.mark.parametrize(("rows", "scale"), [(128, 2), (128, 4), (66, 4)])
def test_degradation_shape_range_and_picture(rows: int, scale: int):
    hr = _to_float(_panorama("park_360sr.png", rows))
    lr = erp_downsample_fisheye(hr, scale)
    h, w = hr.shape[1:]
    assert lr.dtype == torch.float32 and lr.shape == (3, h // scale, w // scale)  # 66 rows: cropped to 64
    assert float(lr.min()) >= 0.0 and float(lr.max()) <= 1.0
    # The same picture as a plain area downscale, away from the poles (where the fisheyes mix longitudes).
    area = F.avg_pool2d(hr[None, :, : h // scale * scale, : w // scale * scale], scale)[0]
    band = slice(lr.shape[1] // 4, 3 * lr.shape[1] // 4)
    assert float((lr - area)[:, band].abs().mean()) < 0.03


@pytest.mark.parametrize(("rows", "scale"), [(64, 2), (128, 4)])
def test_constant_colour_stays_that_colour_away_from_the_seam(rows: int, scale: int):
    colour = np.array([200, 100, 30], np.uint8)
    lr = erp_lr_image(np.broadcast_to(colour, (rows, 2 * rows, 3)).copy(), scale).astype(int)
    # The longitude seam (+-180 deg, the left/right ERP edge) has no wrap-around: grid_sample's zero
    # padding darkens a ray within half an HR pixel of it in each fisheye, and the bicubic downscale
    # spreads that over about one LR pixel, so the two LR columns next to each edge are left out.
    inner = lr[:, 2:-2]
    # Two truncations to uint8 (the fisheye and the LR) each lose less than one level, never gain.
    assert np.all(inner <= colour) and np.all(inner >= colour.astype(int) - 2)
    edges = lr[:, [0, -1]]
    assert np.all(edges <= colour) and (colour - edges).max() > 2  # the documented seam ray is there


@pytest.mark.parametrize(("rows", "scale"), [(64, 2), (128, 4)])
def test_latitude_ramp_rows_follow_hr_rows(rows: int, scale: int):
    """North (row 0) dark to south bright: LR row r is about the mean of HR rows r*s .. r*s + s - 1."""
    hr = _fill(rows, np.round(np.arange(rows) * 255 / (rows - 1)), "lat")
    lr = erp_lr_image(hr, scale)[:, 2:-2].astype(float)  # without the seam (see the constant test)
    assert np.ptp(lr, axis=(1, 2)).max() <= 2  # one value per row (up to truncation): a latitude
    row_mean = lr.mean(axis=(1, 2))
    expected = hr[:, 0, 0].astype(float).reshape(-1, scale).mean(axis=1)
    assert np.all(np.diff(row_mean) > 0)  # not flipped: the north pole stays on top
    # Linear in latitude is linear in fisheye radius, which bilinear/bicubic keep except at the cone
    # apex (the pole), which the bicubic support flattens: the pole rows get a looser bound.
    error = row_mean - expected
    assert np.all(error[1:-1] <= 0.5) and np.all(error[1:-1] >= -2)
    assert np.all(np.abs(error[[0, -1]]) <= 5)


@pytest.mark.parametrize(("rows", "scale"), [(64, 2), (128, 4)])
def test_longitude_ramp_columns_follow_hr_columns(rows: int, scale: int):
    """West (column 0) dark to east bright: LR column q is about the mean of its s HR columns.

    Catches a mirrored or rotated longitude (a wrong atan2 or sin/cos), which a latitude test cannot.
    Only the middle half of the rows: towards the poles all longitudes meet in a few fisheye pixels.
    """
    cols = 2 * rows
    hr = _fill(rows, np.round(np.arange(cols) * 255 / (cols - 1)), "lon")
    lr = erp_lr_image(hr, scale).astype(float)
    band = lr[lr.shape[0] // 4 : 3 * lr.shape[0] // 4, 2:-2, 0]
    expected = hr[0, :, 0].astype(float).reshape(-1, scale).mean(axis=1)[2:-2]
    assert np.all(np.diff(band.mean(axis=0)) > 0)
    assert np.abs(band - expected).max() <= 2.5


def test_lr_image_truncates_the_float_result():
    hr = _panorama("hotelroom_lgtnet.jpg", 64)
    lr = erp_lr_image(hr, 2)
    exact = erp_downsample_fisheye(_to_float(hr), 2).permute(1, 2, 0).numpy()
    assert lr.dtype == np.uint8 and lr.shape == (32, 64, 3)
    assert np.array_equal(lr, np.floor(exact * np.float32(255)).astype(np.uint8))
    assert not np.array_equal(lr, np.round(exact * 255).astype(np.uint8))  # truncation, not rounding


def test_degradation_rejects_what_it_cannot_use():
    with pytest.raises(ImageError, match="uint8 RGB array, got uint16"):
        erp_lr_image(np.zeros((8, 16, 3), np.uint16), 2)
    with pytest.raises(ImageError, match=r"\(3, h, w\) float"):
        erp_downsample_fisheye(torch.zeros(8, 16), 2)
    with pytest.raises(ConfigError, match="scale"):
        erp_downsample_fisheye(torch.zeros(3, 8, 16), 0)


# ----------------------------------------------------------------------------------------- dataset


@pytest.fixture
def erp_dir(tmp_path: Path) -> Path:
    """Two real 1024x512 panoramas (resized by the dataset to its small erp_size)."""
    folder = tmp_path / "erp"
    folder.mkdir()
    for name in PANORAMAS:
        shutil.copy(shared_file(f"datasets/ODI/{name}"), folder / name)
    return folder


def _cos_latitude(lr_row0: int, p: int, lr_rows: int) -> np.ndarray:
    """Spec §12.3 step 4: condition row r = cos(((2 (top_lq + r) + 1) / (gt_h / s) - 1) pi / 2)."""
    r = np.arange(p)
    return np.cos(((2 * (lr_row0 + r) + 1) / lr_rows - 1) * math.pi / 2)


def _locate(patch: np.ndarray, full: np.ndarray, y: int) -> list[int]:
    """Every column where `patch` (p x p x 3) sits in rows y .. y+p-1 of `full`."""
    p = patch.shape[0]
    return [x for x in range(full.shape[1] - p + 1) if np.array_equal(full[y : y + p, x : x + p], patch)]


def test_patches_are_aligned_and_carry_their_latitude(erp_dir: Path):
    s, p, size = 2, 12, (64, 128)
    ds = ERPPatches(erp_dir, s, p, erp_size=size, augment=False, repeat=3)
    assert len(ds) == 6
    fulls = []
    for name in ds.hr_files:
        hr = _panorama(name.name, size[0])
        fulls.append((erp_lr_image(hr, s), hr))
    for i in range(len(ds)):
        item = ds[i]
        assert item["lr"].shape == (3, p, p) and item["hr"].shape == (3, p * s, p * s)
        assert item["lr"].dtype == item["hr"].dtype == item["condition"].dtype == torch.float32
        assert item["condition"].shape == (1, p, p)
        assert item["top"].dtype == item["erp_rows"].dtype == torch.int64 and item["top"].ndim == 0
        assert int(item["erp_rows"]) == size[0]
        top = int(item["top"])
        assert top % s == 0
        full_lr, full_hr = fulls[i % 2]
        (x,) = _locate(_u8(item["lr"]), full_lr, top // s)
        assert np.array_equal(_u8(item["hr"]), full_hr[top : top + p * s, x * s : (x + p) * s])
        expected = np.repeat(_cos_latitude(top // s, p, size[0] // s)[:, None], p, axis=1)
        assert np.allclose(item["condition"][0].numpy(), expected, rtol=0, atol=1e-6)
    with pytest.raises(IndexError):
        ds[6]
    assert torch.equal(ds[-1]["lr"], ds[5]["lr"])


def test_hflip_mirrors_lr_and_hr_and_keeps_the_condition(erp_dir: Path):
    plain = ERPPatches(erp_dir, 4, 8, erp_size=(64, 128), augment=False, repeat=8)
    flipped = ERPPatches(erp_dir, 4, 8, erp_size=(64, 128), augment=True, repeat=8)
    seen = set()
    for i in range(len(plain)):
        a, b = plain[i], flipped[i]
        assert torch.equal(a["top"], b["top"]) and torch.equal(a["condition"], b["condition"])
        mirrored = torch.equal(b["lr"], a["lr"].flip(-1))
        assert mirrored or torch.equal(b["lr"], a["lr"])
        assert torch.equal(b["hr"], a["hr"].flip(-1) if mirrored else a["hr"])
        seen.add(mirrored and not torch.equal(a["lr"], a["lr"].flip(-1)))
    assert seen == {False, True}  # 16 draws of a fair coin


def test_items_are_reproducible_and_change_with_the_epoch(erp_dir: Path):
    ds = ERPPatches(erp_dir, 4, 8, erp_size=(64, 128), repeat=2)
    first = [ds[i] for i in range(len(ds))]
    again = ERPPatches(erp_dir, 4, 8, erp_size=(64, 128), repeat=2)
    for a, b in zip(first, (again[i] for i in range(len(again))), strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)
    ds.set_epoch(1)
    assert ds.epoch == 1
    assert not all(torch.equal(ds[i]["hr"], first[i]["hr"]) for i in range(len(ds)))
    ds.set_epoch(0)
    assert torch.equal(ds[3]["hr"], first[3]["hr"])


def test_lr_cache_is_written_and_reused(erp_dir: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    ds = ERPPatches(erp_dir, 4, 8, erp_size=(64, 128), cache_dir=cache, augment=False)
    _ = ds[0], ds[1]
    files = sorted((cache / "X4").iterdir())
    assert [f.name for f in files] == sorted(Path(n).stem + ".png" for n in PANORAMAS)  # no temporary files
    for f in files:
        hr = _panorama(next(n for n in PANORAMAS if n.startswith(f.stem)), 64)
        assert np.array_equal(read_image(f).pixels, erp_lr_image(hr, 4))
    # A cache file of the right size is used as it is (an inverted one proves it), a wrong-size one is rebuilt.
    marked = 255 - read_image(files[0]).pixels
    write_image(files[0], marked, overwrite=True)
    write_image(files[1], np.zeros((5, 7, 3), np.uint8), overwrite=True)
    again = ERPPatches(erp_dir, 4, 8, erp_size=(64, 128), cache_dir=cache, augment=False)
    item = again[0]
    top = int(item["top"]) // 4
    assert len(_locate(_u8(item["lr"]), marked, top)) == 1
    _ = again[1]
    assert read_image(files[1]).pixels.shape == (16, 32, 3)


def test_bad_folders_and_sizes_are_errors(erp_dir: Path, tmp_path: Path):
    with pytest.raises(ImageError, match="does not exist"):
        ERPPatches(tmp_path / "missing", 4, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageError, match="holds no images"):
        ERPPatches(tmp_path / "empty", 4, 8)
    with pytest.raises(ImageError, match=r"smaller than the patch size 20") as info:
        ERPPatches(erp_dir, 4, 20, erp_size=(64, 128))  # LR 16 x 32
    assert "\n" not in str(info.value) and str(erp_dir) in str(info.value)
    with pytest.raises(ConfigError, match="cols = 2 x rows"):
        ERPPatches(erp_dir, 4, 8, erp_size=(128, 64))  # (width, height) by mistake
    deep = tmp_path / "deep"
    deep.mkdir()
    write_image(deep / "pano.png", np.zeros((16, 32, 3), np.uint16))
    with pytest.raises(ImageError, match=r"pano\.png.*16-bit.*8-bit"):
        ERPPatches(deep, 2, 4, erp_size=(16, 32))[0]


def test_ws_l1_loss_runs_on_a_collated_batch(erp_dir: Path):
    ds = ERPPatches(erp_dir, 4, 8, erp_size=(64, 128), repeat=2)
    batch = default_collate([ds[i] for i in range(len(ds))])
    assert batch["lr"].shape == (4, 3, 8, 8) and batch["condition"].shape == (4, 1, 8, 8)
    assert batch["top"].shape == (4,) and batch["top"].dtype == torch.int64
    pred = F.interpolate(batch["lr"], scale_factor=4, mode="nearest")
    loss = ws_l1_loss(pred, batch["hr"], batch["top"], int(batch["erp_rows"][0]))
    assert torch.isfinite(loss) and 0.0 < float(loss) < 1.0

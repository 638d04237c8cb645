"""detailsr.data.PairedImages on real photos: alignment, augmentation, determinism, caching, LR folders."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import photo, shared_file
from numpy.lib.stride_tricks import sliding_window_view
from torch.utils.data import DataLoader

from detailsr.data import PairedImages, seed_worker
from detailsr.errors import ImageError
from detailsr.imageio import read_image, write_image
from detailsr.resize import bicubic_downscale, mod_crop


@pytest.fixture
def hr_dir(tmp_path: Path) -> Path:
    """Two RGB photos whose sizes are not multiples of 3 or 4 (so mod-crop matters)."""
    folder = tmp_path / "hr"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        shutil.copy(photo(name), folder / f"{name}.png")
    return folder


def _u8(t: torch.Tensor) -> np.ndarray:
    """C x H x W float in [0, 1] -> H x W x C uint8 (exact for tensors made from 8-bit images)."""
    return np.round(t.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def _find(patch: np.ndarray, full: np.ndarray) -> list[tuple[int, int]]:
    """Every top-left (y, x) where `patch` occurs in `full` (both H x W x C)."""
    p = patch.shape[0]
    windows = sliding_window_view(full, (p, p, full.shape[2]))[:, :, 0]
    hits = np.all(windows == patch, axis=(2, 3, 4))
    return [(int(y), int(x)) for y, x in zip(*np.nonzero(hits), strict=True)]


def _full_pair(path: Path, scale: int) -> tuple[np.ndarray, np.ndarray]:
    hr = mod_crop(read_image(path).pixels, scale)
    return bicubic_downscale(hr, scale), hr


# The 8 symmetries the augmentation can produce, as (hflip, vflip, transpose) applied in that order.
def _transform(a: np.ndarray, hflip: bool, vflip: bool, transpose: bool) -> np.ndarray:
    if hflip:
        a = a[:, ::-1]
    if vflip:
        a = a[::-1]
    if transpose:
        a = a.transpose(1, 0, 2)
    return a


FLAGS = [(h, v, t) for h in (False, True) for v in (False, True) for t in (False, True)]


@pytest.mark.parametrize("scale", [2, 3])
def test_patches_are_aligned_crops_of_the_full_pair(hr_dir: Path, scale: int):
    ds = PairedImages(hr_dir, scale, patch=12, repeat=3)
    assert len(ds) == 6
    fulls = [_full_pair(p, scale) for p in ds.hr_files]
    for i in range(len(ds)):
        lr, hr = ds[i]
        assert lr.dtype == hr.dtype == torch.float32
        assert lr.shape == (3, 12, 12) and hr.shape == (3, 12 * scale, 12 * scale)
        full_lr, full_hr = fulls[i % 2]
        (y, x), *others = _find(_u8(lr), full_lr)
        assert not others
        assert np.array_equal(_u8(hr), full_hr[y * scale : (y + 12) * scale, x * scale : (x + 12) * scale])


def test_augment_transforms_lr_and_hr_alike(hr_dir: Path):
    ds = PairedImages(hr_dir, 2, patch=10, augment=True, repeat=12)
    fulls = [_full_pair(p, 2) for p in ds.hr_files]
    seen = set()
    for i in range(len(ds)):
        lr, hr = (_u8(t) for t in ds[i])
        full_lr, full_hr = fulls[i % 2]
        matches = [(f, yx) for f in FLAGS for yx in _find(lr, np.ascontiguousarray(_transform(full_lr, *f)))]
        assert len(matches) == 1, matches
        flags, (y, x) = matches[0]
        seen.add(flags)
        assert np.array_equal(hr, _transform(full_hr, *flags)[2 * y : 2 * y + 20, 2 * x : 2 * x + 20])
    assert len(seen) >= 4  # 24 draws of 8 equally likely symmetries


def test_items_are_reproducible_and_change_with_epoch_and_seed(hr_dir: Path):
    ds = PairedImages(hr_dir, 2, patch=8, augment=True, repeat=2)
    first = [ds[i] for i in range(len(ds))]
    again = PairedImages(hr_dir, 2, patch=8, augment=True, repeat=2)
    for (lr, hr), (lr2, hr2) in zip(first, (again[i] for i in range(len(again))), strict=True):
        assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    # Repeats of an image are different items: different patches.
    assert not torch.equal(first[0][0], first[2][0])
    ds.set_epoch(1)
    assert ds.epoch == 1
    assert not any(torch.equal(ds[i][1], first[i][1]) for i in range(len(ds)))
    ds.set_epoch(0)
    assert torch.equal(ds[3][1], first[3][1])
    ds.seed = 7
    assert not any(torch.equal(ds[i][1], first[i][1]) for i in range(len(ds)))


def test_batches_do_not_depend_on_the_number_of_workers(hr_dir: Path):
    ds = PairedImages(hr_dir, 2, patch=8, augment=True, repeat=6)
    ds.set_epoch(3)

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = DataLoader(ds, batch_size=3, num_workers=workers, worker_init_fn=seed_worker)
        return list(loader)

    single, parallel = batches(0), batches(2)
    assert len(single) == len(parallel) == 4
    for (lr, hr), (lr2, hr2) in zip(single, parallel, strict=True):
        assert lr.shape == (3, 3, 8, 8) and hr.shape == (3, 3, 16, 16)
        assert torch.equal(lr, lr2) and torch.equal(hr, hr2)


def test_lr_cache_is_written_reused_and_rebuilt(hr_dir: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    ds = PairedImages(hr_dir, 3, cache_dir=cache)
    first = [ds[i] for i in range(len(ds))]
    files = {p.name: p for p in (cache / "X3").iterdir()}
    assert sorted(files) == ["chelsea.png", "coffee.png"]  # no temporary files left behind
    for name, (lr, _) in zip(("chelsea", "coffee"), first, strict=True):
        expected, _ = _full_pair(hr_dir / f"{name}.png", 3)
        assert np.array_equal(read_image(files[f"{name}.png"]).pixels, expected)
        assert np.array_equal(_u8(lr), expected)
    stamps = {name: p.stat().st_mtime_ns for name, p in files.items()}

    # A wrong-size cache file (e.g. left from another HR image) is replaced; a good one is only read.
    write_image(files["coffee.png"], np.zeros((5, 7, 3), np.uint8), overwrite=True)
    stale = files["coffee.png"].stat().st_mtime_ns
    again = PairedImages(hr_dir, 3, cache_dir=cache)
    for (lr, hr), (lr2, hr2) in zip(first, (again[i] for i in range(len(again))), strict=True):
        assert torch.equal(lr, lr2) and torch.equal(hr, hr2)
    assert files["chelsea.png"].stat().st_mtime_ns == stamps["chelsea.png"]
    assert files["coffee.png"].stat().st_mtime_ns != stale
    assert read_image(files["coffee.png"]).pixels.shape == (66, 100, 3)


def test_lr_dir_pairs_by_benchmark_name_or_same_name(hr_dir: Path, tmp_path: Path):
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    # Inverted LR images: proves the files are read, not made again from HR.
    shipped = {}
    for name, file_name in (("chelsea", "chelseax2.png"), ("coffee", "coffee.png")):
        lr, _ = _full_pair(hr_dir / f"{name}.png", 2)
        shipped[name] = 255 - lr
        write_image(lr_dir / file_name, shipped[name])
    ds = PairedImages(hr_dir, 2, lr_dir=lr_dir)
    for i, name in enumerate(("chelsea", "coffee")):
        lr, hr = ds[i]
        assert np.array_equal(_u8(lr), shipped[name])
        assert np.array_equal(_u8(hr), _full_pair(hr_dir / f"{name}.png", 2)[1])

    (lr_dir / "coffee.png").unlink()
    with pytest.raises(ImageError, match="coffeex2.png") as info:
        PairedImages(hr_dir, 2, lr_dir=lr_dir)
    assert "\n" not in str(info.value) and "coffee.png" in str(info.value)


def test_lr_file_of_the_wrong_size_is_an_error(hr_dir: Path, tmp_path: Path):
    lr_dir = tmp_path / "lr"
    lr_dir.mkdir()
    for name in ("chelsea", "coffee"):
        write_image(lr_dir / f"{name}x4.png", _full_pair(hr_dir / f"{name}.png", 2)[0])
    ds = PairedImages(hr_dir, 4, lr_dir=lr_dir)
    with pytest.raises(ImageError, match="chelseax4.png"):
        ds[0]


def test_grayscale_source_gives_three_equal_channels(tmp_path: Path):
    shutil.copy(photo("camera"), tmp_path / "camera.png")
    lr, hr = PairedImages(tmp_path, 4, patch=16)[0]
    assert lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64)
    assert torch.equal(lr[0], lr[1]) and torch.equal(lr[0], lr[2]) and torch.equal(hr[0], hr[2])


def test_sixteen_bit_source_is_scaled_by_65535(tmp_path: Path):
    pixels = read_image(photo("chelsea")).pixels
    write_image(tmp_path / "deep.png", pixels.astype(np.uint16) * 257)
    lr, hr = PairedImages(tmp_path, 2)[0]
    assert lr.dtype == hr.dtype == torch.float32
    expected = torch.from_numpy(mod_crop(pixels, 2).transpose(2, 0, 1) / 255.0).float()
    assert torch.allclose(hr, expected, atol=1e-6)
    assert 0.0 <= float(lr.min()) and float(lr.max()) <= 1.0


def test_images_smaller_than_the_patch_are_left_out_and_none_left_is_an_error(tmp_path: Path, caplog):
    shutil.copy(photo("camera"), tmp_path / "camera.png")  # 128x128: LR 64x64 at x2
    with pytest.raises(ImageError, match="no image in .* is at least 130x130") as info:
        PairedImages(tmp_path, 2, patch=65)
    assert "\n" not in str(info.value)
    assert PairedImages(tmp_path, 2, patch=64)[0][0].shape == (3, 64, 64)
    shutil.copy(photo("coffee"), tmp_path / "coffee.png")  # 300x200
    ds = PairedImages(tmp_path, 2, patch=65)
    assert [p.name for p in ds.hr_files] == ["coffee.png"] and len(ds) == 1
    assert "1 of 2 images are smaller than one 130x130 HR patch" in caplog.text


def test_repeat_lists_every_image_repeat_times(hr_dir: Path):
    ds = PairedImages(hr_dir, 4, repeat=3)
    assert len(ds) == 6
    sizes = [tuple(ds[i][1].shape) for i in range(len(ds))]
    assert sizes == [(3, 148, 224), (3, 200, 300)] * 3
    assert torch.equal(ds[1][0], ds[5][0]) and torch.equal(ds[-1][0], ds[5][0])
    with pytest.raises(IndexError):
        ds[6]


def test_empty_or_missing_hr_folder_is_an_error(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("not an image")
    with pytest.raises(ImageError, match="holds no images"):
        PairedImages(tmp_path, 2)
    with pytest.raises(ImageError, match="does not exist"):
        PairedImages(tmp_path / "missing", 2)


def test_seed_worker_seeds_numpy_and_random_from_torch():
    import random

    torch.manual_seed(1234)
    seed_worker(0)
    a, b = np.random.rand(), random.random()
    torch.manual_seed(1234)
    seed_worker(1)
    assert np.random.rand() == a and random.random() == b
    assert a == np.random.RandomState(1234).rand()


def test_made_lr_matches_the_shipped_set5_files():
    set5 = shared_file("datasets/Set5")
    ds = PairedImages(set5 / "HR", 4)
    assert [p.stem for p in ds.hr_files] == ["baby", "bird", "butterfly", "head", "woman"]
    for i, path in enumerate(ds.hr_files):
        lr, hr = ds[i]
        shipped = read_image(set5 / "LR_bicubic" / "X4" / f"{path.stem}x4.png").pixels
        assert np.array_equal(_u8(lr), shipped), path.name
        assert hr.shape[1:] == (shipped.shape[0] * 4, shipped.shape[1] * 4)

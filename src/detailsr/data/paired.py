"""Paired (LR, HR) training images: a folder of HR images, LR from a folder or made by MATLAB bicubic.

Random crops and flips come from a generator seeded by (seed, epoch, index), not from a process's
global random state, so item i of epoch e is the same patch whatever the number of DataLoader
workers and whichever worker draws it: a training run can be reproduced and resumed exactly.
"""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..choices import READ_EXTENSIONS
from ..errors import ConfigError, ImageError
from ..imageio import read_image, write_image
from ..resize import bicubic_downscale, mod_crop

log = logging.getLogger(__name__)

_MAX_VALUE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
_MASK64 = (1 << 64) - 1


class PairedImages(Dataset):
    """(lr, hr) float32 C x H x W tensors in [0, 1] from the images of `hr_dir`.

    `patch` is the LR patch side (None: whole images); `augment` adds random flips and a transpose;
    `repeat` lists every image that many times (more patches per epoch). Without `lr_dir`, LR images
    are made from the mod-cropped HR with MATLAB-compatible bicubic and kept in memory, and in
    `cache_dir/X{scale}/<stem>.png` when `cache_dir` is given.
    """

    def __init__(
        self,
        hr_dir: str | os.PathLike[str],
        scale: int,
        patch: int | None = None,
        lr_dir: str | os.PathLike[str] | None = None,
        augment: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        repeat: int = 1,
    ) -> None:
        check_settings(scale, patch, repeat)
        self.hr_dir = Path(hr_dir)
        self.scale = scale
        self.patch = patch
        self.augment = augment
        self.repeat = repeat
        self.seed = 0
        self.epoch = 0
        self.hr_files = image_files(self.hr_dir)
        if patch is not None:
            self.hr_files = _large_enough(self.hr_files, patch * scale)
        # Missing LR files are found now, not hours into training.
        self.lr_files = None if lr_dir is None else [_lr_file(Path(lr_dir), p, scale) for p in self.hr_files]
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / f"X{scale}"
        self._lr_cache: dict[int, np.ndarray] = {}

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch so that every epoch draws new patches."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.hr_files) * self.repeat

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} items")
        index %= len(self)
        k = index % len(self.hr_files)
        hr = mod_crop(read_image(self.hr_files[k]).pixels, self.scale)
        lr = self._lr(k, hr)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index))
        if self.patch is not None:
            lr, hr = self._crop(lr, hr, generator, self.hr_files[k])
        if self.augment:
            lr, hr = _augment(lr, hr, generator)
        return chw_tensor(lr), chw_tensor(hr)

    # ------------------------------------------------------------------------------------------ LR

    def _lr(self, k: int, hr: np.ndarray) -> np.ndarray:
        if self.lr_files is not None:
            return self._read_lr(k, hr)
        if k not in self._lr_cache:
            self._lr_cache[k] = self._made_lr(k, hr)
        return self._lr_cache[k]

    def _read_lr(self, k: int, hr: np.ndarray) -> np.ndarray:
        path = self.lr_files[k]
        lr = read_image(path).pixels
        if not _fits(lr, hr, self.scale):
            raise ImageError(
                f"{path} is {lr.shape[1]}x{lr.shape[0]}, not the 1/{self.scale} size of {self.hr_files[k]}"
            )
        return lr

    def _made_lr(self, k: int, hr: np.ndarray) -> np.ndarray:
        if self.cache_dir is None:
            return bicubic_downscale(hr, self.scale)
        path = self.cache_dir / f"{self.hr_files[k].stem}.png"
        if path.is_file():
            cached = read_image(path).pixels
            # A file from an older HR image (or a broken run) has the wrong size or depth: rebuild it.
            if _fits(cached, hr, self.scale) and cached.dtype == hr.dtype:
                return cached
        lr = bicubic_downscale(hr, self.scale)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Atomic: workers building the same file at once, or a killed run, never leave a partial PNG.
        write_image(path, lr, overwrite=True)
        return lr

    # ---------------------------------------------------------------------------------------- crop

    def _crop(
        self, lr: np.ndarray, hr: np.ndarray, generator: torch.Generator, path: Path
    ) -> tuple[np.ndarray, np.ndarray]:
        p, s = self.patch, self.scale
        h, w = lr.shape[:2]
        if h < p or w < p:
            raise ImageError(f"{path}: its LR image ({w}x{h} at x{s}) is smaller than the patch size {p}")
        y = int(torch.randint(0, h - p + 1, (1,), generator=generator))
        x = int(torch.randint(0, w - p + 1, (1,), generator=generator))
        return lr[y : y + p, x : x + p], hr[y * s : (y + p) * s, x * s : (x + p) * s]


def mix_seed(*values: int) -> int:
    """A stable 63-bit seed from integers (splitmix64 steps): unlike hash(), the same in every process."""
    state = 0x9E3779B97F4A7C15
    for value in values:
        state = (state ^ (int(value) & _MASK64)) & _MASK64
        state = (state + 0x9E3779B97F4A7C15) & _MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        state = z ^ (z >> 31)
    return state >> 1


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed numpy and `random` from the worker's torch seed.

    The dataset itself does not need it; it is for code (degradations, user transforms) that draws
    from the global generators, which would otherwise repeat in every worker.
    """
    seed = torch.initial_seed()
    np.random.seed(seed % 2**32)
    random.seed(seed)


def check_settings(scale: int, patch: int | None, repeat: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")
    if patch is not None and (isinstance(patch, bool) or not isinstance(patch, int) or patch < 1):
        raise ConfigError(f"patch must be a positive integer or None, got {patch!r}")
    if isinstance(repeat, bool) or not isinstance(repeat, int) or repeat < 1:
        raise ConfigError(f"repeat must be a positive integer, got {repeat!r}")


def image_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImageError(f"HR folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READ_EXTENSIONS)
    if not files:
        raise ImageError(f"HR folder {folder} holds no images ({' '.join(sorted(READ_EXTENSIONS))})")
    return files


def _large_enough(files: list[Path], side: int) -> list[Path]:
    """The images with both sides >= `side` (a patch cannot be cut from the others); header reads only."""
    from PIL import Image

    def size(path: Path) -> tuple[int, int]:
        try:
            with Image.open(path) as img:
                return img.size
        except (OSError, ValueError) as e:
            raise ImageError(f"{path} is not a readable image: {e}") from None

    kept = [p for p in files if min(size(p)) >= side]
    if not kept:
        raise ImageError(f"no image in {files[0].parent} is at least {side}x{side} pixels, "
                         f"the HR size of one training patch")
    if len(kept) < len(files):
        log.warning("%s: %d of %d images are smaller than one %dx%d HR patch and are left out",
                    files[0].parent, len(files) - len(kept), len(files), side, side)
    return kept


def _lr_file(lr_dir: Path, hr_path: Path, scale: int) -> Path:
    """`<stem>x{scale}.png` as the benchmark sets ship it, else the HR file's own name."""
    candidates = (lr_dir / f"{hr_path.stem}x{scale}.png", lr_dir / hr_path.name)
    for path in candidates:
        if path.is_file():
            return path
    raise ImageError(f"no LR image for {hr_path}: expected {candidates[0]} or {candidates[1]}")


def _fits(lr: np.ndarray, hr: np.ndarray, scale: int) -> bool:
    return lr.shape[0] * scale == hr.shape[0] and lr.shape[1] * scale == hr.shape[1]


def _augment(lr: np.ndarray, hr: np.ndarray, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Horizontal flip, vertical flip and transpose, each with p = 0.5, the same on LR and HR."""
    hflip, vflip, transpose = (bool(b) for b in torch.rand(3, generator=generator) < 0.5)
    for flag, op in ((hflip, _hflip), (vflip, _vflip), (transpose, _transpose)):
        if flag:
            lr, hr = op(lr), op(hr)
    return lr, hr


def _hflip(a: np.ndarray) -> np.ndarray:
    return a[:, ::-1]


def _vflip(a: np.ndarray) -> np.ndarray:
    return a[::-1]


def _transpose(a: np.ndarray) -> np.ndarray:
    return a.transpose(1, 0, 2)


def chw_tensor(pixels: np.ndarray) -> torch.Tensor:
    """H x W x C uint8/uint16 (any strides) -> C x H x W float32 in [0, 1]."""
    scaled = pixels.astype(np.float32) / np.float32(_MAX_VALUE[pixels.dtype])
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))

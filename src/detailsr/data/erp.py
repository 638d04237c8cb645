"""360-degree training data of the ODI task: equirectangular (ERP) panoramas, their fisheye LR, patches.

`erp_downsample_fisheye` is the degradation the ODI-SR datasets were made with (spec arch-camixer.md
§12.1): each hemisphere is re-projected to a polar "fisheye" image, that is downscaled with Pillow's
bicubic, and the LR panorama is read back from the two small fisheyes. It follows the spec operation
by operation (float32 throughout, the same 8-bit truncations) so that it gives the official LR images
bit for bit. `ERPPatches` cuts training patches from whole panoramas (§12.2-12.3) together with the
latitude condition of the ODI models and the panorama row that `ws_l1_loss` weighs by.

An ERP panorama is width = 2 x height, row 0 the north pole, columns the longitude from -180 degrees.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from ..errors import ConfigError, ImageError
from ..imageio import read_image, write_image
from ..models.camixersr import latitude_condition, pixel_centres
from .paired import check_settings, chw_tensor, image_files, mix_seed

# The fisheye disc has radius 1.25 with the equator at 1: it reaches 22.5 degrees into the other
# hemisphere, so the bicubic downscale near the equator has real pixels on both sides.
_EXPAND = 1.25
# Fisheye side = ERP rows x 1.5 x 1.25 (1920 for 1024 rows): enough pixels along the equator circle.
_FISHEYE_PER_ROW = 1.5


# ------------------------------------------------------------------------------------- degradation


def erp_downsample_fisheye(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """The ODI fisheye degradation (§12.1): (3, h, w) RGB float in [0, 1] -> (3, h//s, w//s) float32.

    Computed on the CPU in float32 (other float dtypes are converted first), returned on `hr`'s device,
    clamped to [0, 1]. The HR is cropped to multiples of `scale`; the fisheye size comes from the
    uncropped height, as in the official code.
    """
    _check_scale(scale)
    image = _checked_erp(hr, scale)
    h, w = image.shape[1:]
    image = image[:, : h // scale * scale, : w // scale * scale]
    side = round(h * _FISHEYE_PER_ROW * _EXPAND)
    south, north = _fisheyes(image, side)
    south, north = (_pillow_bicubic(f, side // scale) for f in (south, north))
    lr = _erp_from_fisheyes(north, south, h // scale, w // scale)
    return lr.clamp_(0, 1).to(hr.device)


def erp_lr_image(hr_uint8: np.ndarray, scale: int) -> np.ndarray:
    """H x W x 3 uint8 RGB panorama -> its fisheye LR, uint8, truncated as the dataset scripts store it.

    In: torchvision `ToTensor` (x / 255 in float32). Out: `ToPILImage` (x * 255, then truncation,
    not rounding), which is what the official LR_fisheye PNG files hold.
    """
    if not isinstance(hr_uint8, np.ndarray):
        raise ImageError(f"erp_lr_image needs an H x W x 3 uint8 RGB array, got {type(hr_uint8).__name__}")
    if hr_uint8.dtype != np.uint8 or hr_uint8.ndim != 3 or hr_uint8.shape[2] != 3:
        raise ImageError(f"erp_lr_image needs an H x W x 3 uint8 RGB array, got {hr_uint8.dtype} {hr_uint8.shape}")
    hr = torch.from_numpy(np.array(hr_uint8)).permute(2, 0, 1).float().div(255)  # a copy: inputs may be read-only
    lr = erp_downsample_fisheye(hr, scale)
    return lr.mul(255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def _check_scale(scale: int) -> None:
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")


def _checked_erp(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """`hr` as a float32 CPU tensor, after checking it is a (3, h, w) float image of at least s x s."""
    if not isinstance(hr, torch.Tensor) or hr.ndim != 3 or hr.shape[0] != 3 or not hr.is_floating_point():
        described = f"{hr.dtype} {tuple(hr.shape)}" if isinstance(hr, torch.Tensor) else type(hr).__name__
        raise ImageError(f"the ERP degradation needs a (3, h, w) float RGB tensor in [0, 1], got {described}")
    if hr.shape[1] < scale or hr.shape[2] < scale:
        raise ImageError(f"a {hr.shape[2]}x{hr.shape[1]} panorama is too small to downscale by {scale}")
    return hr.detach().to(device="cpu", dtype=torch.float32)


def _fisheyes(image: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The (south, north) polar fisheyes (3, side, side) of an ERP image: pole at the centre, black corners."""
    c = pixel_centres(side)
    g = torch.stack(torch.meshgrid(c, c, indexing="ij"), -1)
    gy, gx = g[..., 0], g[..., 1]
    rho = torch.sqrt(gy**2 + gx**2) * _EXPAND
    # atan2 on these strided views, not on contiguous or expanded copies: those take another CPU code
    # path that differs by 1 ulp, which changes ~0.1 % of the truncated LR values (spec §12.1 step 3).
    theta = torch.atan2(gy, gx)
    inside = rho <= _EXPAND
    column = theta / math.pi
    # South fisheye: centre = bottom ERP row, rho = 1 the equator; north: mirrored latitude.
    return tuple(
        torch.where(inside, _sample(image, torch.stack((column, sign * (1 - rho)), -1)), 0.0)
        for sign in (1, -1)
    )


def _pillow_bicubic(fisheye: torch.Tensor, side: int) -> torch.Tensor:
    """Pillow's 8-bit bicubic downscale, via `ToPILImage` (truncating) and back via `ToTensor` (/ 255)."""
    pixels = fisheye.mul(255).to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    # Pillow itself, not a float bicubic: its fixed-point 8-bit passes round and clip between them.
    small = Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.array(small)).permute(2, 0, 1).float().div(255)


def _erp_from_fisheyes(north: torch.Tensor, south: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The (3, rows, cols) ERP read back from the LR fisheyes: north for the top half, south below."""
    y, x = pixel_centres(rows), pixel_centres(cols)
    half = rows // 2
    theta = x * math.pi
    cos_t, sin_t = torch.cos(theta), torch.sin(theta)
    top = _polar_lookup(north, (1 + y[:half]) / _EXPAND, cos_t, sin_t)
    bottom = _polar_lookup(south, (1 - y[half:]) / _EXPAND, cos_t, sin_t)
    return torch.cat((top, bottom), dim=1)


def _polar_lookup(
    fisheye: torch.Tensor, radius: torch.Tensor, cos_t: torch.Tensor, sin_t: torch.Tensor
) -> torch.Tensor:
    """Sample `fisheye` at every (radius[r], angle[q]): a (3, len(radius), len(angle)) image."""
    r = radius[:, None]
    return _sample(fisheye, torch.stack((r * cos_t, r * sin_t), -1))


def _sample(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of (3, h, w) `image` at grid (..., 2) = (column, row) in [-1, 1], zero outside."""
    out = F.grid_sample(image[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0]


# ----------------------------------------------------------------------------------------- dataset


class ERPPatches(Dataset):
    """Training patches of whole ERP panoramas with their fisheye LR and latitude (§12.2-12.3).

    Every image of `hr_dir` (8-bit) is resized to `erp_size` = (rows, cols) with Pillow's bilinear, as
    the ODI scripts do, and its LR is made with `erp_lr_image` (kept in memory, and in
    `cache_dir/X{scale}/<stem>.png` when `cache_dir` is given). An item is a dict: "lr" (3, p, p) and
    "hr" (3, p*s, p*s) float32 in [0, 1], "condition" (1, p, p) the cos-latitude of the patch's rows
    in the whole LR panorama, "top" the panorama (HR) row of the patch's first row and "erp_rows" the
    panorama's rows (both int64 scalars, what `ws_l1_loss` takes). `patch` is the LR side; `augment`
    adds a random horizontal flip (no rotation or vertical flip: they would move the latitude).
    """

    def __init__(
        self,
        hr_dir: str | os.PathLike[str],
        scale: int,
        patch: int,
        erp_size: tuple[int, int] = (1024, 2048),
        cache_dir: str | os.PathLike[str] | None = None,
        augment: bool = True,
        repeat: int = 1,
    ) -> None:
        if patch is None:
            raise ConfigError("ERPPatches needs a patch size: whole panoramas are not batched for training")
        check_settings(scale, patch, repeat)
        self.erp_size = _checked_erp_size(erp_size)
        self.hr_dir = Path(hr_dir)
        self.scale = scale
        self.patch = patch
        self.augment = augment
        self.repeat = repeat
        self.seed = 0
        self.epoch = 0
        self.hr_files = image_files(self.hr_dir)
        self.lr_size = (self.erp_size[0] // scale, self.erp_size[1] // scale)
        # Known from the settings alone: fail now, not at the first batch.
        if min(self.lr_size) < patch:
            raise ImageError(
                f"{self.hr_dir}: at erp_size {self.erp_size} (rows, cols) the x{scale} LR panoramas are "
                f"{self.lr_size} (rows, cols), smaller than the patch size {patch}"
            )
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / f"X{scale}"
        self._lr_cache: dict[int, np.ndarray] = {}
        # Latitude is absolute in the panorama: patches slice this one full-ERP map (§12.3 step 4).
        self._condition = latitude_condition(*self.lr_size)[0]

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch so that every epoch draws new patches."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.hr_files) * self.repeat

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} items")
        index %= len(self)
        k = index % len(self.hr_files)
        hr = self._hr(k)
        lr = self._lr(k, hr)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, index))
        p, s = self.patch, self.scale
        y = int(torch.randint(0, self.lr_size[0] - p + 1, (1,), generator=generator))
        x = int(torch.randint(0, self.lr_size[1] - p + 1, (1,), generator=generator))
        lr, hr = lr[y : y + p, x : x + p], hr[y * s : (y + p) * s, x * s : (x + p) * s]
        # A mirrored panorama is still a panorama; the condition is constant along rows, so it stays.
        if self.augment and bool(torch.rand(1, generator=generator) < 0.5):
            lr, hr = lr[:, ::-1], hr[:, ::-1]
        return {
            "lr": chw_tensor(lr),
            "hr": chw_tensor(hr),
            # A copy: a view would carry the whole map's storage into every batch.
            "condition": self._condition[:, y : y + p, x : x + p].clone(),
            "top": torch.tensor(y * s, dtype=torch.int64),
            "erp_rows": torch.tensor(self.erp_size[0], dtype=torch.int64),
        }

    # ------------------------------------------------------------------------------------- images

    def _hr(self, k: int) -> np.ndarray:
        path = self.hr_files[k]
        pixels = read_image(path).pixels
        if pixels.dtype != np.uint8:
            raise ImageError(
                f"{path}: is {8 * pixels.dtype.itemsize}-bit; ERP training needs 8-bit images "
                "(the ODI degradation works on 8-bit data)"
            )
        return _resize_erp(_rgb(pixels), self.erp_size)

    def _lr(self, k: int, hr: np.ndarray) -> np.ndarray:
        if k not in self._lr_cache:
            self._lr_cache[k] = self._made_lr(k, hr)
        return self._lr_cache[k]

    def _made_lr(self, k: int, hr: np.ndarray) -> np.ndarray:
        if self.cache_dir is None:
            return erp_lr_image(hr, self.scale)
        path = self.cache_dir / f"{self.hr_files[k].stem}.png"
        if path.is_file():
            cached = read_image(path).pixels
            # A file made for another erp_size (or by a broken run) has the wrong size: rebuild it.
            if cached.shape[:2] == self.lr_size and cached.dtype == np.uint8:
                return cached
        lr = erp_lr_image(hr, self.scale)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        # Atomic: workers building the same file at once, or a killed run, never leave a partial PNG.
        write_image(path, lr, overwrite=True)
        return lr


def _checked_erp_size(erp_size: tuple[int, int]) -> tuple[int, int]:
    """(rows, cols) with cols = 2 x rows: also catches a (width, height) pair given the other way round."""
    try:
        rows, cols = erp_size
    except (TypeError, ValueError):
        raise ConfigError(f"erp_size must be (rows, cols), got {erp_size!r}") from None
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in (rows, cols)) or cols != 2 * rows:
        raise ConfigError(f"erp_size must be (rows, cols) of an ERP panorama, cols = 2 x rows, got {erp_size!r}")
    return rows, cols


def _rgb(pixels: np.ndarray) -> np.ndarray:
    """H x W x 3: grey is repeated, an alpha channel dropped (read_image already does both; kept for arrays)."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        return np.repeat(pixels, 3, axis=2)
    return pixels[:, :, :3]


def _resize_erp(pixels: np.ndarray, erp_size: tuple[int, int]) -> np.ndarray:
    """Pillow bilinear (antialiased) to (rows, cols), as torchvision `Resize` on a PIL image (§12.2)."""
    rows, cols = erp_size
    if pixels.shape[:2] == (rows, cols):
        return pixels
    resized = Image.fromarray(np.ascontiguousarray(pixels)).resize((cols, rows), Image.Resampling.BILINEAR)
    return np.array(resized)  # writable, unlike np.asarray of a Pillow image

"""Benchmark evaluation: the papers' protocol on a dataset folder, image by image.

A dataset folder holds `HR/` and optionally `LR_bicubic/X{s}/{name}x{s}.png`. HR images are
mod-cropped to the scale; LR files are used where shipped, else made from the mod-cropped HR with
MATLAB-compatible bicubic. The SR image goes through the same inference path as `upscale`, is
rounded to 8 bit, and compared on the protocol's channels.

The 360° protocol `ws` (spec arch-camixer.md §12) takes ERP panoramas: `HR/`, or a folder that is
the panoramas themselves (like ../shared/datasets/ODI). Its LR is the folder's
`LR_fisheye/X{s}/{name}.png` (the ODI-SR layout) or `LR_bicubic` file where there is one, else the
ODI fisheye degradation of the HR panorama (`data.erp.erp_lr_image`, §12.1: made from the uncropped
HR, truncated to 8 bit as the dataset scripts store it), and the HR is cropped top-left to s x the
LR size, as the ODI test set does. Panoramas are taken at their own size: the ODI scripts resize to
2048x1024 only to make LR files, a no-op for the ODI-SR test images. The LR goes through the
network whole, with the cos-latitude condition of the whole panorama for CAMixerOSR
(`SRNetwork.condition_for`); CAMixerOSR needs LR sides that are multiples of 16 (2048x1024 at x2/x4
and every ../shared ODI panorama at x2/x4 give such sizes), other sizes are padded bottom/right by
replication, image and condition alike, and the output cropped back (`inference.forward_any_size`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .choices import PROTOCOLS, READ_EXTENSIONS
from .errors import ConfigError, ImageError
from .flops import executed_macs
from .imageio import from_tensor, read_image, to_tensor, write_image
from .inference import ratio_setting, run
from .metrics import evaluate
from .models.base import SRNetwork
from .models.record import attended_window_share, mixer_records
from .precision import cast_network, precision_guard
from .resize import bicubic_downscale, mod_crop


@dataclass
class ImageResult:
    psnr: float
    ssim: float
    gflops: float
    seconds: float
    extra: dict[str, float] = field(default_factory=dict)  # e.g. ws_psnr / ws_ssim


@dataclass
class DatasetResult:
    name: str
    images: dict[str, ImageResult]

    def mean(self, key: str) -> float:
        return float(np.mean([getattr(r, key) for r in self.images.values()]))


def hr_files(folder: Path, protocol: str = "y") -> list[Path]:
    """The HR images of a dataset folder, sorted: those in `HR/`; for the `ws` protocol a folder
    without `HR/` is itself the folder of HR panoramas (its image files, not its sub-folders)."""
    hr = folder / "HR"
    if not hr.is_dir():
        if protocol != "ws":
            raise ImageError(f"dataset folder {folder} has no HR/ folder")
        if not folder.is_dir():
            raise ImageError(f"dataset folder {folder} does not exist")
        hr = folder
    files = sorted(p for p in hr.iterdir()
                   if p.is_file() and p.suffix.lower() in READ_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise ImageError(f"{hr} holds no images")
    return files


def load_pair(hr_path: Path, folder: Path, scale: int, protocol: str = "y") -> tuple[np.ndarray, np.ndarray]:
    """(LR, mod-cropped HR) as 8-bit RGB arrays; `ws`: the LR of an ERP panorama (see the module doc)."""
    full = _rgb8(hr_path)
    hr = mod_crop(full, scale)
    lr_path = _lr_file(hr_path, folder, scale, protocol)
    if lr_path is not None:
        lr = _rgb8(lr_path)
        if lr.shape[0] * scale != hr.shape[0] or lr.shape[1] * scale != hr.shape[1]:
            raise ImageError(f"{lr_path} is {lr.shape[1]}x{lr.shape[0]}, not HR/{scale} of {hr_path}")
    elif protocol == "ws":
        lr = _erp_lr(full, scale, hr_path)
    else:
        lr = bicubic_downscale(hr, scale)
    return lr, hr


def _lr_file(hr_path: Path, folder: Path, scale: int, protocol: str) -> Path | None:
    """The folder's LR file of `hr_path`, None when there is none: `LR_bicubic/X{s}/{name}x{s}.ext`,
    and for `ws` first `LR_fisheye/X{s}/{name}.png` (the ODI-SR datasets' name)."""
    candidates = [folder / "LR_bicubic" / f"X{scale}" / f"{hr_path.stem}x{scale}{hr_path.suffix}"]
    if protocol == "ws":
        candidates.insert(0, folder / "LR_fisheye" / f"X{scale}" / f"{hr_path.stem}.png")
    return next((p for p in candidates if p.is_file()), None)


def _erp_lr(full: np.ndarray, scale: int, path: Path) -> np.ndarray:
    """The ODI fisheye LR of an uncropped ERP panorama (its fisheye size follows the uncropped height)."""
    from .data.erp import erp_lr_image  # torch.utils.data and the ODI model's helpers: only when needed

    if full.shape[0] < scale or full.shape[1] < scale:
        raise ImageError(f"{path} is {full.shape[1]}x{full.shape[0]}, too small to downscale by {scale}")
    return erp_lr_image(full, scale)


def _rgb8(path: Path) -> np.ndarray:
    pixels = read_image(path).pixels
    if pixels.dtype != np.uint8:
        raise ImageError(f"{path} is not an 8-bit image; the benchmark protocol is defined on 8 bit")
    return pixels


def evaluate_folder(
    net: SRNetwork,
    folder: Path,
    scale: int,
    ratio: float | None = None,
    protocol: str = "y",
    tile: int | None = None,
    tile_overlap: int = 16,
    blend: str = "feather",
    save_dir: Path | None = None,
    on_image: Callable[[str], None] | None = None,
    files: Sequence[Path] | None = None,
    precision: str | None = None,
) -> DatasetResult:
    """Scores of every HR image of `folder` (or of `files`, HR images of it, in their order).

    protocol "ws": ERP panoramas, LR made with the ODI degradation where the folder has none, and
    a folder without `HR/` taken as the panoramas themselves (see the module doc).

    precision: "fp32", "fp16" or "bf16" (see `inference.run`); None: the network's own dtype.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if net.scale != scale:
        raise ConfigError(f"the model upscales by {net.scale}, not {scale}")
    net = cast_network(net, precision)  # once for the folder, not per image
    results = {}
    costs: dict[tuple, float] = {}
    with ratio_setting(net, ratio):
        for hr_path in hr_files(folder, protocol) if files is None else files:
            lr, hr = load_pair(hr_path, folder, scale, protocol)
            x = to_tensor(lr)
            start = time.perf_counter()
            y = run(net, x, tile=tile, tile_overlap=tile_overlap, blend=blend)
            seconds = time.perf_counter() - start
            sr = from_tensor(y, np.uint8)
            scores = evaluate(sr, hr, scale, protocol)
            gflops = _executed_gflops(net, x, tile, costs)
            extra = {k: v for k, v in scores.items() if k not in ("psnr", "ssim")}
            if tile is None and (share := attended_window_share(net)) is not None:
                extra["attended"] = share  # of the windows, over CAMixer's mixers
            results[hr_path.name] = ImageResult(scores["psnr"], scores["ssim"], gflops, seconds, extra)
            if save_dir is not None:
                (save_dir / folder.name).mkdir(parents=True, exist_ok=True)
                write_image(save_dir / folder.name / f"{hr_path.stem}.png", sr, overwrite=True)
            if on_image is not None:
                on_image(hr_path.name)
    return DatasetResult(folder.name, results)


def _executed_gflops(net: SRNetwork, x, tile: int | None, cache: dict) -> float:
    """Executed GFLOPs of the whole-image path on `x` (tiles re-route each tile; not followed).

    Counting runs the network once more; the count depends only on the input size and on how
    many windows each mixer attended, so it is reused for inputs that agree on both.
    """
    key = (tuple(x.shape), routing_signature(net)) if tile is None else None
    if key is None or key not in cache:
        p = next(net.parameters())
        with precision_guard(net):
            value = 2 * executed_macs(net, x.to(p.device, p.dtype)) / 1e9
        if key is None:
            return value
        cache[key] = value
    return cache[key]


def routing_signature(net: SRNetwork) -> tuple:
    """What each content-aware mixer routed to its expensive path in the last forward."""
    return tuple(r.signature() for r in mixer_records(net, routed_only=True))



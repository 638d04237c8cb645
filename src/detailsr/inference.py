"""Running a network on real images: any size, tiling with blended overlaps, any input kind.

`net(x)` stays the official network forward. What the test pipelines add lives here: padding of
inputs the network cannot take (smaller than its minimum, or not a multiple it needs) and tiling.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .choices import BLENDS
from .errors import ConfigError
from .imageio import from_tensor, to_tensor
from .models.base import SRNetwork
from .models.layers import pad_to_multiple
from .precision import REDUCED, cast_network, precision_guard

log = logging.getLogger(__name__)


def upscale(
    img: Any,
    net: SRNetwork,
    ratio: float | None = None,
    tile: int | None = None,
    tile_overlap: int = 16,
    blend: str = "feather",
    progress: bool = False,
    outscale: float | None = None,
    precision: str | None = None,
    max_memory: int | None = None,
    panorama: bool = False,
) -> Any:
    """Super-resolve `img` with `net`; the result is of the same kind as the input.

    img: PIL image, numpy array (H x W [x C], uint8 or uint16; a 4th channel is alpha, upscaled
    separately with bicubic), or float tensor (C x H x W or N x C x H x W, in [0, 1]).
    tile: LR tile side (None: whole image); tile_overlap: LR pixels shared by neighbouring tiles;
    blend: "feather" (linear ramps across overlaps) or "average" (the official large-image test).
    outscale: the final scale (None: the network's); the network's output is resized to it (see
    `resize_output`), e.g. 2 or 3.5 with a x4 network.
    precision: "fp32", "fp16" or "bf16" (see `run`); None: the network's own dtype.
    max_memory: bytes for the network's working set on images (arrays, PIL): without `tile`, a
    tile is chosen to fit, and on the CPU to keep a feature map in the cache (`tiling.plan_tile`; a
    network that needs the whole image refuses an image that does not fit). Tiled images are
    streamed into the integer output, never held in float.
    panorama: the image is a 360° panorama (e.g. ERP) whose left and right edges meet: it is padded
    with wrap-around context on both sides before the network (and tiling) and cropped after, so
    the output has no seam at the ±180° meridian (see `panorama_padding`). Alpha is wrapped too.
    """
    if outscale is not None and not 0 < outscale < float("inf"):
        raise ConfigError(f"outscale must be a positive number, got {outscale}")
    run_args = dict(ratio=ratio, tile=tile, tile_overlap=tile_overlap, blend=blend, progress=progress,
                    precision=precision, panorama=panorama)
    if isinstance(img, torch.Tensor):
        if max_memory is not None:
            raise ConfigError("max_memory applies to images (arrays, PIL); for tensors choose tile=")
        return _upscale_tensor(img, net, outscale, run_args)
    run_args["max_memory"] = max_memory
    if isinstance(img, np.ndarray):
        return _upscale_array(img, net, outscale, run_args)
    from PIL import Image

    if isinstance(img, Image.Image):
        return _upscale_pil(img, net, outscale, run_args)
    raise TypeError(f"upscale takes a PIL image, numpy array or tensor, not {type(img).__name__}")


def _upscale_tensor(x, net, outscale, run_args):
    batched = x.dim() == 4
    x = x if batched else x[None]
    if x.dim() != 4 or x.shape[1] != 3:
        raise ConfigError(f"expected a 3-channel image tensor (N x 3 x H x W), got shape {tuple(x.shape)}")
    y = run(net, x.float(), **run_args)
    if outscale is not None:
        size = output_size(x.shape[-2:], outscale)
        y = torch.stack([torch.from_numpy(resize_output(i.permute(1, 2, 0).numpy(), *size)).permute(2, 0, 1)
                         for i in y]).clamp_(0, 1)
    return y if batched else y[0]


def _upscale_array(a, net, outscale, run_args):
    if a.dtype not in (np.uint8, np.uint16):
        raise ConfigError(f"expected a uint8 or uint16 image array, got {a.dtype}")
    gray = a.ndim == 2 or a.shape[2] in (1, 2)
    a = a[:, :, None] if a.ndim == 2 else a
    colour = np.repeat(a[:, :, :1], 3, axis=2) if gray else a[:, :, :3]
    alpha = a[:, :, -1:] if a.shape[2] in (2, 4) else None
    y = _upscale_colour(colour, net, **run_args)
    if gray:
        y = y[:, :, :1]
    if alpha is not None:
        y = np.concatenate([y, upscale_alpha(alpha[:, :, 0], net.scale, run_args["panorama"])[:, :, None]], axis=2)
    if outscale is not None:
        y = resize_output(y, *output_size(a.shape[:2], outscale))
    return y[:, :, 0] if a.shape[2] == 1 and y.shape[2] == 1 else y


def _upscale_colour(colour: np.ndarray, net: SRNetwork, max_memory: int | None, **run_args) -> np.ndarray:
    """H x W x 3 integers -> the network's output as integers of the same type; tiles (given, or
    planned from `max_memory`) are streamed into the output."""
    from .tiling import plan_tile, streamed_tiles

    h, w = colour.shape[:2]
    left, right = panorama_padding(net, w) if run_args["panorama"] else (0, 0)
    tile = run_args["tile"]
    if tile is None and max_memory is not None:
        tile = plan_tile(net, h, w + left + right, max_memory, run_args["tile_overlap"])
        if tile is not None:
            log.debug("tiles of %d px for a %dx%d image within %d MiB", tile, w, h, max_memory >> 20)
    if tile is None or (tile >= h and tile >= w + left + right):
        return from_tensor(run(net, to_tensor(colour), **{**run_args, "tile": None}), colour.dtype)
    check_tiling(tile, run_args["tile_overlap"], run_args["blend"])
    if not net.tile_safe:
        log.warning("%s looks at the whole image (global statistics); tiles of %d px change its "
                    "output everywhere, not only near tile borders; prefer larger tiles", net.arch, tile)
    net = cast_network(net, run_args["precision"])
    # The tiles cover the wrapped image, so the tiles at the meridian see the other side.
    x = wrap_pad(to_tensor(colour), left, right).to(next(net.parameters()).dtype)
    with ratio_setting(net, run_args["ratio"]), precision_guard(net):
        y = streamed_tiles(net, x, tile, run_args["tile_overlap"], run_args["blend"], colour.dtype,
                           run_args["progress"], net.condition_for(x))
    s = net.scale
    return np.ascontiguousarray(y[:, left * s : (left + w) * s]) if left or right else y


def _upscale_pil(img, net, outscale, run_args):
    from PIL import Image

    mode = img.mode
    if mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in mode or "transparency" in img.info else "RGB")
    return Image.fromarray(_upscale_array(np.asarray(img), net, outscale, run_args))


def output_size(lr_size, outscale: float) -> tuple[int, int]:
    """(height, width) of an LR image of `lr_size` scaled by `outscale`, rounded, at least 1."""
    h, w = lr_size
    return max(1, round(h * outscale)), max(1, round(w * outscale))


def resize_output(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """A network output (H x W x C: uint8, uint16 or float) resized to height x width.

    Area averaging to shrink (every input pixel weighs in: no aliasing), Lanczos (8 x 8 taps) to
    enlarge; integer results saturate at the type's range.
    """
    if a.shape[:2] == (height, width):
        return a
    shrink = height * width < a.shape[0] * a.shape[1]
    resized = cv2.resize(a, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)
    return resized.reshape(height, width, a.shape[2])


def upscale_alpha(alpha: np.ndarray, scale: int, panorama: bool = False) -> np.ndarray:
    """Bicubic upscaling of an alpha channel (H x W, uint8/uint16), clipped to the dtype's range.

    panorama: the left and right edges meet; 2 columns of wrap-around (the bicubic support) are
    added on each side before upscaling and cropped after.
    """
    peak = np.iinfo(alpha.dtype).max
    t = torch.from_numpy(alpha.astype(np.float32))[None, None]
    pad = 2 if panorama else 0
    y = F.interpolate(wrap_pad(t, pad, pad), scale_factor=scale, mode="bicubic", align_corners=False)[0, 0]
    y = y[:, pad * scale : y.shape[1] - pad * scale]
    return np.clip(np.floor(y.numpy() + 0.5), 0, peak).astype(alpha.dtype)


# LR columns of wrap-around context on each side of a panorama: two 16-pixel attention windows.
# Measured with CAMixerSR-S x4 on park_360sr at 128x64 and 256x128: with 8, 16, 32 or 64 columns the
# output of the panorama rolled by half its width equals the rolled output up to a mean of 0.02-0.08
# 8-bit levels; what remains comes from image-global steps (the predictor's statistics, which windows
# rank among the top K), not from the width of the context.
PANORAMA_CONTEXT = 32


def panorama_padding(net: SRNetwork, width: int) -> tuple[int, int]:
    """(left, right) LR columns of wrap-around context that `upscale(..., panorama=True)` adds.

    `PANORAMA_CONTEXT` on each side, the right side rounded up so that the padded width is a
    multiple of the network's window (16) and of the sizes it or its test pipeline need: no
    reflect or replicate padding then falls next to the image, and the window grid of a panorama
    rolled by a multiple of 16 columns is the same.
    """
    if width < 1:
        raise ConfigError(f"a panorama needs at least one column, got width {width}")
    multiple = math.lcm(16, net.size_multiple, net.pipeline_multiple)
    left = PANORAMA_CONTEXT
    return left, PANORAMA_CONTEXT + (-(width + 2 * PANORAMA_CONTEXT)) % multiple


def wrap_pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """(..., H, W) -> (..., H, left + W + right): columns continued around a 360° image (circular).

    Indexing modulo W, so the context may be wider than the image itself (it then repeats).
    """
    if left == 0 and right == 0:
        return x
    w = x.shape[-1]
    columns = torch.arange(-left, w + right, device=x.device) % w
    return x.index_select(-1, columns)


@torch.inference_mode()
def run(
    net: SRNetwork,
    x: torch.Tensor,
    ratio: float | None = None,
    tile: int | None = None,
    tile_overlap: int = 16,
    blend: str = "feather",
    progress: bool = False,
    precision: str | None = None,
    panorama: bool = False,
) -> torch.Tensor:
    """N x 3 x H x W float in [0, 1] -> N x 3 x sH x sW, clamped to [0, 1].

    precision: "fp32", "fp16" or "bf16": the network (a cast copy where its weights have another
    dtype; see `cast_network`) and the input run in it, and a reduced-precision output comes back
    as float32 before clamping. None: the network's own dtype.
    panorama: pad with wrap-around columns (`panorama_padding`) before the network and tiles, crop
    after. A network's condition (CAMixerOSR's latitude) is computed for the whole image, padded or
    not; the cos-latitude of a row does not depend on the width.
    """
    check_tiling(tile, tile_overlap, blend)
    device = next(net.parameters()).device
    net = cast_network(net, precision)
    left, right = panorama_padding(net, x.shape[-1]) if panorama else (0, 0)
    width = x.shape[-1]
    with ratio_setting(net, ratio), precision_guard(net):
        x = wrap_pad(x, left, right).to(next(net.parameters()).dtype)
        h, w = x.shape[-2:]
        condition = net.condition_for(x)
        if tile is None or (tile >= h and tile >= w):
            y = forward_any_size(net, x.to(device), _to(condition, device))
        else:
            if not net.tile_safe:
                log.warning("%s looks at the whole image (global statistics); tiles of %d px change its "
                            "output everywhere, not only near tile borders; prefer larger tiles", net.arch, tile)
            y = _tiled(net, x, condition, tile, tile_overlap, blend, progress, device)
    if left or right:
        y = y[..., left * net.scale : (left + width) * net.scale].contiguous()
    if y.dtype in REDUCED:
        y = y.float()
    return y.clamp_(0, 1).cpu()


def check_tiling(tile: int | None, tile_overlap: int, blend: str) -> None:
    if blend not in BLENDS:
        raise ConfigError(f"unknown blend {blend!r}; expected one of {', '.join(BLENDS)}")
    if tile is not None and tile < 1:
        raise ConfigError(f"tile must be a positive number of pixels, got {tile}")
    if tile_overlap < 0:
        raise ConfigError(f"tile overlap must not be negative, got {tile_overlap}")
    if tile is not None and tile <= tile_overlap:
        raise ConfigError(f"tile {tile} must be larger than the tile overlap {tile_overlap}")


@contextlib.contextmanager
def ratio_setting(net: SRNetwork, ratio: float | None) -> Iterator[None]:
    """Use `ratio` for this call only."""
    if ratio is None:
        yield
        return
    if not net.content_aware:
        raise ConfigError(f"{net.arch} has no ratio (it is not content-aware)")
    before = net.current_ratio()
    net.set_ratio(ratio)
    try:
        yield
    finally:
        net.set_ratio(before)


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device)


def forward_any_size(net: SRNetwork, x: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
    """`net(x)` for any H, W >= 1, as the official test pipeline runs it, cropped back.

    Inputs below the network's minimum are first replicate-padded up to it (reflection needs a
    side longer than the pad); then the pipeline's reflect padding and the network's multiple apply.
    A `condition` map (see `SRNetwork.condition_for`) is padded alongside by replication.
    """
    h, w = x.shape[-2:]
    small_h, small_w = max(net.min_size - h, 0), max(net.min_size - w, 0)
    if small_h or small_w:
        x = F.pad(x, (0, small_w, 0, small_h), mode="replicate")
    x = _pad_to(x, net.pipeline_multiple, "reflect")
    x = _pad_to(x, net.size_multiple, "replicate")
    if condition is None:
        y = net(x)
    else:
        ph, pw = x.shape[-2] - h, x.shape[-1] - w
        y = net(x, F.pad(condition, (0, pw, 0, ph), mode="replicate") if ph or pw else condition)
    return y[:, :, : h * net.scale, : w * net.scale]


def _pad_to(x: torch.Tensor, multiple: int, mode: str) -> torch.Tensor:
    h, w = x.shape[-2:]
    if mode == "reflect" and (-h % multiple >= h or -w % multiple >= w):
        mode = "replicate"  # too small to reflect
    return pad_to_multiple(x, multiple, mode)


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along one axis: a fixed stride, the last tile flush with the far edge."""
    if tile >= length:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def tile_weights(starts: list[int], index: int, tile: int, scale: int, blend: str) -> torch.Tensor:
    """1-D blending weights of tile `index` (starting at `starts[index]`), in output pixels.

    "feather": across each overlap with a neighbour the two tiles' weights are complementary (they
    add up to 1): the outer quarter of the overlap on each side belongs to the tile that has context
    there, and the middle half is a linear cross-fade. A tile's own border pixels, which saw the
    least context, thus never count. "average": ones everywhere (plain averaging).
    """
    n = tile * scale
    weight = torch.ones(n)
    if blend == "average":
        return weight
    start = starts[index]
    if index > 0:
        ramp = _cross_fade((starts[index - 1] + tile - start) * scale)
        weight[: len(ramp)] = ramp
    if index < len(starts) - 1:
        ramp = _cross_fade((start + tile - starts[index + 1]) * scale).flip(0)
        weight[n - len(ramp) :] = torch.minimum(weight[n - len(ramp) :], ramp)
    return weight


def _cross_fade(length: int) -> torch.Tensor:
    """Weights rising from 0 to 1 across an overlap of `length` pixels: 0 on the first quarter, a
    linear ramp on the middle half, 1 on the last quarter (pixel centres at p + 0.5)."""
    margin = length / 4
    p = torch.arange(length, dtype=torch.float32) + 0.5
    return ((p - margin) / (length - 2 * margin)).clamp_(0, 1)


def _tiled(net, x, condition, tile, overlap, blend, progress, device):
    n, _, h, w = x.shape
    s = net.scale
    th, tw = min(tile, h), min(tile, w)
    overlap = min(overlap, th - 1, tw - 1) if blend == "feather" else overlap
    tops, lefts = tile_origins(h, th, overlap), tile_origins(w, tw, overlap)
    row_weights = [tile_weights(tops, i, th, s, blend) for i in range(len(tops))]
    col_weights = [tile_weights(lefts, i, tw, s, blend) for i in range(len(lefts))]
    out = torch.zeros(n, 3, h * s, w * s)
    weights = torch.zeros(1, 1, h * s, w * s)
    boxes = [(i, j) for i in range(len(tops)) for j in range(len(lefts))]
    for i, j in progress_bar(boxes, progress, "tiles"):
        top, left = tops[i], lefts[j]
        box = (slice(None), slice(None), slice(top, top + th), slice(left, left + tw))
        part = None if condition is None else condition[box].to(device)
        y = forward_any_size(net, x[box].to(device), part).float().cpu()
        wgt = (row_weights[i][:, None] * col_weights[j][None, :])[None, None]
        out[:, :, top * s : (top + th) * s, left * s : (left + tw) * s] += y * wgt
        weights[:, :, top * s : (top + th) * s, left * s : (left + tw) * s] += wgt
    return out / weights


def progress_bar(items: list, enabled: bool, unit: str):
    if not enabled or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, unit=unit, leave=False)

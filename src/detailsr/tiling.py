"""Large images in bounded memory: the tile from a memory budget, tiles streamed into the output.

`streamed_tiles` gives the same image as `inference.run(..., tile=...)` (the same tiles, blends
and rounding) but never holds the whole output in float: it works one row of tiles at a time and
writes finished rows straight into the 8/16-bit output array. Its float memory is one band of
output rows (a tile high, the image wide), so peak memory no longer grows with the image height.

`plan_tile` picks the largest tile whose working set fits a budget, from the network's activation
memory per LR pixel (`activation_cost`, measured once per network on two small inputs). On the CPU
an image whose feature map would not fit the last-level cache (`cache_pixels`) is tiled too, in
tiles no larger than `cache_tile` and of the side that covers it with the least work: past that
size every layer streams from main memory. CAMixerSR-S (36 channels, a 32 MiB cache, 1 thread)
took 20-24 µs per LR pixel up to 384², 38 µs at 512² and 53 µs at 768²; with 2 threads a 960x544
LR took 23 s whole and 11 s in 384-pixel tiles, the 1920x1080 LR of an 8K frame 51 s in the
464-pixel tiles the 1 GiB budget allows and 42 s in 384-pixel ones.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import torch

from .allocator import release_freed_memory
from .benchmark import PeakMemory
from .errors import ConfigError
from .imageio import from_tensor
from .inference import forward_any_size, progress_bar, tile_origins, tile_weights
from .models.base import SRNetwork
from .sizes import parse_bytes

DEFAULT_MAX_MEMORY = 1 << 30  # 1 GiB for the network's working set and the float tile buffers
_PROBE_SIDES = (64, 128)


def activation_cost(net: SRNetwork) -> tuple[float, float]:
    """(bytes per LR pixel, fixed bytes) of one forward of `net`, from its peak memory on two small
    inputs (CUDA: the allocator's peak; CPU: the resident set, sampled, each probe after freed heap
    memory went back to the system), with a 25 % margin on the per-pixel part. Cached on the network."""
    cached = getattr(net, "_activation_cost", None)
    if cached is not None:
        return cached
    device = next(net.parameters()).device
    dtype = next(net.parameters()).dtype
    peaks = []
    with torch.inference_mode():
        forward_any_size(net, torch.rand(1, 3, 32, 32).to(device, dtype))  # first-call set-up, not counted
        for side in _PROBE_SIDES:
            x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0)).to(device, dtype)
            release_freed_memory()
            with PeakMemory(device) as peak:
                forward_any_size(net, x)
            peaks.append(peak.peak)
    small, large = (s * s for s in _PROBE_SIDES)
    per_pixel = max((peaks[1] - peaks[0]) / (large - small), 1.0)
    fixed = max(peaks[0] - per_pixel * small, 0.0)
    net._activation_cost = (1.25 * per_pixel, fixed)
    return net._activation_cost


def working_set(net: SRNetwork, tile_h: int, tile_w: int, width: int) -> float:
    """Bytes a tiled run needs: the network on one tile, and the band of float output rows."""
    per_pixel, fixed = activation_cost(net)
    s = net.scale
    band = 4 * 4 * tile_h * s * width * s  # numerator (3 channels) and weights, float32
    return fixed + per_pixel * tile_h * tile_w + band


def plan_tile(net: SRNetwork, height: int, width: int, budget: int, overlap: int = 16) -> int | None:
    """The LR tile side for an h x w image within `budget` bytes, and on the CPU within `cache_tile`;
    None when the whole image fits the budget and, on the CPU, its map the cache (`cache_pixels`).

    Tiles are multiples of 16 (the window of most networks) and larger than twice the overlap. A
    network that looks at the whole image (`tile_safe` False) is never tiled here: when the image
    does not fit, that is an error naming what it would need (tiling it is the caller's explicit
    choice, `tile=`, since it changes the output everywhere).
    """
    per_pixel, fixed = activation_cost(net)
    whole = fixed + per_pixel * height * width
    in_cache, fast = cache_pixels(net), cache_tile(net)
    if whole <= budget and (in_cache is None or height * width <= in_cache):
        return None
    if not net.tile_safe:
        raise ConfigError(
            f"{net.arch} looks at the whole image; a {width}x{height} input needs about {_gib(whole)}, more than "
            f"the memory budget of {_gib(budget)}: raise it (--max-memory), or tile explicitly with --tile "
            "(which changes this network's output everywhere, not only near tile borders)")
    smallest = max(16, 16 * math.ceil((2 * overlap + 1) / 16))
    tile = smallest
    while tile + 16 <= max(height, width) and working_set(net, min(tile + 16, height), min(tile + 16, width),
                                                          width) <= budget:
        tile += 16
    if working_set(net, min(tile, height), min(tile, width), width) > budget:
        raise ConfigError(f"even {tile}-pixel tiles of a {width}x{height} image need about "
                          f"{_gib(working_set(net, min(tile, height), min(tile, width), width))}, more than "
                          f"the memory budget of {_gib(budget)}")
    if fast is None:
        return tile
    return least_work_tile(height, width, max(min(tile, fast), smallest), smallest, overlap)


def least_work_tile(height: int, width: int, largest: int, smallest: int, overlap: int) -> int:
    """The largest tile side in [smallest, largest] (multiples of 16) whose overlapping tiles cover an
    h x w image with at most 5 % more pixels in all than the fewest any side needs (fewer, larger
    tiles have fewer seams): a 400 x 400 image takes two rows of two 208-pixel tiles (173k pixels),
    not of two 384-pixel ones (590k pixels)."""

    def work(side: int) -> int:
        th, tw = min(side, height), min(side, width)
        return len(tile_origins(height, th, overlap)) * th * len(tile_origins(width, tw, overlap)) * tw

    works = {side: work(side) for side in range(smallest, largest + 1, 16)}
    least = min(works.values())
    return max(side for side, pixels in works.items() if pixels <= 1.05 * least)


def cache_pixels(net: SRNetwork) -> int | None:
    """LR pixels of one of `net`'s feature maps (`n_feats` channels of its dtype) that fill the CPU's
    last-level cache: images up to that run whole. None where that does not apply: on other
    devices, for networks that look at the whole image, or when the cache size or the width is
    unknown."""
    parameter = next(net.parameters(), None)
    width = net.config.get("n_feats")
    cache = last_level_cache()
    if parameter is None or parameter.device.type != "cpu" or not net.tile_safe or not width or cache is None:
        return None
    channels = max(width) if isinstance(width, (list, tuple)) else int(width)
    return cache // (channels * parameter.element_size())


def cache_tile(net: SRNetwork) -> int | None:
    """The largest LR tile side (a multiple of 16) whose feature map fills at most two thirds of the
    last-level cache (the rest for the layer's other operands); None where `cache_pixels` is."""
    pixels = cache_pixels(net)
    return None if pixels is None else max(16, 16 * int(math.sqrt(2 / 3 * pixels) // 16))


@functools.cache
def last_level_cache() -> int | None:
    """Bytes of the CPU's largest-level data cache (Linux sysfs, read once); None where unknown."""
    levels = {}
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (index / "type").read_text().strip() == "Instruction":
                continue
            levels[int((index / "level").read_text())] = parse_bytes((index / "size").read_text().strip())
        except (OSError, ValueError, ConfigError):
            continue
    return levels[max(levels)] if levels else None


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


@torch.inference_mode()
def streamed_tiles(
    net: SRNetwork,
    x: torch.Tensor,
    tile: int,
    overlap: int = 16,
    blend: str = "feather",
    dtype: np.dtype | type = np.uint8,
    progress: bool = False,
    condition: torch.Tensor | None = None,
) -> np.ndarray:
    """x (1, 3, h, w) float in [0, 1] -> (h s, w s, 3) `dtype` image, tile by tile (see module doc)."""
    if x.shape[0] != 1:
        raise ValueError("streamed_tiles takes one image at a time")
    _, _, h, w = x.shape
    s = net.scale
    device = next(net.parameters()).device
    dtype = np.dtype(dtype)
    th, tw = min(tile, h), min(tile, w)
    overlap = min(overlap, th - 1, tw - 1) if blend == "feather" else overlap
    tops, lefts = tile_origins(h, th, overlap), tile_origins(w, tw, overlap)
    col_weights = [tile_weights(lefts, j, tw, s, blend) for j in range(len(lefts))]
    out = np.empty((h * s, w * s, 3), dtype)
    done = 0  # output rows written so far; the band buffers start there
    num = torch.zeros(3, 0, w * s)
    den = torch.zeros(1, 0, w * s)
    steps = progress_bar([(i, j) for i in range(len(tops)) for j in range(len(lefts))], progress, "tiles")
    for i, j in steps:
        top, left = tops[i], lefts[j]
        end = (top + th) * s
        if num.shape[1] < end - done:  # a new row of tiles: extend the band down to its end
            grow = end - done - num.shape[1]
            num = torch.cat((num, torch.zeros(3, grow, w * s)), 1)
            den = torch.cat((den, torch.zeros(1, grow, w * s)), 1)
        box = (slice(None), slice(None), slice(top, top + th), slice(left, left + tw))
        part = None if condition is None else condition[box].to(device)
        y = forward_any_size(net, x[box].to(device), part)[0].float().cpu()
        weight = tile_weights(tops, i, th, s, blend)[:, None] * col_weights[j][None, :]
        rows = slice(top * s - done, end - done)
        cols = slice(left * s, (left + tw) * s)
        num[:, rows, cols] += y * weight
        den[:, rows, cols] += weight
        if j == len(lefts) - 1:  # the row of tiles is complete: rows above the next one are final
            final = (tops[i + 1] * s if i + 1 < len(tops) else h * s) - done
            out[done : done + final] = from_tensor(num[:, :final] / den[:, :final], dtype)
            num, den = num[:, final:].clone(), den[:, final:].clone()
            done += final
    return out

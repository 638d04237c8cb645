"""Routing maps: where a content-aware network spent its expensive computation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .imageio import to_tensor
from .inference import forward_any_size, ratio_setting
from .models.base import SRNetwork
from .models.camixer import Routing


def pixel_mask(routing: Routing, window: int) -> torch.Tensor:
    """(B, H, W) bool at feature resolution: True where the pixel's window was attended."""
    m = routing.mask().repeat_interleave(window, 1).repeat_interleave(window, 2)
    if routing.shift:
        # shifted windows are windows of the map rolled by -shift; roll the mask back
        m = torch.roll(m, shifts=(routing.shift, routing.shift), dims=(1, 2))
    return m


@torch.no_grad()
def routing_maps(net: SRNetwork, img: Any, ratio: float | None = None) -> np.ndarray:
    """Share of the network's mixers in which each LR pixel took self-attention: H x W float32 in [0, 1].

    img: H x W x 3 uint8/uint16 array or a 1 x 3 x H x W float tensor in [0, 1]. The image runs
    whole, as `upscale` runs it without tiles.
    """
    x = img if isinstance(img, torch.Tensor) else to_tensor(np.asarray(img)[:, :, :3])
    mixers = [m for m in net.modules() if hasattr(m, "routing") and hasattr(m, "window_size")]
    if not mixers:
        raise ConfigError(f"{net.arch} routes nothing: it has no content-aware mixer")
    h, w = x.shape[-2:]
    device = next(net.parameters()).device
    for m in mixers:
        m.routing = None  # only the mixers that run now count (ClassSR runs one branch)
    with ratio_setting(net, ratio):
        forward_any_size(net, x.to(device), net.condition_for(x.to(device)))
    masks = [pixel_mask(m.routing, m.window_size)[0, :h, :w].float() for m in mixers if m.routing is not None]
    return torch.stack(masks).mean(0).cpu().numpy()

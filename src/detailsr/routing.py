"""Routing maps: where a content-aware network spent its expensive computation."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .errors import ConfigError
from .imageio import to_tensor
from .inference import forward_any_size, ratio_setting
from .models.base import SRNetwork
from .models.record import clear_records, mixer_records, routed_mixers


@torch.no_grad()
def routing_maps(net: SRNetwork, img: Any, ratio: float | None = None) -> np.ndarray:
    """Share of the network's content-aware mixers in which each LR pixel took the expensive path
    (CAMixer: its window got self-attention; Pure-Pass: the pixel is not pure): H x W float32 in [0, 1].

    img: H x W x 3 uint8/uint16 array or a 1 x 3 x H x W float tensor in [0, 1]. The image runs
    whole, as `upscale` runs it without tiles.
    """
    x = img if isinstance(img, torch.Tensor) else to_tensor(np.asarray(img)[:, :, :3])
    if not routed_mixers(net):
        raise ConfigError(f"{net.arch} routes nothing: it has no content-aware mixer")
    h, w = x.shape[-2:]
    device = next(net.parameters()).device
    clear_records(net)  # only the mixers that run now count (ClassSR runs one branch)
    with ratio_setting(net, ratio):
        forward_any_size(net, x.to(device), net.condition_for(x.to(device)))
    masks = [r.pixel_mask()[0, :h, :w].float() for r in mixer_records(net, routed_only=True)]
    return torch.stack(masks).mean(0).cpu().numpy()

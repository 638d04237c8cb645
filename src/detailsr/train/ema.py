"""An exponential moving average of a network's weights (BasicSR's `model_ema`)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """`network` holds the averaged weights: a copy of the trained network, in eval mode.

    After every update `ema = decay * ema + (1 - decay) * weights` on floating parameters and
    buffers; integer buffers (indices) are copied.
    """

    def __init__(self, net: nn.Module, decay: float) -> None:
        self.decay = float(decay)
        self.network = copy.deepcopy(net).eval()
        for p in self.network.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, net: nn.Module) -> None:
        source = net.state_dict()
        for key, value in self.network.state_dict().items():
            if value.is_floating_point():
                value.mul_(self.decay).add_(source[key], alpha=1.0 - self.decay)
            else:
                value.copy_(source[key])

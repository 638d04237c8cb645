"""Training losses: L1, and the latitude-weighted L1 of ERP (360°) panoramas.

CAMixer's ratio loss is not here: a network gives its own auxiliary losses after a training forward
(`SRNetwork.auxiliary_losses()`), because only the network knows what its mixers recorded.
"""

from __future__ import annotations

import math

import torch


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over every element (BasicSR's `L1Loss`, reduction "mean")."""
    return (pred - target).abs().mean()


def ws_l1_loss(pred: torch.Tensor, target: torch.Tensor, top: torch.Tensor, erp_rows: int = 1024) -> torch.Tensor:
    """L1 weighted by the cosine of each row's latitude in the whole panorama (spec arch-camixer.md §12.4).

    pred, target: (N, C, H, W) patches; top: (N,) the panorama row of each patch's first row;
    erp_rows: the panorama's height. Row r of patch n weighs cos((top_n + r - rows/2 + 0.5) pi / rows);
    loss = sum(w |pred - target|) / sum(w), the weight broadcast over channels and columns (the
    official weighted mean), in float64 as the official code computes it. (The official class cannot
    run as shipped; the official ODI recipes train with plain L1.)
    """
    n, c, h, w = pred.shape
    rows = top.to(torch.float64).view(n, 1) + torch.arange(h, dtype=torch.float64, device=pred.device).view(1, h)
    weight = torch.cos((rows - erp_rows / 2 + 0.5) * math.pi / erp_rows).view(n, 1, h, 1).expand(n, c, h, w)
    error = (pred.to(torch.float64) - target.to(torch.float64)).abs()
    return (weight * error).sum() / weight.sum()

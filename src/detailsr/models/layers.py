"""Building blocks shared by several architecture families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LayerNorm2d(nn.Module):
    """Layer norm over the channel dim of an NCHW tensor, computed literally.

    The official CAMixerSR/ESC code writes it out (mean, biased variance, then the affine map); we
    keep that op order so outputs agree to float rounding.
    """

    def __init__(self, channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        v = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(v + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def window_partition(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, ws*ws, C), windows row-major, tokens (dy, dx) row-major."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // ws, ws, w // ws, ws)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // ws) * (w // ws), ws * ws, c)


def window_unpartition(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B, N, ws*ws, C) -> (B, C, H, W)."""
    b, _, _, c = x.shape
    x = x.view(b, h // ws, w // ws, ws, ws, c)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, c, h, w)


def flow_warp(x: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Bilinear warp of `x` by a per-pixel flow (B, 2, H, W) in pixels; channel 0 is along W.

    BasicSR's `flow_warp` with border padding and align_corners=True.
    """
    _, _, h, w = x.shape
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=x.dtype, device=x.device),
        torch.arange(w, dtype=x.dtype, device=x.device),
        indexing="ij",
    )
    px = gx + flow[:, 0]
    py = gy + flow[:, 1]
    grid = torch.stack((2.0 * px / max(w - 1, 1) - 1.0, 2.0 * py / max(h - 1, 1) - 1.0), dim=3)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def pad_to_multiple(x: torch.Tensor, multiple: int, mode: str = "reflect") -> torch.Tensor:
    """Pad right and bottom so that H and W become multiples of `multiple`."""
    h, w = x.shape[-2:]
    ph = (multiple - h % multiple) % multiple
    pw = (multiple - w % multiple) % multiple
    if ph == 0 and pw == 0:
        return x
    return F.pad(x, (0, pw, 0, ph), mode=mode)


class Upsampler(nn.Sequential):
    """Conv to 3*s*s channels then PixelShuffle (SwinIR-light style; keys `0.*`)."""

    def __init__(self, channels: int, scale: int, out_channels: int = 3) -> None:
        super().__init__(
            nn.Conv2d(channels, out_channels * scale * scale, 3, 1, 1),
            nn.PixelShuffle(scale),
        )


ATTENTION_BACKENDS = ("naive", "sdpa")


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str = "sdpa"):
    """softmax(q k^T * scale) v over the last two dims.

    `naive` spells the softmax out and is the oracle; `sdpa` is torch's fused kernel.
    """
    if backend == "naive":
        return torch.softmax((q @ k.transpose(-2, -1)) * scale, dim=-1) @ v
    if backend == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {ATTENTION_BACKENDS}")

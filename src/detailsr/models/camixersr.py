"""CAMixerSR networks (spec: arch-camixer.md sections 1-3, 6-7).

`CAMixerSR` covers the large-image S / M / B models and the lightweight x2 / x3 / x4 models (they
differ only in width and scale).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .base import SRNetwork
from .camixer import WINDOW, CAMixer
from .layers import LayerNorm2d, Upsampler, pad_to_multiple


class GatedFeedForward(nn.Module):
    """1x1 expand to 2C, depth-wise 3x3, GELU(first half) * second half, 1x1 back; no biases."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project_in = nn.Conv2d(dim, dim * 2, 1, bias=False)
        self.dwconv = nn.Conv2d(dim * 2, dim * 2, 3, 1, 1, groups=dim * 2, bias=False)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(z1) * z2)


class Block(nn.Module):
    """Post-norm block: x = LN(x + mixer(x)); x = LN(x + ffn(x))."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.mixer = CAMixer(dim, WINDOW, ratio)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = GatedFeedForward(dim)

    def forward(self, x: torch.Tensor, global_condition: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.mixer(x, global_condition))
        return self.norm2(x + self.ffn(x))


class Group(nn.Module):
    def __init__(self, dim: int, n_blocks: int, ratio: float) -> None:
        super().__init__()
        self.body = nn.ModuleList(Block(dim, ratio) for _ in range(n_blocks))
        self.body_tail = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, global_condition: torch.Tensor) -> torch.Tensor:
        shortcut = x
        for block in self.body:
            x = block(x, global_condition)
        return self.body_tail(x) + shortcut


class CAMixerSR(SRNetwork):
    """CAMixerSR. Eval: `net(x)` -> image. Training: `net(x)` -> (image, ratio loss)."""

    arch = "camixersr"
    min_size = WINDOW  # the official reflect padding needs the pad to be smaller than the side
    tile_safe = True

    def __init__(
        self, n_feats: int = 60, n_block: tuple[int, ...] = (4, 4, 6, 6), scale: int = 4, ratio: float = 0.5
    ) -> None:
        super().__init__(scale, {"n_feats": n_feats, "n_block": list(n_block), "scale": scale})
        self.ratio = ratio
        self.head = nn.Conv2d(3, n_feats, 3, 1, 1)
        self.global_predictor = nn.Sequential(
            nn.Conv2d(n_feats, 8, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(8, 2, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
        )
        self.body = nn.ModuleList(Group(n_feats, n, ratio) for n in n_block)
        self.body_tail = nn.Conv2d(n_feats, n_feats, 3, 1, 1)
        self.tail = Upsampler(n_feats, scale)
        self.set_ratio(ratio)

    def forward(self, x: torch.Tensor):
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, WINDOW, mode="reflect")
        f = self.head(x)
        global_condition = self.global_predictor(f)
        shortcut = f
        for group in self.body:
            f = group(f, global_condition)
        f = self.body_tail(f) + shortcut
        y = self.tail(f)[:, :, : h * self.scale, : w * self.scale]
        if self.training:
            return y, self.ratio_loss()
        return y

    def mixers(self) -> list[CAMixer]:
        return [m for m in self.modules() if isinstance(m, CAMixer)]

    def ratio_loss(self) -> torch.Tensor:
        """2 * ratio * (mean attended fraction over blocks, windows and batch - 0.5)^2."""
        fractions = torch.cat([m.hard_fraction for m in self.mixers()], dim=1)
        return 2 * self.ratio * (fractions.mean() - 0.5) ** 2


def _count(state_dict: dict, pattern: str) -> int:
    n = 0
    while pattern.format(n) in state_dict:
        n += 1
    return n


def detect(state_dict: dict) -> tuple[str, dict] | None:
    """("camixersr", hyper-parameters) when the keys are those of a CAMixerSR, else None."""
    if "global_predictor.0.weight" not in state_dict or "body.0.body.0.mixer.route.in_conv.0.weight" not in state_dict:
        return None
    n_groups = _count(state_dict, "body.{}.body_tail.weight")
    n_block = [_count(state_dict, f"body.{g}.body.{{}}.norm1.weight") for g in range(n_groups)]
    n_feats = state_dict["head.weight"].shape[0]
    scale = math.isqrt(state_dict["tail.0.weight"].shape[0] // 3)
    return "camixersr", {"n_feats": n_feats, "n_block": n_block, "scale": scale}


def build(arch: str, config: dict) -> SRNetwork:
    if arch == "camixersr":
        return CAMixerSR(**config)
    raise KeyError(arch)

"""CAMixer-ATD-light: ATD-light whose window attention is routed by CAMixer's predictor.

The baseline the Pure-Pass paper compares against. Its architecture was not published; this is
detailsr's reconstruction (spec: papers.md §2.11, with §2.2 and §2.4 for context; the pieces come
from arch-camixer.md §1 (global predictor), §4-§6 (routing, training) and arch-atd.md (backbone)).

* Backbone: ATD-light with the same keys, so an ATD-light checkpoint loads with only the new routing
  parameters missing (`registry.load_model(..., arch="camixer-atd-light")` leaves them at their
  initialisation and reports them). TDCA, AC-MSA, ConvFFN and the dictionary refinement are unchanged.
* `global_predictor` (1x1 conv C->8, LeakyReLU 0.1, 3x3 conv 8->2, LeakyReLU 0.1) on the output of
  `conv_first` gives the global condition `cg`, computed once per forward (`routing_condition`).
* In every layer `attn_win` is a `RoutedWindowAttention`: the V part of the shared QKV, `cg` and the
  window-position code go into a PredictorLG (`attn_win.route.*`) that scores the windows and gives
  `ca`, `sa`; the top-K windows get ATD's multi-head window attention with its relative-position bias,
  the others `v * sa`; the merged map gets CAMixer's refinement `a + GELU(dw_dil2(dw(a))) * ca`
  (`attn_win.conv_sptial.*`), then ATD's `attn_win.proj`.

Constructor flags (names are ours; defaults as the spec):

* `ratio` gamma = 0.5: share of windows that attend. Inference: K = floor(N * gamma + 0.5) (the spec's
  round(N * gamma), halves up, the library's CAMixer rule), or "auto" (`camixer.auto_k`); the top K by
  the predictor's logit margin (`camixer.rank_windows`). `stochastic=True` on the mixers (runtime
  option) gives CAMixer's official random count instead (`camixer.official_k`).
* `shift` = False: every layer uses unshifted windows (CAMixer needs the shift disabled, §2.2).
  True keeps ATD's alternate half-window shift; the routing then happens on the rolled map (V, `cg`,
  scores, `sa` and the attended windows all in the rolled frame, the window-position code aligned
  with the rolled windows), the merged map is rolled back before the refinement, and attended
  windows get ATD's shift mask. The record carries the shift.
* `deformable` = False: no offsets (the predictor's `out_offsets` convs are omitted, no keys). True is
  our extension: the offsets head exists and the keys of the attention become `K + warp(K, offsets)`
  on the K part of the shared QKV (CAMixer warps its pre-projection input instead, which ATD's
  shared, already projected QKV does not offer).

Training (`net.train()`): as CAMixer, every window attends densely under a Gumbel hard mask drawn
from the predictor's probabilities used as logits; the forward returns the image, and
`auxiliary_losses()` gives CAMixer's ratio loss `2 * ratio * (mean share - 0.5) ** 2`
(target 0.5 whatever the ratio). The new Linear layers get ATD's initialisation (truncated normal
0.02), since they are built inside it.

Oracle: `dense_reference = True` on a mixer computes the eval routing the training way (all windows,
masked), which the gather path is tested against. Records: each routed mixer's `record` holds the
attended windows (`keep`, row-major over the possibly rolled grid) and its work: the attention of the
attended windows plus `proj` on every token (the predictor and the refinement are not mixer work;
`flops.executed_macs` counts them).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import atd
from .atd import ATDLight, ATDTransformerLayer, WindowAttention
from .base import SRNetwork
from .camixer import (
    AUTO,
    PredictorLG,
    hard_mask,
    mask_logits,
    official_draw,
    official_gamma,
    official_k,
    rank_windows,
    window_condition,
)
from .layers import flow_warp, gather_windows, scatter_windows_, window_partition, window_unpartition
from .record import MixerRecord, MixerWork, attended_share

GLOBAL_WIDTH = 8  # CAMixerSR's global predictor: C -> 8 -> 2 channels
FIRST_LAYER = "layers.0.residual_group.layers.0.attn_win."


class WindowPredictor(PredictorLG):
    """CAMixer's PredictorLG (keys `attn_win.route.*`); the offsets head exists only when deformable."""

    def __init__(self, dim: int, window_size: int, ratio: float, deformable: bool) -> None:
        super().__init__(dim, window_size, ratio)
        self.deformable = deformable
        if not deformable:
            del self.out_offsets  # not used: no parameters, no keys

    def forward(self, cond: torch.Tensor):
        """Window logits (B, N, 2), offsets (B, 2, H, W) or None, ca (B, C, 1, 1), sa (B, 1, H, W)."""
        if self.deformable:
            return super().forward(cond)
        z = self.in_conv(cond)
        m = window_partition(z.mean(1, keepdim=True), self.window_size).squeeze(-1)
        return mask_logits(self.out_mask, m), None, self.out_CA(z), self.out_SA(z)


class RoutedWindowAttention(WindowAttention):
    """ATD's (S)W-MSA routed by CAMixer (keys `attn_win.*`: ATD's `relative_position_bias_table` and
    `proj`, plus `route.*` and `conv_sptial.*`). Forward as `WindowAttention`, plus the global condition
    `cg` (B, 2, h, w) of the padded map."""

    routed = True
    new_modules = ("route", "conv_sptial")  # what ATD's window attention lacks

    def __init__(self, dim: int, window_size: int, num_heads: int, ratio: float = 0.5,
                 deformable: bool = False) -> None:
        super().__init__(dim, window_size, num_heads)
        self.ratio = ratio
        self.stochastic = False  # True: CAMixer's official random K (uses the global torch RNG)
        self.dense_reference = False
        self.route = WindowPredictor(dim, window_size, ratio, deformable)
        self.conv_sptial = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim),
            nn.Conv2d(dim, dim, 3, 1, 2, dilation=2, groups=dim),
        )

    def set_ratio(self, ratio: float | str) -> None:
        self.ratio = ratio
        self.route.ratio = ratio

    def forward(
        self, qkv: torch.Tensor, x_size: tuple[int, int], shift: int, rpi: torch.Tensor, mask: torch.Tensor | None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """qkv (B, N, 3C) -> (B, N, C); a training forward records the attended share (B, 1)."""
        if condition is None:
            raise ValueError("the routed window attention needs the global condition (routing_condition)")
        b, n_tok, c3 = qkv.shape
        h, w = x_size
        ws, c = self.window_size, self.dim
        grid = qkv.view(b, h, w, c3)
        if shift:
            # SW-MSA's windows are those of the rolled map: route in that frame
            grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
            condition = torch.roll(condition, shifts=(-shift, -shift), dims=(2, 3))
        maps = grid.permute(0, 3, 1, 2)  # (B, 3C, h, w) view: [q | k | v] channels
        v = maps[:, 2 * c :]
        cw = window_condition(h, w, ws, v).expand(b, -1, -1, -1)
        logits, offsets, ca, sa = self.route(torch.cat((v, condition, cw), dim=1))
        if offsets is not None:
            maps = self._deform_keys(maps, offsets)
        attn_mask = mask if shift else None

        if self.training:
            hard = hard_mask(logits)
            self.record = MixerRecord(hard_fraction=hard.mean(1))  # (B, 1), read by the ratio loss
            a = self._mix_dense(maps, v, sa, hard, rpi, attn_mask)
        else:
            keep = self._select(logits)
            self.record = self._record(keep, (h // ws, w // ws), b, n_tok, shift)
            if self.dense_reference:
                hard = torch.zeros_like(logits[:, :, :1]).scatter_(1, keep[..., None], 1.0)
                a = self._mix_dense(maps, v, sa, hard, rpi, attn_mask)
            else:
                a = self._mix_gather(maps, v, sa, keep, rpi, attn_mask)
        if shift:
            a = torch.roll(a, shifts=(shift, shift), dims=(2, 3))
        return self._finish(a, ca)

    def _deform_keys(self, maps: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """[q | k + warp(k, offsets) | v] (the `deformable` extension)."""
        c = self.dim
        k = maps[:, c : 2 * c]
        return torch.cat((maps[:, :c], k + flow_warp(k, offsets), maps[:, 2 * c :]), dim=1)

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Indices (B, K) of the attended windows: `rank_windows`, or CAMixer's official draw."""
        if not self.stochastic:
            return rank_windows(logits, self.ratio)
        gamma = official_gamma(self.ratio)
        return official_draw(logits, lambda n, hard_fraction: official_k(n, hard_fraction, gamma))

    def _record(self, keep: torch.Tensor, grid: tuple[int, int], batch: int, n_tok: int, shift: int) -> MixerRecord:
        """The windows attended; work: their attention matmuls, and `proj` on every token."""
        n, c = self.window_size**2, self.dim
        queries = batch * keep.shape[1] * n
        work = MixerWork(queries, n, batch * keep.shape[1], queries * 2 * n * c + batch * n_tok * c * c)
        return MixerRecord(work=work, keep=keep, grid=grid, window=self.window_size, shift=shift)

    def _attend(self, windows: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, K, n, 3C) windows -> (B, K, n, C) attended (heads concatenated, not projected)."""
        b, k, n, c3 = windows.shape
        return self.attend_windows(windows.reshape(b * k, n, c3), rpi, mask).reshape(b, k, n, c3 // 3)

    def _mix_gather(self, maps, v, sa, keep, rpi, attn_mask) -> torch.Tensor:
        """Attention on the windows `keep` only, `v * sa` everywhere else: (B, C, h, w)."""
        ws = self.window_size
        b, _, h, w = maps.shape
        n_win, n_keep = (h // ws) * (w // ws), keep.shape[1]
        if n_keep == n_win:
            # every window attends: no gather, and no `v * sa` branch at all
            return window_unpartition(self._attend(window_partition(maps, ws), rpi, attn_mask), ws, h, w)
        out = (v * sa).contiguous()
        if n_keep == 0:
            return out
        if attn_mask is not None:  # each gathered window takes its own shift mask
            attn_mask = attn_mask[keep].reshape(b * n_keep, ws * ws, ws * ws)
        return scatter_windows_(out, keep, self._attend(gather_windows(maps, keep, ws), rpi, attn_mask), ws)

    def _mix_dense(self, maps, v, sa, hard, rpi, attn_mask) -> torch.Tensor:
        """The training form: every window attends, masked by `hard` (B, N, 1) in {0, 1}.

        A masked window has q = k = v = 0, so its attention output is exactly 0."""
        ws = self.window_size
        _, _, h, w = maps.shape
        m = hard[:, :, :, None]  # broadcast over tokens and channels
        attended = self._attend(window_partition(maps, ws) * m, rpi, attn_mask)
        easy = window_partition(v * sa, ws) * (1 - m)
        return window_unpartition(attended + easy, ws, h, w)

    def _finish(self, a: torch.Tensor, ca: torch.Tensor) -> torch.Tensor:
        """CAMixer's refinement a + GELU(conv_sptial(a)) * ca, then ATD's proj: (B, C, h, w) -> (B, N, C)."""
        a = F.gelu(self.conv_sptial(a)) * ca + a
        return self.proj(a.flatten(2).transpose(1, 2))


class CAMixerATDLight(ATDLight):
    """CAMixer-ATD-light (spec papers.md §2.11). Eval: `net(x)` -> image; training: (image, ratio loss).

    Takes ATD-light's hyper-parameters plus `ratio` (gamma), `shift` and `deformable` (module docstring).
    """

    arch = "camixer_atd_light"
    routes_by_predictor = True

    def __init__(self, scale: int = 4, ratio: float = 0.5, shift: bool = False, deformable: bool = False,
                 **kwargs: Any) -> None:
        routed = functools.partial(RoutedWindowAttention, ratio=ratio, deformable=deformable)
        super().__init__(scale, window_attention=routed, **kwargs)
        self.shift, self.deformable = bool(shift), bool(deformable)
        self.config.update(shift=self.shift, deformable=self.deformable)
        if not self.shift:
            for layer in self.modules():
                if isinstance(layer, ATDTransformerLayer):
                    layer.shift_size = 0
        dim = self.config["embed_dim"]
        self.global_predictor = nn.Sequential(
            nn.Conv2d(dim, GLOBAL_WIDTH, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(GLOBAL_WIDTH, 2, 3, 1, 1), nn.LeakyReLU(0.1, inplace=True),
        )
        self.set_ratio(ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and x.shape[0] > 1 and self.ratio == AUTO:  # K is counted per image
            return torch.cat([self(x[i : i + 1]) for i in range(x.shape[0])])
        return super().forward(x)

    def routing_condition(self, f0: torch.Tensor) -> torch.Tensor:
        return self.global_predictor(f0)

    def routed_attention(self) -> list[RoutedWindowAttention]:
        return [m for m in self.modules() if isinstance(m, RoutedWindowAttention)]

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """CAMixer's ratio loss of the last training forward: 2 ratio (mean attended share - 0.5)^2."""
        return {"ratio": 2 * official_gamma(self.ratio) * (attended_share(self) - 0.5) ** 2}

    def new_parameter_keys(self) -> list[str]:
        """State-dict keys an ATD-light of the same configuration does not have (the routing)."""
        prefixes = ["global_predictor."] + [
            f"{name}.{sub}." for name, m in self.named_modules() if isinstance(m, RoutedWindowAttention)
            for sub in m.new_modules
        ]
        return [k for k in self.state_dict() if k.startswith(tuple(prefixes))]


ARCHITECTURES = {"camixer_atd_light": CAMixerATDLight}


def detect(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """("camixer_atd_light", hyper-parameters) for a CAMixer-ATD-light state dict, else None.

    Recognised by its own keys (the global predictor and the routed window attention) on an ATD-light
    backbone; `deformable` from the offsets head. `shift` is not in the weights: the default (False).
    """
    if "global_predictor.0.weight" not in state_dict or FIRST_LAYER + "route.in_conv.0.weight" not in state_dict:
        return None
    found = atd.detect(state_dict)
    if found is None or found[0] != "atd_light":
        return None
    config = dict(found[1], deformable=FIRST_LAYER + "route.out_offsets.0.weight" in state_dict)
    return "camixer_atd_light", config


def build(arch: str, config: dict[str, Any]) -> SRNetwork:
    return ARCHITECTURES[arch](**config)

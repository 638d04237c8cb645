"""CAMixer: the content-aware token mixer of CAMixerSR (spec: arch-camixer.md sections 4-5).

A predictor scores every 16x16 window; the top-K windows get (deformable-key) self-attention, the
others a cheap convolutional spatial attention `v * sa`; a depth-wise conv branch then runs
everywhere. Module nesting and key names follow the official code so that its checkpoints load
strictly.

Routing: at inference the mixer gathers only the selected windows, attends, and scatters back.
`dense_reference=True` computes the same result the training way (every window, masked), which is
the oracle the gather path is tested against. After each forward `mixer.record` (a `MixerRecord`)
holds which windows took attention and the work it executed.

`CAMixerODI` (with `PredictorODI`) is the mixer of the ODI network CAMixerOSR (spec section 7.2):
shifted windows, a latitude condition instead of the learned global one, q = k = the warped map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (
    LayerNorm2d,
    attention,
    flow_warp,
    gather_windows,
    scatter_windows_,
    window_partition,
    window_unpartition,
)
from .record import MixerRecord, MixerWork, RecordingMixer

WINDOW = 16


def deterministic_k(n: int, ratio: float) -> int:
    """detailsr's default rule: K = floor(N * ratio + 0.5) (halves round up), clamped to [0, N]."""
    return min(max(int(math.floor(n * ratio + 0.5)), 0), n)


def official_k(n: int, hard_fraction: torch.Tensor, ratio: float) -> int:
    """The official rule: K = min(int(N * r * 2 * ratio), N), float32 in that order; N when ratio == 1."""
    if ratio == 1:
        return n
    return min(int(n * hard_fraction * 2 * ratio), n)


def window_condition(h: int, w: int, ws: int, like: torch.Tensor) -> torch.Tensor:
    """The 2-channel position code inside each window, tiled: (1, 2, H, W).

    Computed in float32 and then cast, as the official code does (`linspace(...).type_as(x)`), so
    that float64 runs agree with it too (a float64 linspace differs in the last float32 bits)."""
    a = torch.linspace(-1, 1, ws, device=like.device).to(like.dtype)
    rows, cols = torch.meshgrid(a, a, indexing="ij")
    grid = torch.stack((rows, cols))[None]
    return grid.repeat(1, 1, h // ws, w // ws)


class PredictorLG(nn.Module):
    """Local-global predictor (keys `mixer.route.*`): window scores, offsets, CA and SA."""

    def __init__(self, dim: int, window_size: int = WINDOW, ratio: float = 0.5) -> None:
        super().__init__()
        self.window_size = window_size
        self.ratio = ratio
        cdim = dim + 4
        c4, c8 = cdim // 4, cdim // 8
        self.in_conv = nn.Sequential(nn.Conv2d(cdim, c4, 1), LayerNorm2d(c4), nn.LeakyReLU(0.1, inplace=True))
        self.out_offsets = nn.Sequential(
            nn.Conv2d(c4, c8, 1), nn.LeakyReLU(0.1, inplace=True), nn.Conv2d(c8, 2, 1)
        )
        ws2 = window_size * window_size
        self.out_mask = nn.Sequential(
            nn.Linear(ws2, window_size), nn.LeakyReLU(0.1, inplace=True), nn.Linear(window_size, 2),
            nn.Softmax(dim=-1),
        )
        self.out_CA = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c4, dim, 1), nn.Sigmoid())
        self.out_SA = nn.Sequential(nn.Conv2d(c4, 1, 3, 1, 1), nn.Sigmoid())

    def forward(self, cond: torch.Tensor):
        """Window probabilities p (B, N, 2), offsets (B, 2, H, W), ca (B, C, 1, 1), sa (B, 1, H, W)."""
        z = self.in_conv(cond)
        offsets = torch.tanh(self.out_offsets(z)) * 8
        ca = self.out_CA(z)
        sa = self.out_SA(z)
        m = window_partition(z.mean(1, keepdim=True), self.window_size).squeeze(-1)
        return self.out_mask(m), offsets, ca, sa


class CAMixer(RecordingMixer):
    """Content-aware mixer (keys `mixer.*`). Forward takes the features and the global condition."""

    routed = True

    def __init__(self, dim: int, window_size: int = WINDOW, ratio: float = 0.5) -> None:
        super().__init__()
        self.dim = dim
        self.window_size = window_size
        self.ratio = ratio
        self.stochastic = False  # True: the official Gumbel draw sets K (uses the global torch RNG)
        self.attn_type = "sdpa"
        self.dense_reference = False
        # Pure-Pass window routing (set by the network for each forward): each window's share of
        # pure pixels (B, N); a window whose share reaches `pure_threshold` never attends.
        self.window_pure: torch.Tensor | None = None
        self.pure_threshold = 0.5
        self.project_v = nn.Conv2d(dim, dim, 1)
        self.project_q = nn.Linear(dim, dim)
        self.project_k = nn.Linear(dim, dim)
        self.conv_sptial = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim),
            nn.Conv2d(dim, dim, 3, 1, 2, dilation=2, groups=dim),
        )
        self.project_out = nn.Conv2d(dim, dim, 1)
        self.route = PredictorLG(dim, window_size, ratio)

    def set_ratio(self, ratio: float) -> None:
        self.ratio = ratio
        self.route.ratio = ratio

    def forward(self, x: torch.Tensor, global_condition: torch.Tensor):
        """The mixed features; a training forward records the attended share (B, 1) for the ratio loss."""
        ws = self.window_size
        b, _, h, w = x.shape
        v = self.project_v(x)
        cw = window_condition(h, w, ws, x).expand(b, -1, -1, -1)
        p, offsets, ca, sa = self.route(torch.cat((v, global_condition, cw), dim=1))
        k_in = x + flow_warp(x, offsets)
        grid = (h // ws, w // ws)

        if self.training:
            mask = F.gumbel_softmax(p, hard=True, dim=2)[:, :, 0:1]
            self.record = MixerRecord(hard_fraction=mask.mean(1))  # (B, 1), read by the ratio loss
            return self._finish(self._mix_dense(x, k_in, v, sa, mask), ca)

        keep = self._veto_pure(self._select(p))
        self.record = self._record(keep, grid, b)
        if self.dense_reference:
            mask = torch.zeros_like(p[:, :, :1]).scatter_(1, keep[..., None], 1.0)
            a = self._mix_dense(x, k_in, v, sa, mask)
        else:
            a = self._mix_gather(x, k_in, v, sa, keep)
        return self._finish(a, ca)

    def _record(self, keep: torch.Tensor, grid: tuple[int, int], batch: int, shift: int = 0) -> MixerRecord:
        """The windows attended; work: their q/k projections and single-head attention."""
        tokens = keep.shape[1] * self.window_size**2
        per_token = 2 * self.dim * self.dim + 2 * self.window_size**2 * self.dim
        work = MixerWork(batch * tokens, self.window_size**2, batch * keep.shape[1], batch * tokens * per_token)
        return MixerRecord(work=work, keep=keep, grid=grid, window=self.window_size, shift=shift)

    def _veto_pure(self, keep: torch.Tensor) -> torch.Tensor:
        """The learned choice `keep` (B, K) less the windows Pure-Pass finds pure enough (batch of one)."""
        if self.window_pure is None:
            return keep
        if keep.shape[0] != 1:
            raise ValueError("Pure-Pass window routing takes one image at a time")
        impure = self.window_pure[0, keep[0]] < self.pure_threshold
        return keep[:, impure]

    def _select(self, p: torch.Tensor) -> torch.Tensor:
        """Indices (B, K) of the windows that get attention: the top K by p[..., 0].

        Deterministic mode breaks ties by window index (raster order)."""
        n = p.shape[1]
        score = p[:, :, 0]
        if self.stochastic:
            # The official draw and sort. Many scores saturate to exactly 1.0 and tie; torch's
            # (unstable) argsort orders ties its own way, so only this call reproduces the
            # official window choice.
            hard = F.gumbel_softmax(p, hard=True, dim=2)[:, :, 0:1]
            k = official_k(n, hard.mean(), self.route.ratio)
            return torch.argsort(score, dim=1, descending=True)[:, :k]
        k = deterministic_k(n, self.route.ratio)
        return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Single-head attention without 1/sqrt(d) scaling, per window: (B, K, T, C) tensors."""
        q, k = self.project_q(q), self.project_k(k)
        return attention(q, k, v, scale=1.0, backend=self.attn_type)

    def _mix_gather(self, x, k_in, v, sa, keep):
        """Attention on the selected windows only; `v * sa` everywhere else."""
        ws = self.window_size
        b, c, h, w = x.shape
        n_keep = keep.shape[1]
        n = (h // ws) * (w // ws)
        if n_keep == n:
            # Every window attends: no gather needed, and no `v * sa` branch at all.
            out = self._attend(window_partition(x, ws), window_partition(k_in, ws), window_partition(v, ws))
            return window_unpartition(out, ws, h, w)
        out = v * sa
        if n_keep == 0:
            return out
        # Copy only the selected windows out of the feature maps, and the results back in.
        attended = self._attend(*(gather_windows(t, keep, ws) for t in (x, k_in, v)))
        return scatter_windows_(out, keep, attended, ws)

    def _mix_dense(self, x, k_in, v, sa, mask):
        """The training form: every window attends, masked by `mask` (B, N, 1) in {0, 1}."""
        ws = self.window_size
        _, _, h, w = x.shape
        m = mask[:, :, :, None]  # broadcast over tokens and channels
        q = window_partition(x, ws) * m
        k = window_partition(k_in, ws) * m
        v1 = window_partition(v, ws) * m
        v2 = window_partition(v * sa, ws) * (1 - m)
        return window_unpartition(self._attend(q, k, v1) + v2, ws, h, w)

    def _finish(self, a: torch.Tensor, ca: torch.Tensor) -> torch.Tensor:
        out = F.gelu(self.conv_sptial(a)) * ca + a
        return self.project_out(out)


# --------------------------------------------------------------------------------------------------
# ODI variant (spec section 7.2): the mixer of CAMixerOSR, for equirectangular panoramas.


def odi_k(n: int, hard_fraction: torch.Tensor) -> int:
    """The ODI code's rule: K = int(N * r), float32, no ratio factor and no ratio == 1 branch."""
    return min(int(n * hard_fraction), n)


class PredictorODI(nn.Module):
    """The ODI predictor (keys `mixer.route.*`).

    Differs from `PredictorLG`: the input has C + 3 channels (v, the 1-channel latitude condition,
    the 2-channel window code), `in_conv` has no LayerNorm (key `in_conv.0` only), every LeakyReLU
    has slope 0.2, and the offsets are returned raw (no tanh, no x8).
    """

    def __init__(self, dim: int, window_size: int = WINDOW, ratio: float = 0.5) -> None:
        super().__init__()
        self.window_size = window_size
        self.ratio = ratio
        cdim = dim + 3
        c4, c8 = cdim // 4, cdim // 8
        self.in_conv = nn.Sequential(nn.Conv2d(cdim, c4, 1), nn.LeakyReLU(0.2, inplace=True))
        self.out_offsets = nn.Sequential(
            nn.Conv2d(c4, c8, 1), nn.LeakyReLU(0.2, inplace=True), nn.Conv2d(c8, 2, 1)
        )
        ws2 = window_size * window_size
        self.out_mask = nn.Sequential(
            nn.Linear(ws2, window_size), nn.LeakyReLU(0.2, inplace=True), nn.Linear(window_size, 2),
            nn.Softmax(dim=-1),
        )
        self.out_CA = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c4, dim, 1), nn.Sigmoid())
        self.out_SA = nn.Sequential(nn.Conv2d(c4, 1, 3, 1, 1), nn.Sigmoid())

    def forward(self, cond: torch.Tensor):
        """Window probabilities p (B, N, 2), offsets (B, 2, H, W), ca (B, C, 1, 1), sa (B, 1, H, W)."""
        z = self.in_conv(cond)
        offsets = self.out_offsets(z)
        ca = self.out_CA(z)
        sa = self.out_SA(z)
        m = window_partition(z.mean(1, keepdim=True), self.window_size).squeeze(-1)
        return self.out_mask(m), offsets, ca, sa


class CAMixerODI(CAMixer):
    """The ODI content-aware mixer (keys `mixer.*`): shifted windows, latitude condition.

    Forward `(x, condition)` with `condition` the (B, 1, H, W) cos-latitude map. Differences from
    `CAMixer`, in forward order (spec 7.2):

    * `v = project_v(x)` and the window code are rolled by -shift on both axes; the latitude
      condition is not. `route` sees `[v, condition, window code]` (C + 3 channels), so scores,
      offsets, `sa` and the window grid are those of the rolled map.
    * The warp uses the raw offsets on the **un-rolled** `x` (as the official code does, although
      the offsets were computed in rolled coordinates); the warped map is then rolled by -shift and
      serves as both query and key (no `x +` residual).
    * The assembled map (attention windows and `v * sa` windows) is rolled back by +shift before
      `conv_sptial`, which is 1x1 -> depth-wise 5x5 -> depth-wise 5x5 with dilation 3.
    * Stochastic K is `int(N * r)` (r the Gumbel hard fraction); the deterministic default is the
      library's `deterministic_k(N, ratio)` as for `CAMixer`.

    `record` after an eval forward carries `shift`, since its window grid is the rolled one.
    """

    def __init__(self, dim: int, window_size: int = WINDOW, ratio: float = 0.5, shift: int = 0) -> None:
        super().__init__(dim, window_size, ratio)
        self.shift = shift
        # Same attribute names (and so the same key order) as CAMixer; only the modules differ.
        self.conv_sptial = nn.Sequential(
            nn.Conv2d(dim, dim, 1),
            nn.Conv2d(dim, dim, 5, 1, 2, groups=dim),
            nn.Conv2d(dim, dim, 5, 1, 6, dilation=3, groups=dim),
        )
        self.route = PredictorODI(dim, window_size, ratio)

    def _roll(self, t: torch.Tensor, sign: int) -> torch.Tensor:
        if self.shift == 0:
            return t
        return torch.roll(t, shifts=(sign * self.shift, sign * self.shift), dims=(2, 3))

    def forward(self, x: torch.Tensor, condition: torch.Tensor):
        """The mixed features; a training forward records the attended share (B, 1) for the ratio loss."""
        ws = self.window_size
        b, _, h, w = x.shape
        v = self._roll(self.project_v(x), -1)
        cw = self._roll(window_condition(h, w, ws, x), -1).expand(b, -1, -1, -1)
        p, offsets, ca, sa = self.route(torch.cat((v, condition, cw), dim=1))
        qk = self._roll(flow_warp(x, offsets), -1)  # query = key = the warped, rolled map
        grid = (h // ws, w // ws)

        if self.training:
            mask = F.gumbel_softmax(p, hard=True, dim=2)[:, :, 0:1]
            self.record = MixerRecord(hard_fraction=mask.mean(1))  # (B, 1), read by the ratio loss
            return self._finish(self._roll(self._mix_dense(qk, qk, v, sa, mask), 1), ca)

        keep = self._select(p)
        self.record = self._record(keep, grid, b, self.shift)
        if self.dense_reference:
            mask = torch.zeros_like(p[:, :, :1]).scatter_(1, keep[..., None], 1.0)
            a = self._mix_dense(qk, qk, v, sa, mask)
        else:
            a = self._mix_gather(qk, qk, v, sa, keep)
        return self._finish(self._roll(a, 1), ca)

    def _select(self, p: torch.Tensor) -> torch.Tensor:
        """Indices (B, K) of the attended windows: the top K by p[..., 0] (see `CAMixer._select`)."""
        n = p.shape[1]
        score = p[:, :, 0]
        if self.stochastic:
            # The official draw (one Gumbel sample of B*N*2 values from the global RNG), the ODI
            # count rule and the official (unstable) argsort.
            hard = F.gumbel_softmax(p, hard=True, dim=2)[:, :, 0:1]
            k = odi_k(n, hard.mean())
            return torch.argsort(score, dim=1, descending=True)[:, :k]
        k = deterministic_k(n, self.route.ratio)
        return torch.sort(score, dim=1, descending=True, stable=True).indices[:, :k]

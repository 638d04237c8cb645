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
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import AUTO_RATIO as AUTO
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
    """detailsr's fixed rule: K = floor(N * ratio + 0.5) (halves round up), clamped to [0, N]."""
    return min(max(int(math.floor(n * ratio + 0.5)), 0), n)


def auto_k(p_hard: torch.Tensor) -> int:
    """K of ratio "auto" for one image: floor(sum of p_hard + 0.5), the number of windows the official
    rule K = N * r * 2 * gamma attends on average at gamma = 0.5 (r: the mean of one hard Gumbel draw
    per window, whose expectation is the mean of p_hard), without the draw. p_hard: (N,)."""
    return min(int(math.floor(float(p_hard.detach().sum()) + 0.5)), p_hard.shape[0])


def rank_windows(logits: torch.Tensor, ratio: float | str) -> torch.Tensor:
    """The deterministic choice: indices (B, K) of the windows that attend, best first.

    Windows are ranked by the predictor's margin logit[hard] - logit[easy] before its softmax: the
    trained predictors saturate, and many probabilities are exactly 1.0 and would tie (raster order
    would then decide), while the margins do not tie. Equal margins keep window-index order.
    K: `deterministic_k(N, ratio)`, or `auto_k` per image with ratio "auto" (one image at a time).
    """
    b, n, _ = logits.shape
    order = torch.sort(logits[..., 0] - logits[..., 1], dim=1, descending=True, stable=True).indices
    if ratio != AUTO:
        return order[:, : deterministic_k(n, ratio)]
    if b != 1:
        raise ValueError("ratio 'auto' routes one image at a time (the networks split batches)")
    return order[:, : auto_k(torch.softmax(logits[0].float(), dim=-1)[:, 0])]


def graph_k(logits: torch.Tensor, ratio: float | str) -> torch.Tensor:
    """K per image (B,) int64 as tensor ops (for ONNX export): `deterministic_k` or `auto_k`, in
    float64 as Python computes them."""
    n = torch.ones_like(logits[..., 0], dtype=torch.float64).sum(1)  # the window count, traced
    if ratio == AUTO:
        expected = torch.softmax(logits.float(), dim=-1)[..., 0].sum(1).to(torch.float64)
    else:
        expected = n * float(ratio)
    return torch.minimum(torch.floor(expected + 0.5).clamp(min=0), n).long()


def top_windows(margin: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Indices (B, k) of the largest margins, ties to the lower index as in `rank_windows`."""
    if torch.jit.is_tracing():
        # ONNX TopK breaks ties by the lower index: the stable sort's order (ONNX has no stable Sort)
        return torch.topk(margin, k, dim=1).indices
    return torch.sort(margin, dim=1, descending=True, stable=True).indices[:, : int(k)]


def mask_logits(out_mask: nn.Sequential, m: torch.Tensor) -> torch.Tensor:
    """The window scores before the final softmax of a predictor's `out_mask` (B, N, 2)."""
    for layer in list(out_mask)[:-1]:
        m = layer(m)
    return m


def official_gamma(ratio: float | str) -> float:
    """The gamma of the official rules (K count, ratio loss) for `ratio`: "auto" takes their
    expectation at 0.5, so it draws and trains as 0.5."""
    return 0.5 if ratio == AUTO else ratio


def hard_mask(logits: torch.Tensor) -> torch.Tensor:
    """One hard Gumbel draw per window from p = softmax(logits), as the official code draws (the
    global torch RNG): 1.0 where the window attends, (B, N, 1)."""
    return F.gumbel_softmax(torch.softmax(logits, dim=-1), hard=True, dim=2)[:, :, 0:1]


def official_draw(logits: torch.Tensor, count: Callable[[int, torch.Tensor], int]) -> torch.Tensor:
    """The official stochastic choice: indices (B, K) of the windows that attend, K = count(N, the
    mean of one `hard_mask` draw), the windows sorted by p as the official code sorts them. Many p
    saturate to exactly 1.0 and tie; torch's (unstable) argsort orders ties its own way, so only this
    call reproduces the official window choice."""
    p = torch.softmax(logits, dim=-1)
    hard = hard_mask(logits)
    return torch.argsort(p[:, :, 0], dim=1, descending=True)[:, : count(p.shape[1], hard.mean())]


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
        """Window logits (B, N, 2) (their softmax: the official p), offsets (B, 2, H, W), ca (B, C, 1, 1),
        sa (B, 1, H, W)."""
        z = self.in_conv(cond)
        offsets = torch.tanh(self.out_offsets(z)) * 8
        ca = self.out_CA(z)
        sa = self.out_SA(z)
        m = window_partition(z.mean(1, keepdim=True), self.window_size).squeeze(-1)
        return mask_logits(self.out_mask, m), offsets, ca, sa


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
        # ONNX export only (`detailsr.export`): route with tensor ops (`_mix_graph`) so that a traced
        # graph keeps the routing for any input size; off otherwise (the forward is unchanged).
        self.graph_routing = False
        self.project_v = nn.Conv2d(dim, dim, 1)
        self.project_q = nn.Linear(dim, dim)
        self.project_k = nn.Linear(dim, dim)
        self.conv_sptial = nn.Sequential(
            nn.Conv2d(dim, dim, 3, 1, 1, groups=dim),
            nn.Conv2d(dim, dim, 3, 1, 2, dilation=2, groups=dim),
        )
        self.project_out = nn.Conv2d(dim, dim, 1)
        self.route = PredictorLG(dim, window_size, ratio)

    def set_ratio(self, ratio: float | str) -> None:
        self.ratio = ratio
        self.route.ratio = ratio

    def forward(self, x: torch.Tensor, global_condition: torch.Tensor):
        """The mixed features; a training forward records the attended share (B, 1) for the ratio loss."""
        ws = self.window_size
        b, _, h, w = x.shape
        v = self.project_v(x)
        cw = window_condition(h, w, ws, x).expand(b, -1, -1, -1)
        logits, offsets, ca, sa = self.route(torch.cat((v, global_condition, cw), dim=1))
        k_in = x + flow_warp(x, offsets)
        grid = (h // ws, w // ws)

        if self.training:
            mask = hard_mask(logits)
            self.record = MixerRecord(hard_fraction=mask.mean(1))  # (B, 1), read by the ratio loss
            return self._finish(self._mix_dense(x, k_in, v, sa, mask), ca)

        if self.graph_routing:
            return self._finish(self._mix_graph(x, k_in, v, sa, logits), ca)
        keep = self._veto_pure(self._select(logits))
        self.record = self._record(keep, grid, b)
        if self.dense_reference:
            mask = torch.zeros_like(logits[:, :, :1]).scatter_(1, keep[..., None], 1.0)
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

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Indices (B, K) of the windows that get attention: `rank_windows`, or the official draw."""
        if not self.stochastic:
            return rank_windows(logits, self.route.ratio)
        gamma = official_gamma(self.route.ratio)
        return official_draw(logits, lambda n, hard_fraction: official_k(n, hard_fraction, gamma))

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

    def _mix_graph(self, x, k_in, v, sa, logits):
        """Export only: `rank_windows` + `_mix_gather` in tensor ops, the same outputs.

        K is a tensor computed from the traced window count (or, with ratio "auto", from the
        predictor's p), never a Python int, so the ONNX graph routes any size and content. Each
        image keeps its own K ("auto"): ranks past it keep their cheap `v * sa` windows.
        """
        ws = self.window_size
        _, c, h, w = x.shape
        k_each = graph_k(logits, self.route.ratio)  # (B,)
        order = top_windows(logits[..., 0] - logits[..., 1], k_each.max())  # (B, K_max)
        index = order[:, :, None, None].expand(-1, -1, ws * ws, c)
        cheap = window_partition(v * sa, ws)
        attended = self._attend(*(torch.gather(window_partition(t, ws), 1, index) for t in (x, k_in, v)))
        rank = torch.ones_like(order).cumsum(1) - 1
        attended = torch.where((rank < k_each[:, None])[:, :, None, None], attended, torch.gather(cheap, 1, index))
        return window_unpartition(cheap.scatter(1, index, attended), ws, h, w)

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
        """Window logits (B, N, 2), offsets (B, 2, H, W), ca (B, C, 1, 1), sa (B, 1, H, W)."""
        z = self.in_conv(cond)
        offsets = self.out_offsets(z)
        ca = self.out_CA(z)
        sa = self.out_SA(z)
        m = window_partition(z.mean(1, keepdim=True), self.window_size).squeeze(-1)
        return mask_logits(self.out_mask, m), offsets, ca, sa


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
        logits, offsets, ca, sa = self.route(torch.cat((v, condition, cw), dim=1))
        qk = self._roll(flow_warp(x, offsets), -1)  # query = key = the warped, rolled map
        grid = (h // ws, w // ws)

        if self.training:
            mask = hard_mask(logits)
            self.record = MixerRecord(hard_fraction=mask.mean(1))  # (B, 1), read by the ratio loss
            return self._finish(self._roll(self._mix_dense(qk, qk, v, sa, mask), 1), ca)

        keep = self._select(logits)
        self.record = self._record(keep, grid, b, self.shift)
        if self.dense_reference:
            mask = torch.zeros_like(logits[:, :, :1]).scatter_(1, keep[..., None], 1.0)
            a = self._mix_dense(qk, qk, v, sa, mask)
        else:
            a = self._mix_gather(qk, qk, v, sa, keep)
        return self._finish(self._roll(a, 1), ca)

    def _select(self, logits: torch.Tensor) -> torch.Tensor:
        """Indices (B, K) of the attended windows: `rank_windows`, or the official ODI draw."""
        if not self.stochastic:
            return rank_windows(logits, self.route.ratio)
        return official_draw(logits, odi_k)  # the ODI count rule

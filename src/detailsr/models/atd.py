"""ATD and ATD-light, the CVPR 2024 Adaptive Token Dictionary networks (spec: arch-atd.md).

One class `ATD` builds both (they differ in width, depth, dictionary size and the reconstruction
tail); `ATDLight` only changes the defaults to the released ATD-light configuration. Module nesting
and attribute names follow the official code, so that its checkpoints, including the int64 buffer
`relative_position_index_SA`, load with `strict=True`.

Every transformer layer sums three token mixers on the same normalised input:

* `attn_atd` (`TokenDictionaryAttention`, TDCA): cross-attention to the group's learned token
  dictionary; its softmax map gives each token a category;
* `attn_aca` (`CategoryAttention`, AC-MSA): tokens sorted by category (`sort_tokens`) and cut into
  groups of `category_size` that attend inside the group (`group_attention`);
* `attn_win` (`WindowAttention`, (S)W-MSA): 16x16 (shifted) window attention (`window_attention`).

Variants inject their own mixer classes (`category_attention`: Pure-Pass; `window_attention`:
CAMixer-ATD-light) and per-forward values computed once from the input (`pure_tokens`, given to
AC-MSA; `routing_condition`, given to the window attention); the plain network uses neither.

After each forward each mixer holds in `record` a `MixerRecord` whose `work` says what it executed
(query tokens, keys per query, attention groups, MACs), which is what Pure-Pass reduces;
`ATD.executed_work()` sums it over the network.

Numerics follow the official op order (spec sections 5 and 9): the category sort is the official
unstable `torch.sort` of the (B, N) int64 category tensor, whose tie order decides the groups; the
input is padded with the edge-repeating "symmetric" mirror. The "naive" attention backend (the
default) spells the official computation out and reproduces the official CPU outputs bit for bit
(checked against the official code, tests/data/atd_reference.safetensors); "sdpa" uses PyTorch's
fused kernel and agrees to float rounding (~2e-6 at the output), but that rounding can flip a
near-tied category and so regroup every later AC-MSA: measured on 64x64 inputs with random weights,
up to 1.3e-2 (ATD-light x2) and 7e-2 (ATD x4) max abs vs naive. Hence "naive" stays the default.
TDCA always runs explicitly: its probabilities are needed as such. Memory layouts follow the official
code where they change the kernel (the dictionary is a real per-item copy, the FFN's depthwise conv
gets a contiguous map); otherwise batches of more than one image round differently (~1e-6).

Outside autograd (eval under `no_grad` / `inference_mode`) the naive backend takes an inference
path with the same bits: the attention runs a few windows / groups at a time (`blocked_attention`,
so that the scores stay in cache instead of a (windows, heads, n, n) tensor going through memory
four times), the roll + window split and the category gathers are single `index_select`s
(`window_order`, `take_tokens`), and the gathered position bias (per weights) and the shift mask
(per size) are cached. tests/test_atd_speed_paths.py checks it bitwise against the plain path,
which autograd forwards take.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .base import SRNetwork
from .layers import DerivedTensor, Upsampler, attention
from .record import MixerRecord, MixerWork, RecordingMixer

RGB_MEAN = (0.4488, 0.4371, 0.4040)
ACMSA_MAX_LOG_SCALE = math.log(100.0)  # AC-MSA's logit scale is clamped at ln 100 (multiplier 100)
SHIFT_MASK_VALUE = -100.0  # Swin's large negative number, not -inf
TAIL_FEATURES = 64  # width of the full model's `pixelshuffle` tail (fixed in the official code)
INDEX_BUFFER = "relative_position_index_SA"


# --------------------------------------------------------------------------------------------------
# Fixed tensors of the official forward.


def pad_symmetric(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad bottom/right to a multiple by the official mirror: row H+i repeats row H-1-i.

    The official forward concatenates the image with its flip and keeps the first rows (then the
    same for columns), i.e. numpy's `np.pad(mode="symmetric")`; it needs pad <= side.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph > h or pw > w:
        raise ConfigError(
            f"ATD mirrors its input to a multiple of {multiple}, which needs sides of at least "
            f"{(multiple + 1) // 2} pixels; got {h}x{w} (detailsr.upscale pads smaller images)"
        )
    if ph:
        x = torch.cat([x, torch.flip(x, [2])], 2)[:, :, : h + ph, :]
    if pw:
        x = torch.cat([x, torch.flip(x, [3])], 3)[:, :, :, : w + pw]
    return x


def relative_position_index(window_size: int) -> torch.Tensor:
    """(ws^2, ws^2) int64: index[p, q] = (ip - iq + ws - 1) * (2ws - 1) + (jp - jq + ws - 1)."""
    ws = window_size
    rows, cols = torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")
    coords = torch.stack((rows.flatten(), cols.flatten()))  # (2, n), p = i * ws + j
    rel = coords[:, :, None] - coords[:, None, :]  # (2, n, n): p - q
    return (rel[0] + ws - 1) * (2 * ws - 1) + (rel[1] + ws - 1)


def shift_window_mask(
    h: int, w: int, window_size: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Swin's mask of the shifted windows of an (h, w) map: (nW, n, n), 0 or -100.

    Region ids are 3 * row band + column band, the bands being [0, h-ws), [h-ws, h-ws/2),
    [h-ws/2, h) (and the same for columns) of the un-rolled grid.
    """
    ws, shift = window_size, window_size // 2
    ids = torch.zeros(h, w, device=device)
    bands_h = (slice(0, h - ws), slice(h - ws, h - shift), slice(h - shift, h))
    bands_w = (slice(0, w - ws), slice(w - ws, w - shift), slice(w - shift, w))
    for r, rows in enumerate(bands_h):
        for c, cols in enumerate(bands_w):
            ids[rows, cols] = 3 * r + c
    windows = ids.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, ws * ws)
    differ = windows[:, None, :] != windows[:, :, None]
    zero = torch.zeros((), device=device, dtype=dtype)
    return torch.where(differ, torch.full((), SHIFT_MASK_VALUE, device=device, dtype=dtype), zero)


def category_sort(categories: torch.Tensor) -> torch.Tensor:
    """Token order by category, exactly the official call: unstable `torch.sort` of a (B, N) int64.

    Ties (many: N tokens share m categories) come in whatever order that sort leaves them, and the
    order decides the AC-MSA groups, so keep the 2-D tensor (the 1-D CPU sort orders ties
    differently for large N) and the unstable algorithm. This reproduces the official CPU order;
    CUDA sorts may order ties differently, so GPU outputs (official or ours) are device-dependent.
    """
    if categories.dim() != 2:
        raise ValueError(f"category_sort takes a (B, N) tensor, got shape {tuple(categories.shape)}")
    return torch.sort(categories.contiguous(), dim=-1, stable=False).indices


def _window_split(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, h, w, C) -> (B * nW, ws * ws, C): windows batch-major then row-major, tokens row-major."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def _window_merge(x: torch.Tensor, ws: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `_window_split`: (B * nW, ws * ws, C) -> (B, h, w, C)."""
    c = x.shape[-1]
    b = x.shape[0] // ((h // ws) * (w // ws))
    x = x.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b, h, w, c)


@functools.lru_cache(maxsize=16)
def window_order(h: int, w: int, ws: int, shift: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse), each (1, h * w) int64, for the (S)W-MSA windows of an (h, w) token map.

    order[p] is the token at place p of `_window_split` of the map rolled by (-shift, -shift);
    `inverse` undoes it (merge and roll back). Cached per size: shared read-only index tensors.
    """
    with torch.inference_mode(False):  # normal tensors: usable by any later forward
        rows = (torch.arange(h, device=device) + shift) % h  # torch.roll by -shift reads row y + shift
        cols = (torch.arange(w, device=device) + shift) % w
        tokens = rows[:, None] * w + cols[None, :]
        order = tokens.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(1, -1)
        inverse = torch.empty_like(order).scatter_(1, order, torch.arange(h * w, device=device)[None])
    return order, inverse


def _tokens_to_image(x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
    b, _, c = x.shape
    return x.transpose(1, 2).view(b, c, *x_size)


def _image_to_tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)


def take_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) gathered along tokens: out[:, t] = x[:, index[:, t]], a contiguous (B, T, C).

    The values of `layers.gather_tokens` (a pure copy), but as one `index_select` of whole rows,
    which on CPU is about 10x faster than `torch.gather` with an index expanded over channels.
    """
    b, n, c = x.shape
    if b > 1:
        index = index + torch.arange(0, b * n, n, device=index.device)[:, None]  # rows of the (B*N, C) view
    return x.reshape(b * n, c).index_select(0, index.reshape(-1)).view(b, -1, c)


def _grad_needed(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


# Bytes of attention scores computed at a time by `blocked_attention`: about one core's L2 cache.
SCORE_BLOCK_BYTES = 1 << 20


def blocked_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, finish_scores: Callable[[torch.Tensor, int, int], None],
) -> torch.Tensor:
    """softmax(finish_scores(q k^T)) v for q, k, v (G, heads, n, d), a few items of G at a time.

    Returns a (G, n, heads, d) view: the heads side by side, as `proj` takes them after a reshape.
    `finish_scores(s, i, j)` adds the bias terms (or the scale) in place to the scores s
    (j - i, heads, n, n) of items [i, j), in the op order of the naive backend. The operands are the
    contiguous copies that `q @ k.transpose(-2, -1)` and `p @ v` make of these views themselves, and
    every item's matmuls and every softmax row run the same kernels as for the whole tensor, so the
    result is bitwise that of the unblocked naive computation (tests/test_atd_speed_paths.py). What
    changes is that only one block's scores (about one L2 cache) exist at a time, instead of a
    (G, heads, n, n) tensor that the unblocked code writes to memory and reads back once per bias
    term and twice in the softmax. No autograd: the callers use it only when nothing needs a gradient.
    """
    g, heads, n, d = q.shape
    m, dv = k.shape[-2], v.shape[-1]
    q3 = q.reshape(g * heads, n, d)
    k3 = k.transpose(-2, -1).reshape(g * heads, d, m)
    v3 = v.reshape(g * heads, m, dv)
    out = q.new_empty(g * heads, n, dv)
    step = max(1, SCORE_BLOCK_BYTES // (heads * n * m * q.element_size()))
    for i in range(0, g, step):
        j = min(i + step, g)
        rows = slice(i * heads, j * heads)
        scores = torch.bmm(q3[rows], k3[rows])
        finish_scores(scores.view(j - i, heads, n, m), i, j)
        torch.bmm(torch.softmax(scores, dim=-1), v3[rows], out=out[rows])
    return out.view(g, heads, n, dv).transpose(1, 2)


def _window_rows(mask: torch.Tensor, i: int, j: int) -> torch.Tensor:
    """The shift masks of windows [i, j) of a batch of images with nW = len(mask) windows each."""
    nw = mask.shape[0]
    if i // nw == (j - 1) // nw:  # inside one image: a view
        return mask[i % nw : (j - 1) % nw + 1]
    return mask[torch.arange(i, j, device=mask.device) % nw]


# --------------------------------------------------------------------------------------------------
# The three token mixers.


class WindowAttention(RecordingMixer):
    """(S)W-MSA (`attn_win`): multi-head attention in ws x ws windows with a relative position bias.

    Takes the layer's shared QKV (B, N, 3C); `shift` rolls the map by -shift first (and back after)
    and adds the shift mask. The bias index is the network's shared buffer, passed in.
    """

    def __init__(self, dim: int, window_size: int, num_heads: int) -> None:
        super().__init__()
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * window_size - 1) ** 2, num_heads))
        self.proj = nn.Linear(dim, dim)
        self.attn_type = "naive"
        self._bias_cache = DerivedTensor()
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def forward(
        self, qkv: torch.Tensor, x_size: tuple[int, int], shift: int, rpi: torch.Tensor, mask: torch.Tensor | None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """qkv (B, N, 3C) -> (B, N, C). `condition`: a routing condition map, which only the routed
        variant (`camixer_atd.RoutedWindowAttention`) takes."""
        if condition is not None:
            raise ValueError("the plain window attention takes no routing condition")
        b, n_tok, c3 = qkv.shape
        h, w = x_size
        ws = self.window_size
        n, c = ws * ws, self.dim
        self.record = MixerRecord(work=MixerWork(b * n_tok, n, b * n_tok // n, b * n_tok * (2 * n * c + c * c)))
        if not _grad_needed(qkv):
            # The roll and the window split folded into one row gather, and back: the same values
            # copied to the same places, in two passes over the map instead of six.
            order, inverse = window_order(h, w, ws, shift, qkv.device)
            out = self.window_attention(take_tokens(qkv, order).view(-1, n, c3), rpi, mask if shift else None)
            return take_tokens(out.view(b, n_tok, c), inverse)
        grid = qkv.view(b, h, w, c3)
        if shift:
            grid = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2))
        out = self.window_attention(_window_split(grid, ws), rpi, mask if shift else None)
        grid = _window_merge(out, ws, h, w)
        if shift:
            grid = torch.roll(grid, shifts=(shift, shift), dims=(1, 2))
        return grid.reshape(b, n_tok, c)

    def position_bias(self, rpi: torch.Tensor) -> torch.Tensor:
        """(heads, n, n): bias[h, p, q] = table[index[p, q], h].

        Outside training and autograd the gathered bias is cached, as `esc.LargeKernelNetwork`
        caches its kernel: keyed on the table's and the index's storage, version counter, device
        and dtype, so `load_state_dict`, an optimiser step, `copy_` or `.to()` rebuild it; `train()`
        and `_apply` drop it. It is never saved.
        """
        table = self.relative_position_bias_table
        if self.training or _grad_needed(table):
            return self._gather_bias(table, rpi)
        return self._bias_cache.get((table, rpi), lambda: self._gather_bias(table.detach(), rpi))

    def _gather_bias(self, table: torch.Tensor, rpi: torch.Tensor) -> torch.Tensor:
        n = self.window_size * self.window_size
        return table[rpi.view(-1)].view(n, n, -1).permute(2, 0, 1).contiguous()

    def train(self, mode: bool = True):
        self._bias_cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._bias_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def window_attention(self, windows: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention inside each window: (B*nW, n, 3C) -> projected (B*nW, n, C)."""
        return self.proj(self.attend_windows(windows, rpi, mask))

    def attend_windows(self, windows: torch.Tensor, rpi: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Multi-head attention inside each window, heads concatenated, before `proj`: (B*nW, n, 3C) -> (B*nW, n, C).

        `mask` (nW, n, n) is added per window, the windows of `windows` being nW per image, in order.
        """
        bw, n, c3 = windows.shape
        heads = self.num_heads
        qkv = windows.reshape(bw, n, 3, heads, c3 // (3 * heads)).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B*nW, heads, n, d)
        if self.attn_type == "naive" and not _grad_needed(windows, self.relative_position_bias_table):
            return self._attend_blocked(q, k, v, self.position_bias(rpi), mask).reshape(bw, n, c3 // 3)
        terms = [self.position_bias(rpi)]  # (heads, n, n)
        if mask is not None:  # per window: attend as (B, nW, heads, n, d) so that the mask broadcasts
            nw = mask.shape[0]
            q, k, v = (t.reshape(bw // nw, nw, heads, n, -1) for t in (q, k, v))
            terms.append(mask.unsqueeze(1))  # (nW, 1, n, n)
        y = attention(q, k, v, self.scale, self.attn_type, terms, scale_queries=True)
        return y.reshape(bw, heads, n, -1).transpose(1, 2).reshape(bw, n, c3 // 3)

    def _attend_blocked(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """The naive backend's window attention, a few windows at a time (`blocked_attention`):
        the same ops in the same order (queries scaled first, + bias, + mask), bitwise the same."""

        def finish(scores: torch.Tensor, i: int, j: int) -> None:
            scores.add_(bias)
            if mask is not None:
                scores.add_(_window_rows(mask, i, j).unsqueeze(1))

        return blocked_attention(q * self.scale, k, v, finish)


class TokenDictionaryAttention(RecordingMixer):
    """TDCA (`attn_atd`): single-head cosine cross-attention of the tokens to the dictionary.

    Returns the mixed tokens and the softmax map P (B, N, m) that AC-MSA and the refinement use.
    """

    def __init__(self, dim: int, reducted_dim: int, num_tokens: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.scale = nn.Parameter(torch.full((num_tokens,), 0.5))
        # `qkv_bias` also governs these three biases in the official code
        self.wq = nn.Linear(dim, reducted_dim, bias=qkv_bias)
        self.wk = nn.Linear(dim, reducted_dim, bias=qkv_bias)
        self.wv = nn.Linear(dim, dim, bias=qkv_bias)

    def forward(self, xn: torch.Tensor, dictionary: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.wq(xn)
        k = self.wk(dictionary)
        v = self.wv(dictionary)
        sim = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        tau = torch.clamp(self.scale, 0, 1)
        sim = sim * (1 + tau * math.log(self.num_tokens))
        probs = torch.softmax(sim, dim=-1)
        b, n, c = xn.shape
        m, rc = self.num_tokens, q.shape[-1]
        self.record = MixerRecord(work=MixerWork(b * n, m, b, b * n * (c * rc + m * rc + m * c) + b * m * c * (rc + c)))
        return probs @ v, probs


class CategoryAttention(RecordingMixer):
    """AC-MSA (`attn_aca`): attention inside groups of tokens of similar dictionary category.

    `sort_tokens` orders the tokens by the argmax of the TDCA map (official unstable sort),
    `group_attention` cuts the sorted QKV into groups of `category_size` and attends per group
    (no 1/sqrt(d); a learned logit scale clamped at ln 100), then the result is put back into
    token order and projected.
    """

    def __init__(self, dim: int, num_heads: int, category_size: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.dim, self.num_heads, self.category_size = dim, num_heads, category_size
        self.logit_scale = nn.Parameter(torch.log(10 * torch.ones(1, 1)))
        self.proj = nn.Linear(dim, dim, bias=qkv_bias)  # official: bias=qkv_bias (unlike attn_win.proj)
        self.attn_type = "naive"

    def forward(self, qkv: torch.Tensor, sim: torch.Tensor, pure: torch.Tensor | None = None) -> torch.Tensor:
        """qkv (B, N, 3C), sim (B, N, m) -> (B, N, C). `pure`: a Pure-Pass token mask, which only the
        Pure-Pass variant (`purepass.PureCategoryAttention`) takes."""
        if pure is not None:
            raise ValueError("the plain AC-MSA takes no Pure-Pass mask")
        order, inverse = self.sort_tokens(sim)
        y = self.group_attention(take_tokens(qkv, order))
        return self.proj(take_tokens(y, inverse))

    @staticmethod
    def sort_tokens(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(order, inverse), each (B, N): order[t] is the token at sorted place t; inverse undoes it."""
        order = category_sort(sim.argmax(dim=-1))
        positions = torch.arange(order.shape[1], device=order.device).expand_as(order)
        inverse = torch.empty_like(order).scatter_(1, order, positions)
        return order, inverse

    def group_attention(self, z: torch.Tensor) -> torch.Tensor:
        """Sorted QKV (B, N, 3C) -> attended (B, N, C), still in sorted order.

        Groups are consecutive runs of gs = min(N, category_size) sorted tokens (they ignore category
        boundaries). When gs does not divide N, the sequence is extended to ng * gs tokens by its own
        last `pad` tokens in reverse order; those take part as keys and values, their outputs are
        dropped.
        """
        b, n, c3 = z.shape
        c, heads = c3 // 3, self.num_heads
        gs = min(n, self.category_size)
        ng = -(-n // gs)
        pad = ng * gs - n
        if pad:
            z = torch.cat([z, torch.flip(z[:, n - pad : n], [1])], dim=1)
        qkv = z.reshape(b, ng, gs, 3, heads, c // heads).permute(3, 0, 1, 4, 2, 5)
        q, k, v = qkv[0], qkv[1], qkv[2]  # (B, ng, heads, gs, d)
        scale = torch.clamp(self.logit_scale, max=ACMSA_MAX_LOG_SCALE).exp()  # learned, no 1/sqrt(d)
        if self.attn_type == "naive" and not _grad_needed(z, scale):
            # the naive op order ((q k^T) * scale, softmax, @ v), a few groups at a time: bitwise the same
            y = blocked_attention(q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1),
                                  lambda scores, i, j: scores.mul_(scale))
            y = y.reshape(b, ng * gs, c)[:, :n]
        else:
            y = attention(q, k, v, scale, self.attn_type)
            y = y.transpose(2, 3).reshape(b, ng * gs, c)[:, :n]
        self.record = MixerRecord(work=MixerWork(b * n, gs, b * ng, b * (2 * ng * gs * gs * c + n * c * c)))
        return y


# --------------------------------------------------------------------------------------------------
# Layers, groups, network.


class DWConv(nn.Module):
    """Depth-wise k x k conv + GELU on the token map (keys `depthwise_conv.0.*`)."""

    def __init__(self, channels: int, kernel_size: int) -> None:
        super().__init__()
        self.depthwise_conv = nn.Sequential(
            nn.Conv2d(channels, channels, kernel_size, 1, (kernel_size - 1) // 2, groups=channels),
            nn.GELU(),
        )

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        # The official code makes the map contiguous (NCHW) before the conv. Without it, a batch of
        # more than one image hands the conv a channels-last-strided view, which takes another
        # kernel and rounds differently (~1e-6 at the output).
        return _image_to_tokens(self.depthwise_conv(_tokens_to_image(x, x_size).contiguous()))


class ConvFFN(nn.Module):
    """u = GELU(fc1(z)); u = u + GELU(dwconv(u)); fc2(u)."""

    def __init__(self, dim: int, hidden: int, kernel_size: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dwconv = DWConv(hidden, kernel_size)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, x_size: tuple[int, int]) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = x + self.dwconv(x, x_size)
        return self.fc2(x)


class ATDTransformerLayer(nn.Module):
    """One ATD layer: x + W-MSA + TDCA + AC-MSA, then x + ConvFFN; refines the dictionary unless last."""

    def __init__(
        self, dim: int, num_heads: int, window_size: int, shift_size: int, category_size: int, num_tokens: int,
        reducted_dim: int, convffn_kernel_size: int, mlp_ratio: float, qkv_bias: bool, is_last: bool,
        category_attention: type[CategoryAttention] = CategoryAttention,
        window_attention: Callable[[int, int, int], WindowAttention] = WindowAttention,
    ) -> None:
        super().__init__()
        self.shift_size = shift_size
        self.is_last = is_last
        if not is_last:
            self.sigma = nn.Parameter(torch.zeros(num_tokens, 1))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        if not is_last:
            self.norm3 = nn.InstanceNorm1d(num_tokens, affine=True)
        self.wqkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_win = window_attention(dim, window_size, num_heads)
        self.attn_atd = TokenDictionaryAttention(dim, reducted_dim, num_tokens, qkv_bias)
        self.attn_aca = category_attention(dim, num_heads, category_size, qkv_bias)
        self.convffn = ConvFFN(dim, _hidden(dim, mlp_ratio), convffn_kernel_size)

    def forward(
        self, x: torch.Tensor, dictionary: torch.Tensor, x_size: tuple[int, int], rpi: torch.Tensor,
        mask: torch.Tensor | None, pure: torch.Tensor | None = None, condition: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        xn = self.norm1(x)
        qkv = self.wqkv(xn)
        x_td, sim = self.attn_atd(xn, dictionary)
        x_ac = self.attn_aca(qkv, sim, pure)
        x_w = self.attn_win(qkv, x_size, self.shift_size, rpi, mask, condition)
        x = x + x_w + x_td + x_ac
        x = x + self.convffn(self.norm2(x), x_size)
        if not self.is_last:
            dictionary = self.refine(dictionary, sim, x)
        return x, dictionary

    def refine(self, dictionary: torch.Tensor, sim: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """D' = s D + (1 - s) softmax_N(InstanceNorm(P^T)) x, s = sigmoid(sigma)."""
        weights = torch.softmax(self.norm3(sim.transpose(-1, -2)), dim=-1)
        s = torch.sigmoid(self.sigma)
        return s * dictionary + (1 - s) * (weights @ x)


class ATDBasicBlock(nn.Module):
    """The dictionary `td` (m, C) and the layers of one group (keys `residual_group.*`)."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, category_size: int,
                 num_tokens: int, reducted_dim: int, convffn_kernel_size: int, mlp_ratio: float,
                 qkv_bias: bool, category_attention: type[CategoryAttention] = CategoryAttention,
                 window_attention: Callable[[int, int, int], WindowAttention] = WindowAttention) -> None:
        super().__init__()
        self.td = nn.Parameter(torch.randn(num_tokens, dim))
        self.layers = nn.ModuleList(
            ATDTransformerLayer(
                dim, num_heads, window_size, 0 if j % 2 == 0 else window_size // 2, category_size, num_tokens,
                reducted_dim, convffn_kernel_size, mlp_ratio, qkv_bias, is_last=j == depth - 1,
                category_attention=category_attention, window_attention=window_attention,
            )
            for j in range(depth)
        )

    def forward(self, x, x_size, rpi, mask, pure=None, condition=None):
        # A real copy per batch item, as the official `td.repeat`: a stride-0 expanded view makes
        # the dictionary's wk/wv matmuls take another kernel when B > 1 (rounding differs ~1e-7).
        dictionary = self.td.repeat(x.shape[0], 1, 1)
        for layer in self.layers:
            x, dictionary = layer(x, dictionary, x_size, rpi, mask, pure, condition)
        return x


class ATDB(nn.Module):
    """A residual group (keys `layers.i.*`): the block stack, a 3x3 conv, and the group skip."""

    def __init__(self, dim: int, **kwargs: Any) -> None:
        super().__init__()
        self.residual_group = ATDBasicBlock(dim, **kwargs)
        self.conv = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x, x_size, rpi, mask, pure=None, condition=None):
        y = self.residual_group(x, x_size, rpi, mask, pure, condition)
        return _image_to_tokens(self.conv(_tokens_to_image(y, x_size))) + x


class PatchEmbed(nn.Module):
    """Image -> tokens, then LayerNorm when `patch_norm` (key `patch_embed.norm.*`)."""

    def __init__(self, dim: int, patch_norm: bool) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim) if patch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _image_to_tokens(x)
        return x if self.norm is None else self.norm(x)


def _hidden(dim: int, mlp_ratio: float) -> int:
    # The official int(dim * mlp_ratio); the rounding keeps a ratio read back from shapes exact.
    return int(round(dim * mlp_ratio, 6))


UPSAMPLERS = ("pixelshuffledirect", "pixelshuffle")


class ATD(SRNetwork):
    """ATD (defaults: the released full model). `net(x)`: (B, 3, H, W) in [0, 1] -> (B, 3, sH, sW).

    The network mirrors its input to a multiple of `window_size` itself (`size_multiple` 1) and
    needs sides of at least window_size / 2 for that. The dictionary refinement and the category
    groups look at the whole (padded) image, so tiling changes every output pixel: `tile_safe` is
    False. `category_size` cannot be read from weights (official: 256 for ATD, 128 for ATD-light).
    Train and eval forwards are the same function (no dropout, no running statistics). The official
    `use_checkpoint` (activation checkpointing, memory only) and the unused `nearest+conv` / ''
    tails are not offered.
    """

    arch = "atd"
    min_size = 8
    size_multiple = 1
    tile_safe = False
    pipeline_multiple = 1

    def __init__(
        self,
        scale: int = 4,
        embed_dim: int = 210,
        depths: Sequence[int] = (6, 6, 6, 6, 6, 6),
        num_heads: Sequence[int] = (6, 6, 6, 6, 6, 6),
        window_size: int = 16,
        category_size: int = 256,
        num_tokens: int = 128,
        reducted_dim: int = 20,
        convffn_kernel_size: int = 5,
        mlp_ratio: float = 2.0,
        upsampler: str = "pixelshuffle",
        in_chans: int = 3,
        qkv_bias: bool = True,
        patch_norm: bool = True,
        img_range: float = 1.0,
        category_attention: type[CategoryAttention] = CategoryAttention,
        window_attention: Callable[[int, int, int], WindowAttention] = WindowAttention,
    ) -> None:
        depths, num_heads = [int(d) for d in depths], [int(h) for h in num_heads]
        config = {
            "scale": scale, "embed_dim": embed_dim, "depths": depths, "num_heads": num_heads,
            "window_size": window_size, "category_size": category_size, "num_tokens": num_tokens,
            "reducted_dim": reducted_dim, "convffn_kernel_size": convffn_kernel_size, "mlp_ratio": mlp_ratio,
            "upsampler": upsampler, "in_chans": in_chans, "qkv_bias": qkv_bias, "patch_norm": patch_norm,
            "img_range": img_range,
        }
        _check_config(config)
        super().__init__(scale, config)
        if type(self).arch in ("atd", "atd_light"):  # the tail tells the two apart; variants name themselves
            self.arch = "atd_light" if upsampler == "pixelshuffledirect" else "atd"
        self.window_size = window_size
        self.min_size = (window_size + 1) // 2
        self.img_range = img_range
        self.upsampler = upsampler
        mean = RGB_MEAN if in_chans == 3 else (0.0,)
        # A plain constant in the official code (not in its state dict); the index is stored there.
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer(INDEX_BUFFER, relative_position_index(window_size))
        self._mask_cache: tuple[tuple, torch.Tensor] | None = None

        self.conv_first = nn.Conv2d(in_chans, embed_dim, 3, 1, 1)
        self.patch_embed = PatchEmbed(embed_dim, patch_norm)
        self.layers = nn.ModuleList(
            ATDB(
                embed_dim, depth=depth, num_heads=heads, window_size=window_size, category_size=category_size,
                num_tokens=num_tokens, reducted_dim=reducted_dim, convffn_kernel_size=convffn_kernel_size,
                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, category_attention=category_attention,
                window_attention=window_attention,
            )
            for depth, heads in zip(depths, num_heads, strict=True)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.conv_after_body = nn.Conv2d(embed_dim, embed_dim, 3, 1, 1)
        if upsampler == "pixelshuffledirect":
            self.upsample = Upsampler(embed_dim, scale, in_chans)
        else:
            self.conv_before_upsample = nn.Sequential(
                nn.Conv2d(embed_dim, TAIL_FEATURES, 3, 1, 1), nn.LeakyReLU(inplace=True)
            )
            self.upsample = _pixelshuffle_upsampler(scale, TAIL_FEATURES)
            self.conv_last = nn.Conv2d(TAIL_FEATURES, in_chans, 3, 1, 1)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_in, w_in = x.shape[-2:]
        ws = self.window_size
        x = pad_symmetric(x, ws)
        pure = self.pure_tokens(x)
        mean = self.mean.type_as(x)
        x = (x - mean) * self.img_range
        h, w = x.shape[-2:]
        mask = self.shift_mask(h, w, x)
        f0 = self.conv_first(x)
        f = self.conv_after_body(self.forward_features(f0, mask, pure, self.routing_condition(f0))) + f0
        if self.upsampler == "pixelshuffledirect":
            y = self.upsample(f)
        else:
            y = self.conv_last(self.upsample(self.conv_before_upsample(f)))
        y = y / self.img_range + mean
        return y[:, :, : h_in * self.scale, : w_in * self.scale]

    def shift_mask(self, h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        """`shift_window_mask` of the padded (h, w) map, on `like`'s device and dtype.

        A constant of the size (no weight in it), so the last one is kept and reused while images
        of the same size follow (its memory, nW * ws^4 floats, stays held between forwards);
        `_apply` (`.to()`, `.half()`) drops it.
        """
        key = (h, w, like.device, like.dtype)
        if self._mask_cache is None or self._mask_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():  # a normal tensor: usable by any later forward
                self._mask_cache = (key, shift_window_mask(h, w, self.window_size, like.device, like.dtype))
        return self._mask_cache[1]

    def _apply(self, fn, *args, **kwargs):
        self._mask_cache = None
        return super()._apply(fn, *args, **kwargs)

    def pure_tokens(self, x: torch.Tensor) -> torch.Tensor | None:
        """A (B, N) token mask of the padded input `x` that AC-MSA may skip (Pure-Pass); None: skip none."""
        return None

    def routing_condition(self, f0: torch.Tensor) -> torch.Tensor | None:
        """A map computed once from `conv_first`'s output and given to every window attention
        (CAMixer-ATD-light's global condition); None: the plain window attention needs none."""
        return None

    def forward_features(
        self, f: torch.Tensor, mask: torch.Tensor, pure: torch.Tensor | None = None,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x_size = (f.shape[2], f.shape[3])
        rpi = getattr(self, INDEX_BUFFER)
        x = self.patch_embed(f)
        for group in self.layers:
            x = group(x, x_size, rpi, mask, pure, condition)
        x = self.norm(x)
        return _tokens_to_image(x, x_size)

    def mixers(self) -> dict[str, list[nn.Module]]:
        """The expensive token mixers of every layer, in forward order, by official attribute name."""
        found: dict[str, list[nn.Module]] = {"attn_win": [], "attn_aca": [], "attn_atd": []}
        for m in self.modules():
            if isinstance(m, ATDTransformerLayer):
                for name, mixers in found.items():
                    mixers.append(getattr(m, name))
        return found

    def executed_work(self) -> dict[str, MixerWork]:
        """What each kind of mixer executed in the last forward, summed over layers."""
        total = {}
        for name, mixers in self.mixers().items():
            works = [m.record.work for m in mixers if m.record is not None]
            if works:
                total[name] = sum(works[1:], works[0])
        return total

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        # Official files carry the index buffer; a state dict without it (not a learned weight) gets
        # the computed one rather than a strict-loading failure.
        key = prefix + INDEX_BUFFER
        if key not in state_dict:
            state_dict[key] = getattr(self, INDEX_BUFFER)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


class ATDLight(ATD):
    """ATD with the released ATD-light defaults (C 48, 4 x 6 layers, m 64, pixelshuffledirect tail)."""

    arch = "atd_light"

    def __init__(
        self,
        scale: int = 4,
        embed_dim: int = 48,
        depths: Sequence[int] = (6, 6, 6, 6),
        num_heads: Sequence[int] = (4, 4, 4, 4),
        window_size: int = 16,
        category_size: int = 128,
        num_tokens: int = 64,
        reducted_dim: int = 8,
        convffn_kernel_size: int = 7,
        mlp_ratio: float = 1.0,
        upsampler: str = "pixelshuffledirect",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            scale, embed_dim, depths, num_heads, window_size, category_size, num_tokens, reducted_dim,
            convffn_kernel_size, mlp_ratio, upsampler, **kwargs,
        )


def _pixelshuffle_upsampler(scale: int, features: int) -> nn.Sequential:
    if scale == 3:
        return nn.Sequential(nn.Conv2d(features, 9 * features, 3, 1, 1), nn.PixelShuffle(3))
    steps = []
    for _ in range(int(math.log2(scale))):
        steps += [nn.Conv2d(features, 4 * features, 3, 1, 1), nn.PixelShuffle(2)]
    return nn.Sequential(*steps)


def _check_config(config: dict) -> None:
    scale, dim, upsampler = config["scale"], config["embed_dim"], config["upsampler"]
    if upsampler not in UPSAMPLERS:
        raise ConfigError(f"ATD upsampler must be one of {', '.join(UPSAMPLERS)}; got {upsampler!r}")
    if upsampler == "pixelshuffle" and not (scale == 3 or (scale >= 2 and scale & (scale - 1) == 0)):
        raise ConfigError(f"ATD's pixelshuffle tail supports scales 2^n and 3; got {scale}")
    if scale < 1:
        raise ConfigError(f"ATD scale must be a positive integer; got {scale}")
    if len(config["depths"]) != len(config["num_heads"]):
        raise ConfigError(f"ATD depths {config['depths']} and num_heads {config['num_heads']} differ in length")
    if any(dim % h for h in config["num_heads"]):
        raise ConfigError(f"ATD embed_dim {dim} is not divisible by every head count {config['num_heads']}")
    for name in ("window_size", "category_size", "num_tokens", "reducted_dim"):
        if config[name] < 1:
            raise ConfigError(f"ATD {name} must be positive; got {config[name]}")
    if config["window_size"] % 2:
        raise ConfigError(f"ATD window_size must be even (shift ws/2); got {config['window_size']}")


def _init_weights(m: nn.Module) -> None:
    """The official initialisation (only matters for training from scratch)."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# Architecture detection.


def _count(state_dict: Mapping, pattern: str) -> int:
    n = 0
    while pattern.format(n) in state_dict:
        n += 1
    return n


def _tail(state_dict: Mapping, in_chans: int) -> tuple[str, str, int] | None:
    """(arch, upsampler, scale) from the reconstruction tail's keys and shapes."""
    if "conv_before_upsample.0.weight" in state_dict:
        features = state_dict["conv_before_upsample.0.weight"].shape[0]
        convs = 0  # [conv, PixelShuffle] pairs: keys upsample.0, upsample.2, ...
        while f"upsample.{2 * convs}.weight" in state_dict:
            convs += 1
        if convs == 0 or "conv_last.weight" not in state_dict:
            return None
        out = state_dict["upsample.0.weight"].shape[0]
        if convs == 1 and out == 9 * features:
            return "atd", "pixelshuffle", 3
        if out == 4 * features:
            return "atd", "pixelshuffle", 2**convs
        return None
    if "upsample.0.weight" in state_dict:
        scale = math.isqrt(state_dict["upsample.0.weight"].shape[0] // in_chans)
        if in_chans * scale * scale != state_dict["upsample.0.weight"].shape[0]:
            return None
        return "atd_light", "pixelshuffledirect", scale
    return None


def detect(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """("atd" | "atd_light", hyper-parameters) for an ATD state dict (CVPR 2024 code), else None.

    ATD and ATD-light are told apart by the tail (`pixelshuffle` vs `pixelshuffledirect`); the scale,
    widths, depths, heads, window size (from the bias table), dictionary size, reduced dim, FFN kernel
    and ratio come from shapes. `category_size` is not in the weights: the variant's official value.
    """
    layer = "layers.{i}.residual_group.layers.{j}."
    first = layer.format(i=0, j=0)
    needed = ("conv_first.weight", "layers.0.residual_group.td", "layers.0.conv.weight", "conv_after_body.weight",
              first + "attn_atd.wq.weight", first + "attn_aca.logit_scale",
              first + "attn_win.relative_position_bias_table", first + "convffn.fc1.weight",
              first + "convffn.dwconv.depthwise_conv.0.weight")
    if not all(k in state_dict for k in needed):
        return None
    embed_dim, in_chans = state_dict["conv_first.weight"].shape[:2]
    tail = _tail(state_dict, in_chans)
    if tail is None:
        return None
    arch, upsampler, scale = tail
    n_groups = _count(state_dict, "layers.{}.residual_group.td")
    depths = [_count(state_dict, f"layers.{i}.residual_group.layers.{{}}.norm1.weight") for i in range(n_groups)]
    tables = [state_dict[layer.format(i=i, j=0) + "attn_win.relative_position_bias_table"] for i in range(n_groups)]
    span = math.isqrt(tables[0].shape[0])
    if span * span != tables[0].shape[0] or span % 2 == 0:
        return None
    hidden = state_dict[first + "convffn.fc1.weight"].shape[0]
    config = {
        "scale": scale,
        "embed_dim": int(embed_dim),
        "depths": depths,
        "num_heads": [int(t.shape[1]) for t in tables],
        "window_size": (span + 1) // 2,
        "category_size": 128 if arch == "atd_light" else 256,
        "num_tokens": int(state_dict["layers.0.residual_group.td"].shape[0]),
        "reducted_dim": int(state_dict[first + "attn_atd.wq.weight"].shape[0]),
        "convffn_kernel_size": int(state_dict[first + "convffn.dwconv.depthwise_conv.0.weight"].shape[-1]),
        "mlp_ratio": hidden / embed_dim,
        "upsampler": upsampler,
        "in_chans": int(in_chans),
        "qkv_bias": first + "wqkv.bias" in state_dict,
        "patch_norm": "patch_embed.norm.weight" in state_dict,
        "img_range": 1.0,
    }
    return arch, config


ARCHITECTURES = {"atd": ATD, "atd_light": ATDLight}


def build(arch: str, config: dict) -> SRNetwork:
    return ARCHITECTURES[arch](**config)

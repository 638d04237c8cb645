"""Building blocks shared by several architecture families."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import ATTENTION_BACKENDS


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

    BasicSR's `flow_warp` with border padding and align_corners=True. Half-precision inputs are
    warped in float32 (bfloat16 cannot tell pixel 200 from 201); the result has x's dtype.
    """
    _, _, h, w = x.shape
    dtype = coordinate_dtype(x)
    gy, gx = torch.meshgrid(
        torch.arange(h, dtype=dtype, device=x.device),
        torch.arange(w, dtype=dtype, device=x.device),
        indexing="ij",
    )
    px = gx + flow[:, 0].to(dtype)
    py = gy + flow[:, 1].to(dtype)
    grid = torch.stack((2.0 * px / max(w - 1, 1) - 1.0, 2.0 * py / max(h - 1, 1) - 1.0), dim=3)
    out = F.grid_sample(x.to(dtype), grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out.to(x.dtype)


def coordinate_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype to compute pixel coordinates in for features `x`: float32 for half precisions."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def pair(v: int | tuple[int, int]) -> tuple[int, int]:
    """A conv's stride, padding or dilation as (along H, along W)."""
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


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


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear` on the last dim; CPU float32 without autograd goes through oneDNN.

    The networks' 1x1 layers are narrow (36-180 channels over 10^4-10^5 pixels), a shape the default
    CPU GEMM runs at half of oneDNN's speed (4.3 against 2.4 ms for 36->36 channels on 256x256
    pixels, 1 thread). oneDNN sums in another order, so results differ at rounding level.
    """
    if _onednn_inference(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


def conv2d_gelu(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """`gelu(conv(x))`; CPU float32 without autograd runs the GELU inside oneDNN's convolution,
    which saves a pass over the map (0.2 of a depth-wise conv's and GELU's time together)."""
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros" or not _onednn_inference(x, conv.weight):
        return F.gelu(conv(x))
    return torch.ops.mkldnn._convolution_pointwise(
        x, conv.weight, conv.bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
        "gelu", [], "none",
    )


def _onednn_inference(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether `x` and `weight` may take oneDNN's fused inference ops: CPU float32 without autograd,
    and neither traced nor compiled (ONNX export, tracing and torch.compile see the standard ops)."""
    return (
        _ONEDNN
        and x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.jit.is_tracing()
        and not torch.compiler.is_compiling()
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


_ONEDNN = (
    torch.backends.mkldnn.is_available()
    and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
)


class PointwiseConv(nn.Conv2d):
    """A 1x1 `nn.Conv2d` (same parameters and keys). Channels-last input runs as one GEMM over the
    channels by `linear` (and the result is channels-last): CPU torch sends 1x1 convs on that layout
    to its im2col path, 2.5x slower."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return linear(x.permute(0, 2, 3, 1), self.weight.flatten(1), self.bias).permute(0, 3, 1, 2)
        return super().forward(x)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | torch.Tensor, backend: str = "sdpa",
    bias: torch.Tensor | Sequence[torch.Tensor] | None = None, scale_queries: bool = False,
) -> torch.Tensor:
    """softmax(q k^T * scale [+ bias ...]) v over the last two dims: the attention of every family.

    bias: one additive term or several, each broadcasting against the scores, added in order (a
    relative-position bias, then a shift mask). scale: a number, or a tensor (a learned logit
    scale, ATD's AC-MSA). scale_queries: scale q before the product, as the official ATD window
    attention does (the op order decides the rounding, and the naive path reproduces it).
    `naive` spells the softmax out and is the oracle; `sdpa` is torch's fused kernel (the bias terms,
    summed, go in as one float mask; a tensor scale multiplies the queries).
    """
    terms = () if bias is None else (bias,) if isinstance(bias, torch.Tensor) else tuple(bias)
    if backend == "naive":
        scores = (q * scale) @ k.transpose(-2, -1) if scale_queries else (q @ k.transpose(-2, -1)) * scale
        for term in terms:
            scores = scores + term
        return torch.softmax(scores, dim=-1) @ v
    if backend == "sdpa":
        mask = None
        for term in terms:
            mask = term if mask is None else mask + term
        if mask is not None:
            mask = mask.to(q.dtype)
            if mask.dim() < q.dim():
                # a mask of the query's rank lets CPU torch use its flash kernel (5x faster than the
                # math fallback a broadcast 3-D mask gets)
                mask = mask.view((1,) * (q.dim() - mask.dim()) + tuple(mask.shape))
        if isinstance(scale, torch.Tensor):
            q, scale = q * scale, 1.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    raise ValueError(f"unknown attention backend {backend!r}; expected one of {ATTENTION_BACKENDS}")


def _mirror_index(n: int, before: int, after: int, device: torch.device) -> torch.Tensor:
    """Source indices of a mirror (reflect, edge not repeated) extension of an axis of length n."""
    pos = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(pos)
    period = 2 * (n - 1)
    pos = pos.remainder(period)
    return torch.where(pos < n, pos, period - pos)


def reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """`F.pad(x, (left, right, top, bottom), mode="reflect")` for pads of any length.

    Where PyTorch's reflect padding is defined (every pad shorter than its side) this is that call,
    bit for bit. Longer pads, which PyTorch refuses, continue the mirror periodically (period
    2 * (side - 1): reflect, reflect back, ...); a side of length 1 repeats its pixel.
    """
    h, w = x.shape[-2:]
    if left == right == top == bottom == 0:
        return x
    if max(left, right) < w and max(top, bottom) < h:
        return F.pad(x, (left, right, top, bottom), mode="reflect")
    x = x.index_select(-1, _mirror_index(w, left, right, x.device))
    return x.index_select(-2, _mirror_index(h, top, bottom, x.device))


def _window_view(x: torch.Tensor, ws: int) -> torch.Tensor:
    """(B, C, H, W) -> a (B, H/ws, W/ws, ws, ws, C) view of the same storage (no copy)."""
    b, c, h, w = x.shape
    return x.view(b, c, h // ws, ws, w // ws, ws).permute(0, 2, 4, 3, 5, 1)


def _window_index(x: torch.Tensor, keep: torch.Tensor, ws: int):
    cols = x.shape[-1] // ws
    batch = torch.arange(keep.shape[0], device=keep.device)[:, None]
    return batch, keep // cols, keep % cols


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x (B, N, C) gathered along tokens: out[:, t] = x[:, index[:, t]]."""
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def scatter_tokens_(x: torch.Tensor, index: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Write tokens (B, T, C) into x (B, N, C) at places `index` (B, T), in place: x[:, index[:, t]] = tokens[:, t]."""
    return x.scatter_(1, index.unsqueeze(-1).expand(-1, -1, x.shape[-1]), tokens)


def gather_windows(x: torch.Tensor, keep: torch.Tensor, ws: int) -> torch.Tensor:
    """The windows `keep` (B, K) of x (B, C, H, W) as (B, K, ws*ws, C), copying only those windows.

    Same layout as `window_partition(x, ws)` followed by a gather of rows `keep`."""
    b, c = x.shape[:2]
    windows = _window_view(x, ws)[_window_index(x, keep, ws)].reshape(b, keep.shape[1], ws * ws, c)
    # Indexing keeps NCHW's channel stride; channels innermost is what matmuls and the CPU flash
    # attention kernel need (the latter falls back to a 5x slower path otherwise).
    return windows.contiguous()


def scatter_windows_(x: torch.Tensor, keep: torch.Tensor, windows: torch.Tensor, ws: int) -> torch.Tensor:
    """Write `windows` (B, K, ws*ws, C) into the windows `keep` of x (B, C, H, W), in place."""
    b, c = x.shape[:2]
    _window_view(x, ws)[_window_index(x, keep, ws)] = windows.reshape(b, keep.shape[1], ws, ws, c)
    return x


class DerivedTensor:
    """A tensor computed from parameters (a gathered bias, a symmetrised kernel), kept while they are
    unchanged: the key holds each source's storage, version counter, device, dtype and shape, so
    `load_state_dict`, an optimiser step, `copy_` or `.to()` recompute it. Sources made under
    `inference_mode` have no version counter: the value is then computed each time. The value is
    a normal tensor (usable by any later forward) and never part of a state dict."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.value: torch.Tensor | None = None

    def get(self, sources: tuple[torch.Tensor, ...], compute) -> torch.Tensor:
        """`compute()` (no autograd) for these `sources`, from the cache when they are unchanged."""
        if any(t.is_inference() for t in sources):
            return compute()
        key = tuple((t.device, t.dtype, t.data_ptr(), t._version, tuple(t.shape)) for t in sources)
        if key != self.key:
            with torch.inference_mode(False), torch.no_grad():
                self.key, self.value = key, compute()
        return self.value

    def clear(self) -> None:
        self.key = self.value = None

"""ESC networks: "Emulating Self-attention with Convolution" (spec: arch-esc.md).

`ESC` builds ESC (DIV2K and DFLIP weights), ESC-light and ESC-XL (they differ in width, depth,
window and per-layer LayerNorm); `ESCFP` is ESC-FP (decomposed large kernel, bicubic residual);
`ESCReal` is the x4 real-world model (learnt skip branch, nearest-conv upsampler). Key names and
shapes are the official ones (spec section 10), so official checkpoints load strictly.

How the networks meet the rest of detailsr:
- `net(x)` is the official *network* forward: each window-attention layer reflect-pads its
  features to a multiple of the window itself and crops back, so any input size runs.
  The official *test pipeline* also reflect-pads the image to a multiple of the window (32;
  48 for ESC-XL) before the network; that is `pipeline_multiple`, applied by
  `detailsr.inference.forward_any_size` / `upscale` / `eval`, not by `net(x)`.
- Every ConvAttn layer predicts its dynamic 3x3 kernels from a global mean over the whole feature
  map, so padding or tiling changes every output pixel: `tile_safe` is False.
- Attention backends (`attn_type`, set with `net.set_attention(...)` or `load_model(attn_type=...)`):
  "naive" (explicit softmax, the oracle), "sdpa" (default; torch's fused kernel with the
  relative-position bias as a float mask) and "flex" (`torch.nn.attention.flex_attention` with a
  score_mod that reads the bias table; eager on CPU, compiled on other devices).
- The shared large kernel's geometric (D4) re-parameterisation: see `LargeKernelNetwork`.
- A checkpoint of another scale loads into a network built for this scale with the official
  conversion of the output conv (spec section 8) and a logged warning; see `convert_scale`.
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import ALL_ATTENTION_BACKENDS
from ..errors import CheckpointError, ConfigError
from .base import SRNetwork
from .layers import DerivedTensor, LayerNorm2d, PointwiseConv, attention, conv2d_gelu, reflect_pad

log = logging.getLogger(__name__)

ATTENTION_TYPES = ALL_ATTENTION_BACKENDS

# Official hyper-parameters of every released variant (spec section 1), without the scale.
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "esc": ("esc", dict(dim=64, pdim=16, kernel_size=13, n_blocks=5, conv_blocks=5, window_size=32,
                        num_heads=4, exp_ratio=1.25, use_ln=False)),
    "esc-light": ("esc", dict(dim=64, pdim=16, kernel_size=13, n_blocks=3, conv_blocks=5, window_size=32,
                              num_heads=4, exp_ratio=1.25, use_ln=False)),
    "esc-xl": ("esc", dict(dim=192, pdim=48, kernel_size=13, n_blocks=8, conv_blocks=5, window_size=48,
                           num_heads=12, exp_ratio=1.25, use_ln=True)),
    "esc-fp": ("esc_fp", dict(dim=48, pdim=16, kernel_size=13, n_blocks=5, conv_blocks=5, window_size=32,
                              num_heads=3, exp_ratio=1.25)),
    "esc-real": ("esc_real", dict(dim=64, pdim=16, kernel_size=13, n_blocks=10, conv_blocks=5, window_size=32,
                                  num_heads=4, exp_ratio=2.0)),
}

# Scores materialised at once by the naive / eager-flex paths (windows are processed in chunks).
_SCORE_BUDGET = 1 << 25


# --------------------------------------------------------------------------------------------------
# Building blocks (spec section 3).


class LayerNorm(LayerNorm2d):
    """LayerNorm2d computed the ESC way: `F.layer_norm` on the channels-last permutation (same
    parameters, eps 1e-6; only the rounding of the fused kernel differs from the literal form)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the parameter's shape, not x's: a constant where ONNX export traces x's shape as a tensor
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvFFN(nn.Module):
    """1x1 expand, GELU, depthwise 3x3 with GELU added back, 1x1 project; no residual from x (3.1)."""

    def __init__(self, dim: int, ratio: float, kernel_size: int = 3) -> None:
        super().__init__()
        hidden = int(dim * ratio)
        self.proj = PointwiseConv(dim, hidden)
        self.dwc = nn.Conv2d(hidden, hidden, kernel_size, 1, kernel_size // 2, groups=hidden)
        self.aggr = PointwiseConv(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = F.gelu(self.proj(x))
        g = g + conv2d_gelu(g, self.dwc)
        return self.aggr(g)


@functools.lru_cache(maxsize=8)
def relative_position_index(window_size: int, device: str = "cpu") -> torch.Tensor:
    """(ws², ws²) int64: entry [i, j] = (kr - qr + ws - 1) * (2ws - 1) + (kc - qc + ws - 1).

    i = qr * ws + qc is the query token, j = kr * ws + kc the key token (key minus query: the
    transpose of Swin's convention, spec 3.2 step 5). Shared by all layers with this window.
    """
    ws = window_size
    r = torch.arange(ws * ws, device=device)
    row, col = r // ws, r % ws
    return (row[None, :] - row[:, None] + ws - 1) * (2 * ws - 1) + (col[None, :] - col[:, None] + ws - 1)


@functools.lru_cache(maxsize=1)
def flex_support() -> str | None:
    """None when `flex_attention` with a bias score_mod runs here (checked on CPU), else the reason."""
    try:
        from torch.nn.attention.flex_attention import flex_attention
    except ImportError as e:
        return f"torch.nn.attention.flex_attention cannot be imported ({e})"
    try:
        q = torch.zeros(1, 1, 4, 2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            flex_attention(q, q, q, score_mod=lambda s, b, h, i, j: s + (i - j).float())
    except Exception as e:  # noqa: BLE001 - any failure means the backend is unusable
        return f"flex_attention does not run on CPU ({type(e).__name__}: {e})"
    return None


def _check_attn_type(name: str) -> str:
    key = str(name).lower()  # the official spellings 'Naive', 'SDPA', 'Flex' are accepted too
    if key not in ATTENTION_TYPES:
        raise ConfigError(f"unknown attention backend {name!r} for ESC; expected one of {', '.join(ATTENTION_TYPES)}")
    if key == "flex":
        reason = flex_support()
        if reason is not None:
            raise ConfigError(f"attention backend 'flex' is not available: {reason}; use 'sdpa' or 'naive'")
    return key


_compiled_flex = None


def _flex(q, k, v, score_mod, scale):
    """Eager flex_attention on CPU (exactly the naive result); torch.compile'd elsewhere, as officially."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if q.device.type != "cpu":
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention, dynamic=True)
        return _compiled_flex(q, k, v, score_mod=score_mod, scale=scale)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        return flex_attention(q, k, v, score_mod=score_mod, scale=scale)


class WindowAttention(nn.Module):
    """Multi-head self-attention in non-overlapping ws x ws windows with a relative-position bias (3.2).

    Features are reflect-padded bottom/right to a multiple of ws inside the layer and cropped back
    before `to_out`. Deviation (spec 13.10): where PyTorch's reflect refuses a pad as long as the
    side (maps smaller than about ws/2, on which the official code raises), the mirror continues
    periodically (`layers.reflect_pad`), so any size runs; elsewhere it is PyTorch's reflect.
    """

    attn_backends = ATTENTION_TYPES

    def __init__(self, dim: int, window_size: int, num_heads: int, attn_type: str = "sdpa") -> None:
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not a multiple of num_heads {num_heads}")
        self.dim, self.window_size, self.num_heads = dim, window_size, num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.relative_position_bias = nn.Parameter(torch.randn(num_heads, (2 * window_size - 1) ** 2) * 1e-3)
        self.to_qkv = PointwiseConv(dim, dim * 3)
        self.to_out = PointwiseConv(dim, dim)
        self.attn_type = attn_type
        self._bias_cache = DerivedTensor()

    @property
    def attn_type(self) -> str:
        return self._attn_type

    @attn_type.setter
    def attn_type(self, name: str) -> None:
        self._attn_type = _check_attn_type(name)

    def extra_repr(self) -> str:
        return f"window_size={self.window_size}, num_heads={self.num_heads}, attn_type={self.attn_type!r}"

    def bias(self) -> torch.Tensor:
        """The (heads, ws², ws²) additive bias gathered from the table.

        Without autograd the gather (16 MiB for a 32x32 window) is kept until the table changes."""
        table = self.relative_position_bias
        if torch.is_grad_enabled() and table.requires_grad:
            return self._gather_bias(table)
        return self._bias_cache.get((table,), lambda: self._gather_bias(table.detach()))

    def _gather_bias(self, table: torch.Tensor) -> torch.Tensor:
        return table[:, relative_position_index(self.window_size, str(table.device))]

    def _apply(self, fn, *args, **kwargs):
        self._bias_cache.clear()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        ws, heads, d = self.window_size, self.num_heads, self.head_dim
        xp = reflect_pad(x, 0, -w % ws, 0, -h % ws)
        hp, wp = xp.shape[-2:]
        nh, nw = hp // ws, wp // ws
        # channel t*C + head*d + j; windows (batch, row, col); tokens row-major inside a window
        qkv = self.to_qkv(xp).view(b, 3, heads, d, nh, ws, nw, ws)
        qkv = qkv.permute(1, 0, 4, 6, 2, 5, 7, 3).reshape(3, b * nh * nw, heads, ws * ws, d)
        out = self._attend(qkv[0], qkv[1], qkv[2])
        out = out.view(b, nh, nw, heads, ws, ws, d)
        if _layout(x) == torch.channels_last:  # keep the layer's layout: no mixed-layout residual add
            out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(b, hp, wp, c).permute(0, 3, 1, 2)
        else:
            out = out.permute(0, 3, 6, 1, 4, 2, 5).reshape(b, c, hp, wp)
        return self.to_out(out[:, :, :h, :w])

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n = q.shape[0]
        tokens = q.shape[2]
        # Windows are independent: chunks bound the memory of paths that materialise the scores
        # (naive and eager flex on CPU) and change no output; sdpa runs a flash kernel.
        fused = self.attn_type == "sdpa" or (q.device.type != "cpu" and self.attn_type == "flex")
        chunk = n if fused else max(1, _SCORE_BUDGET // (self.num_heads * tokens * tokens))
        if torch.onnx.is_in_onnx_export():
            chunk = n  # ONNX export: one chunk, as a traced loop would fix the number of windows
        if self.attn_type == "flex":
            score_mod = self._score_mod()
            parts = [_flex(q[i : i + chunk], k[i : i + chunk], v[i : i + chunk], score_mod, self.scale)
                     for i in range(0, n, chunk)]
        elif self.attn_type == "sdpa" and q.device.type == "cpu":
            return self._attend_per_head(q, k, v)
        else:
            bias = self.bias()
            parts = [attention(q[i : i + chunk], k[i : i + chunk], v[i : i + chunk], self.scale, self.attn_type, bias)
                     for i in range(0, n, chunk)]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def _attend_per_head(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """sdpa one head at a time, the windows as its batch: the same values, and on CPU 12 % faster
        (32x32 windows, 4 heads, 1 thread) than one call, whose flash kernel then reads each head's
        bias block once per window."""
        bias = self.bias().to(q.dtype)
        out = torch.empty_like(q)
        for head in range(self.num_heads):
            out[:, head] = F.scaled_dot_product_attention(
                q[None, :, head], k[None, :, head], v[None, :, head], attn_mask=bias[head][None, None], scale=self.scale
            )[0]
        return out

    def _score_mod(self):
        table, ws = self.relative_position_bias, self.window_size

        def add_bias(score, b, h, q_idx, kv_idx):
            index = (kv_idx // ws - q_idx // ws + ws - 1) * (2 * ws - 1) + (kv_idx % ws - q_idx % ws + ws - 1)
            return score + table[h, index]

        return add_bias


class ConvAttn(nn.Module):
    """The convolutional attention of ESC / ESC-XL / ESC-Real (3.3), module `plk`.

    On the first `pdim` channels: the shared full pdim -> pdim large kernel plus a per-sample
    depthwise 3x3 kernel predicted from the global mean of those channels; the other channels pass
    unchanged. Any batch size: sample b uses its own kernels (the official eval path takes B = 1).
    """

    def __init__(self, pdim: int, hidden: int) -> None:
        super().__init__()
        self.pdim = pdim
        self.dwc_proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(pdim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, pdim * 9, 1)
        )
        nn.init.zeros_(self.dwc_proj[3].weight)
        nn.init.zeros_(self.dwc_proj[3].bias)

    def dynamic_kernels(self, a: torch.Tensor) -> torch.Tensor:
        """(B, pdim, 3, 3): channel c of sample b reads u[9c : 9c + 9] row-major."""
        return self.dwc_proj(a).view(a.shape[0], self.pdim, 3, 3)

    def forward(self, x: torch.Tensor, large_kernel: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p = self.pdim
        # one dense copy of the sliced channels, in x's layout, feeds both convolutions
        a = x[:, :p].contiguous(memory_format=_layout(x))
        out = F.conv2d(a, large_kernel, padding=large_kernel.shape[-1] // 2)
        if torch.onnx.is_in_onnx_export():  # a grouped conv would fix the batch in the graph
            return torch.cat([out + per_sample_depthwise3x3(a, self.dynamic_kernels(a)), x[:, p:]], dim=1)
        kernels = self.dynamic_kernels(a).reshape(b * p, 1, 3, 3)
        dyn = F.conv2d(a.reshape(1, b * p, h, w), kernels, padding=1, groups=b * p).view(b, p, h, w)
        return torch.cat([out + dyn, x[:, p:]], dim=1)


def per_sample_depthwise3x3(a: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """ONNX export only: the depthwise 3x3 conv (zero padding 1) of `a` (B, C, H, W) with per-sample
    kernels (B, C, 3, 3), as nine shifted products: any batch, no group count in the graph."""
    h, w = a.shape[-2:]
    padded = F.pad(a, (1, 1, 1, 1))
    out = None
    for i in range(3):
        for j in range(3):
            term = padded[:, :, i : i + h, j : j + w] * kernels[:, :, i, j, None, None]
            out = term if out is None else out + term
    return out


def _layout(x: torch.Tensor) -> torch.memory_format:
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


class DecomposedConvAttn(nn.Module):
    """ESC-FP's convolutional attention (spec 4), module `plk`, keys `proj.1`, `proj.3`.

    Dynamic 3x3 kernels from the global mean of the first pdim channels, zero-padded to K x K and
    added to `lk_spatial`; applied depthwise after the 1x1 channel mixing `lk_channel`.
    """

    def __init__(self, pdim: int, hidden: int) -> None:
        super().__init__()
        self.pdim = pdim
        self.proj = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(pdim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, pdim * 9, 1)
        )

    def dynamic_kernels(self, a: torch.Tensor) -> torch.Tensor:
        return self.proj(a).view(a.shape[0], self.pdim, 3, 3)

    def forward(self, x: torch.Tensor, lk_channel: torch.Tensor, lk_spatial: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        p, size = self.pdim, lk_spatial.shape[-1]
        a = x[:, :p]
        edge = (size - 3) // 2
        kernels = F.pad(self.dynamic_kernels(a), (edge, edge, edge, edge)) + lk_spatial.view(1, p, size, size)
        mixed = F.conv2d(a, lk_channel)
        out = F.conv2d(mixed.reshape(1, b * p, h, w), kernels.reshape(b * p, 1, size, size),
                       padding=size // 2, groups=b * p).view(b, p, h, w)
        return torch.cat([out, x[:, p:]], dim=1)


class ConvAttnLayer(nn.Module):
    """`pconvs[j]`: the convolutional attention `plk`, then the 1x1 conv `aggr` over all channels."""

    def __init__(self, dim: int, plk: nn.Module) -> None:
        super().__init__()
        self.plk = plk
        self.aggr = PointwiseConv(dim, dim)

    def forward(self, x: torch.Tensor, *kernels: torch.Tensor) -> torch.Tensor:
        return self.aggr(self.plk(x, *kernels))


class Block(nn.Module):
    """ESC block (3.5): plain ConvFFN, one window attention, `conv_blocks` x (LN? FFN ConvAttn), conv."""

    def __init__(
        self, dim: int, conv_blocks: int, window_size: int, num_heads: int, exp_ratio: float,
        proj_ratio: float, use_ln: bool, make_plk, attn_type: str = "sdpa",
    ) -> None:
        super().__init__()
        self.ln_proj = LayerNorm(dim)
        self.proj = ConvFFN(dim, proj_ratio)
        self.ln_attn = LayerNorm(dim)
        self.attn = WindowAttention(dim, window_size, num_heads, attn_type)
        self.lns = nn.ModuleList(LayerNorm(dim) if use_ln else nn.Identity() for _ in range(conv_blocks))
        self.pconvs = nn.ModuleList(ConvAttnLayer(dim, make_plk()) for _ in range(conv_blocks))
        self.convffns = nn.ModuleList(ConvFFN(dim, exp_ratio) for _ in range(conv_blocks))
        self.ln_out = LayerNorm(dim)
        self.conv_out = nn.Conv2d(dim, dim, 3, 1, 1)

    def forward(self, x: torch.Tensor, *kernels: torch.Tensor) -> torch.Tensor:
        skip = x
        x = self.proj(self.ln_proj(x))
        x = x + self.attn(self.ln_attn(x))
        for ln, pconv, ffn in zip(self.lns, self.pconvs, self.convffns, strict=True):
            x = x + pconv(ffn(ln(x)), *kernels)
        return self.conv_out(self.ln_out(x)) + skip


# --------------------------------------------------------------------------------------------------
# The large kernel and its D4 re-parameterisation (3.4).


def d4_symmetrize(kernel: torch.Tensor) -> torch.Tensor:
    """Mean of the 8 symmetries of the square acting on the two spatial axes of (out, in, K, K).

    Identity, flip-W, flip-H, flip-both; rot90 clockwise, then the same three flips. A projection:
    applying it twice changes nothing (up to float rounding).
    """
    r = torch.rot90(kernel, -1, dims=(2, 3))
    views = (kernel, kernel.flip(3), kernel.flip(2), kernel.flip(2, 3), r, r.flip(3), r.flip(2), r.flip(2, 3))
    return torch.stack(views).mean(0)


def _inference_kernel(kernel: torch.Tensor) -> torch.Tensor:
    """The kernel the layers use at inference: `d4_symmetrize(kernel)`, or `kernel` itself when it is
    already D4-symmetric up to float rounding (a checkpoint saved after the official `convert()`).

    The official converted network uses its stored kernel as is (`plk_func` becomes the identity);
    symmetrising it once more would only add rounding (about 2e-5 at the output of ESC x4 measured
    against the official code), so the stored kernel is taken and the outputs match bit for bit.
    """
    symmetric = d4_symmetrize(kernel)
    scale = float(kernel.abs().max())
    if scale > 0 and float((symmetric - kernel).abs().max()) <= 1e-5 * scale:
        return kernel.clone()
    return symmetric


class ESCNetwork(SRNetwork):
    """What every ESC-family network shares.

    `pipeline_multiple` is the window size (32; 48 for ESC-XL): the official test pipeline
    reflect-pads inputs to it, `forward_any_size` does the same. `tile_safe` is False: the dynamic
    kernels read a global mean of the image.
    """

    tile_safe = False
    pipeline_multiple = 32

    def __init__(self, scale: int, config: dict[str, Any]) -> None:
        _check_kernel_size(config["kernel_size"])
        super().__init__(scale, config)
        self.pipeline_multiple = config["window_size"]

    @property
    def variant(self) -> str:
        """The released variant (esc, also the DFLIP weights; esc-light, esc-xl, esc-fp, esc-real) or custom."""
        return _variant_name(self.arch, self.config)


class LargeKernelNetwork(ESCNetwork):
    """Base of ESC and ESC-Real: the root parameter `plk_filter` shared by every ConvAttn layer.

    `plk_filter` holds the raw (training-form) kernel, as official checkpoints do; the layers use
    `large_kernel()`, its D4 symmetrisation:
    - training form: in train mode, and whenever autograd would carry a gradient to `plk_filter`,
      it is recomputed from the parameter on every forward (differentiable);
    - inference form: otherwise (eval mode under `no_grad` / `inference_mode`, or with
      `requires_grad` off) the symmetrised kernel is computed once and cached (a kernel that
      already is symmetric, as the official `convert()` saves it, is used unchanged, as the
      official converted network does). The cache is keyed
      on the parameter's storage, version counter, device and dtype, so an in-place change
      (`load_state_dict`, an optimiser step, `copy_`) or `.to()` recomputes it; `train()` and
      `_apply` (`.to()`, `.half()`) drop it. It is never saved (no buffer, not in the state dict).
    Because the symmetrisation is idempotent, raw and official "converted" kernels load alike.
    """

    def __init__(self, scale: int, config: dict[str, Any], pdim: int, kernel_size: int) -> None:
        super().__init__(scale, config)
        self.plk_filter = nn.Parameter(torch.empty(pdim, pdim, kernel_size, kernel_size))
        nn.init.orthogonal_(self.plk_filter)
        self._kernel_cache = DerivedTensor()

    def large_kernel(self) -> torch.Tensor:
        p = self.plk_filter
        if self.training or (torch.is_grad_enabled() and p.requires_grad):
            return d4_symmetrize(p)
        return self._kernel_cache.get((p,), lambda: _inference_kernel(p.detach()))

    def train(self, mode: bool = True):
        self._kernel_cache.clear()
        return super().train(mode)

    def _apply(self, fn, *args, **kwargs):
        self._kernel_cache.clear()
        return super()._apply(fn, *args, **kwargs)


# --------------------------------------------------------------------------------------------------
# Loading a checkpoint of another scale (spec section 8).


def convert_output_layer(weight: torch.Tensor, bias: torch.Tensor, scale: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize the sub-pixel grid of an output conv (3 s_in², Cin, k, k) to `scale` (official, bilinear).

    Output channel o = rgb * s_in² + i * s_in + j is sub-pixel (i, j) of colour rgb; for every
    (cin, ky, kx) that s_in x s_in grid is resized to scale x scale with bilinear interpolation,
    align_corners=False, no antialias. The bias is resized the same way.
    """
    out, cin, kh, kw = weight.shape
    s_in = math.isqrt(out // 3)
    if 3 * s_in * s_in != out or bias.shape != (out,):
        raise CheckpointError(f"output conv of shape {tuple(weight.shape)} is not 3 x s² sub-pixel channels")
    grid = weight.view(3, s_in, s_in, cin * kh * kw).permute(3, 0, 1, 2)
    grid = F.interpolate(grid, size=(scale, scale), mode="bilinear", align_corners=False)
    new_weight = grid.permute(1, 2, 3, 0).reshape(3 * scale * scale, cin, kh, kw)
    new_bias = F.interpolate(bias.view(1, 3, s_in, s_in), size=(scale, scale), mode="bilinear", align_corners=False)
    return new_weight.contiguous(), new_bias.reshape(-1)


def checkpoint_scale(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> int | None:
    """The scale of an ESC / ESC-FP state dict, from the output conv (None when it has none)."""
    weight = state_dict.get(prefix + "to_img.weight")
    if weight is None or weight.dim() != 4:
        return None
    s = math.isqrt(weight.shape[0] // 3)
    return s if 3 * s * s == weight.shape[0] else None


def convert_scale(state_dict: Mapping[str, torch.Tensor], scale: int, prefix: str = "") -> dict[str, torch.Tensor]:
    """A copy of an ESC / ESC-FP state dict whose output conv is converted to `scale` (spec section 8).

    The state dict is returned unchanged (copied) when its scale already is `scale`. Networks do
    this themselves when loading (a load_state_dict pre-hook, logging a warning), so
    `build("esc", {**config, "scale": 3}).load_state_dict(x2_weights)` just works.
    """
    out = dict(state_dict)
    s_in = checkpoint_scale(state_dict, prefix)
    if s_in is not None and s_in != scale and prefix + "to_img.bias" in state_dict:
        out[prefix + "to_img.weight"], out[prefix + "to_img.bias"] = convert_output_layer(
            state_dict[prefix + "to_img.weight"], state_dict[prefix + "to_img.bias"], scale
        )
    return out


def _other_scale_hook(module, state_dict, prefix, *args) -> None:
    s_in = checkpoint_scale(state_dict, prefix)
    if s_in is None or s_in == module.scale or prefix + "to_img.bias" not in state_dict:
        return
    log.warning(
        "loading x%d %s weights into a x%d network: the output conv to_img is resized bilinearly "
        "(the official initialisation of x3/x4 training from x2 weights); outputs are not those of a x%d model "
        "until it is fine-tuned", s_in, module.arch, module.scale, module.scale,
    )
    state_dict.update(convert_scale({k: state_dict[k] for k in (prefix + "to_img.weight", prefix + "to_img.bias")},
                                    module.scale, prefix))


# --------------------------------------------------------------------------------------------------
# Networks.


def _scale_argument(scale: int | None, upscaling_factor: int | None, default: int = 4) -> int:
    if scale is not None and upscaling_factor is not None and scale != upscaling_factor:
        raise ConfigError(f"scale {scale} and upscaling_factor {upscaling_factor} disagree")
    s = scale if scale is not None else upscaling_factor if upscaling_factor is not None else default
    if not isinstance(s, int) or s < 1:
        raise ConfigError(f"scale must be a positive integer, got {s!r}")
    return s


def _variant_name(arch: str, config: dict[str, Any]) -> str:
    hyper = {k: v for k, v in config.items() if k != "scale"}
    return next((name for name, (a, c) in VARIANTS.items() if a == arch and c == hyper), "custom")


class ESC(LargeKernelNetwork):
    """ESC, ESC-light and ESC-XL (class `ESC` of the official code; spec 3.6).

    Defaults are the released ESC's (the official constructor's `exp_ratio` default is 2, every
    config passes 1.25). `scale` is the official `upscaling_factor` (both spellings accepted).

    """

    arch = "esc"
    proj_ratio = 2.0

    def __init__(
        self, dim: int = 64, pdim: int = 16, kernel_size: int = 13, n_blocks: int = 5, conv_blocks: int = 5,
        window_size: int = 32, num_heads: int = 4, exp_ratio: float = 1.25, use_ln: bool = False,
        scale: int | None = None, attn_type: str = "sdpa", upscaling_factor: int | None = None,
    ) -> None:
        scale = _scale_argument(scale, upscaling_factor)
        config = dict(dim=dim, pdim=pdim, kernel_size=kernel_size, n_blocks=n_blocks, conv_blocks=conv_blocks,
                      window_size=window_size, num_heads=num_heads, exp_ratio=exp_ratio, use_ln=bool(use_ln),
                      scale=scale)
        super().__init__(scale, config, pdim, kernel_size)
        self.proj = nn.Conv2d(3, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            Block(dim, conv_blocks, window_size, num_heads, exp_ratio, self.proj_ratio, use_ln,
                  functools.partial(ConvAttn, pdim, pdim // 2), attn_type)
            for _ in range(n_blocks)
        )
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        self.to_img = nn.Conv2d(dim, 3 * scale * scale, 3, 1, 1)
        self.register_load_state_dict_pre_hook(_other_scale_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj(x)
        skip = f
        kernel = self.large_kernel()
        for block in self.blocks:
            f = block(f, kernel)
        f = self.last(f) + skip
        y = self.to_img(f) + torch.repeat_interleave(x, self.scale * self.scale, dim=1)
        return F.pixel_shuffle(y, self.scale)


class ESCFP(ESCNetwork):
    """ESC-FP (class `ESCFP`, spec 4): decomposed large kernel, LayerNorms everywhere, bicubic residual."""

    arch = "esc_fp"
    proj_ratio = 1.5

    def __init__(
        self, dim: int = 48, pdim: int = 16, kernel_size: int = 13, n_blocks: int = 5, conv_blocks: int = 5,
        window_size: int = 32, num_heads: int = 3, exp_ratio: float = 1.25,
        scale: int | None = None, attn_type: str = "sdpa", upscaling_factor: int | None = None,
    ) -> None:
        scale = _scale_argument(scale, upscaling_factor)
        super().__init__(scale, dict(dim=dim, pdim=pdim, kernel_size=kernel_size, n_blocks=n_blocks,
                                     conv_blocks=conv_blocks, window_size=window_size, num_heads=num_heads,
                                     exp_ratio=exp_ratio, scale=scale))
        self.lk_channel = nn.Parameter(torch.randn(pdim, pdim, 1, 1))
        self.lk_spatial = nn.Parameter(torch.empty(pdim, 1, kernel_size, kernel_size))
        nn.init.orthogonal_(self.lk_spatial)
        self.proj = nn.Conv2d(3, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            Block(dim, conv_blocks, window_size, num_heads, exp_ratio, self.proj_ratio, True,
                  functools.partial(DecomposedConvAttn, pdim, pdim // 4), attn_type)
            for _ in range(n_blocks)
        )
        self.ln_last = LayerNorm(dim)
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        self.to_img = nn.Conv2d(dim, 3 * scale * scale, 3, 1, 1)
        self.register_load_state_dict_pre_hook(_other_scale_hook)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj(x)
        skip = f
        for block in self.blocks:
            f = block(f, self.lk_channel, self.lk_spatial)
        f = self.last(self.ln_last(f)) + skip
        residual = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return F.pixel_shuffle(self.to_img(f), self.scale) + residual


class ReflectConv2d(nn.Conv2d):
    """Conv2d with reflect padding (`padding_mode='reflect'`), defined for any input size.

    Same parameters as `nn.Conv2d(..., padding=k//2, padding_mode='reflect')`; pads with
    `layers.reflect_pad`, which is PyTorch's reflect wherever that is defined.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, groups: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, 1, 0, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.kernel_size[0] // 2
        return F.conv2d(reflect_pad(x, p, p, p, p), self.weight, self.bias, groups=self.groups)


class ESCReal(LargeKernelNetwork):
    """ESC-Real (class `ESCReal`, spec 5), x4 only: learnt skip branch, nearest + conv upsampler.

    No image-level residual and no other-scale conversion (the x4 upsampler is hard-wired).
    """

    arch = "esc_real"
    proj_ratio = 2.0

    def __init__(
        self, dim: int = 64, pdim: int = 16, kernel_size: int = 13, n_blocks: int = 10, conv_blocks: int = 5,
        window_size: int = 32, num_heads: int = 4, exp_ratio: float = 2.0,
        scale: int | None = None, attn_type: str = "sdpa", upscaling_factor: int | None = None,
    ) -> None:
        scale = _scale_argument(scale, upscaling_factor)
        if scale != 4:
            raise ConfigError(f"ESC-Real upscales x4 only (its upsampler is two fixed x2 steps), not x{scale}")
        config = dict(dim=dim, pdim=pdim, kernel_size=kernel_size, n_blocks=n_blocks, conv_blocks=conv_blocks,
                      window_size=window_size, num_heads=num_heads, exp_ratio=exp_ratio, scale=scale)
        super().__init__(scale, config, pdim, kernel_size)
        self.proj = nn.Conv2d(3, dim, 3, 1, 1)
        self.blocks = nn.ModuleList(
            Block(dim, conv_blocks, window_size, num_heads, exp_ratio, self.proj_ratio, True,
                  functools.partial(ConvAttn, pdim, pdim // 2), attn_type)
            for _ in range(n_blocks)
        )
        self.last = nn.Conv2d(dim, dim, 3, 1, 1)
        self.to_img = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(dim, dim, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(dim, dim, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(dim, 3, 3, 1, 1),
        )
        self.skip = nn.Sequential(
            nn.Conv2d(3, dim * 2, 1), ReflectConv2d(dim * 2, dim * 2, 7, groups=dim * 2), nn.LeakyReLU(0.2),
            nn.Conv2d(dim * 2, dim, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj(x)
        skip = f
        kernel = self.large_kernel()
        for block in self.blocks:
            f = block(f, kernel)
        f = self.last(f) + skip + self.skip(x)
        return self.to_img(f)


def _check_kernel_size(kernel_size: int) -> None:
    if kernel_size < 3 or kernel_size % 2 == 0:
        raise ConfigError(f"kernel_size must be odd and at least 3, got {kernel_size}")


def create(variant: str, scale: int = 4, **kwargs: Any) -> SRNetwork:
    """A randomly initialised network of a released variant: "esc", "esc-light", "esc-xl", "esc-fp", "esc-real"."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown ESC variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    arch, config = VARIANTS[variant]
    return build(arch, {**config, "scale": scale, **kwargs})


# --------------------------------------------------------------------------------------------------
# Architecture detection.


def _count(state_dict: Mapping, pattern: str) -> int:
    n = 0
    while pattern.format(n) in state_dict:
        n += 1
    return n


def _ratio(hidden: int, dim: int) -> float:
    """A ratio r with int(dim * r) == hidden (the official hidden-width rule)."""
    r = hidden / dim
    while int(dim * r) < hidden:
        r = math.nextafter(r, math.inf)
    return r


def _common(state_dict: Mapping) -> dict[str, Any]:
    dim = state_dict["proj.weight"].shape[0]
    heads, table = state_dict["blocks.0.attn.relative_position_bias"].shape
    ws = (math.isqrt(table) + 1) // 2
    if (2 * ws - 1) ** 2 != table:
        raise CheckpointError(f"relative_position_bias has {table} entries, not (2 ws - 1)² for a window ws")
    return dict(
        dim=dim,
        n_blocks=_count(state_dict, "blocks.{}.ln_proj.weight"),
        conv_blocks=_count(state_dict, "blocks.0.pconvs.{}.aggr.weight"),
        window_size=ws,
        num_heads=heads,
        exp_ratio=_ratio(state_dict["blocks.0.convffns.0.proj.weight"].shape[0], dim),
    )


def detect(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    """(arch, hyper-parameters) for an ESC / ESC-light / ESC-XL ("esc"), ESC-FP ("esc_fp") or
    ESC-Real ("esc_real") state dict, else None. The scale comes from the output layer."""
    if "blocks.0.attn.flashbias_q" in state_dict and "proj.weight" in state_dict:
        raise CheckpointError(
            "this is an ESC FlashBias checkpoint (attn.flashbias_q / flashbias_k instead of the relative-position "
            "table, e.g. ESC_DIV2K_FB_R48_X2.pth); detailsr loads the table-based ESC checkpoints only"
        )
    if not _IDENTIFYING_KEYS <= state_dict.keys():
        return None
    return _detect(state_dict)


# Keys every ESC-family state dict has (read by `_common`); without them it is not one of ours.
_IDENTIFYING_KEYS = {"proj.weight", "blocks.0.attn.relative_position_bias", "blocks.0.convffns.0.proj.weight"}


def _detect(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]] | None:
    if "plk_filter" in state_dict and "blocks.0.pconvs.0.plk.dwc_proj.1.weight" in state_dict:
        kernel = state_dict["plk_filter"]
        base = dict(pdim=kernel.shape[0], kernel_size=kernel.shape[-1])
        if "skip.0.weight" in state_dict and "to_img.8.weight" in state_dict:
            return "esc_real", {**_common(state_dict), **base, "scale": 4}
        if "skip.0.weight" in state_dict and "to_img.6.weight" in state_dict:
            raise CheckpointError(
                "this ESC-Real checkpoint has the 3-conv upsampler of the early official code (to_img.1/.4/.6, "
                "March 2025 revisions of esc_real_arch.py); detailsr loads the 4-conv layout of the later official "
                "code (to_img.1/.4/.6/.8)"
            )
        scale = checkpoint_scale(state_dict)
        if scale is None:
            return None
        config = {**_common(state_dict), **base, "use_ln": "blocks.0.lns.0.weight" in state_dict}
        keys = ("dim", "pdim", "kernel_size", "n_blocks", "conv_blocks", "window_size", "num_heads", "exp_ratio",
                "use_ln")
        return "esc", {**{k: config[k] for k in keys}, "scale": scale}
    if {"lk_channel", "lk_spatial", "ln_last.weight", "blocks.0.pconvs.0.plk.proj.1.weight"} <= state_dict.keys():
        scale = checkpoint_scale(state_dict)
        if scale is None:
            return None
        common = _common(state_dict)
        return "esc_fp", {"dim": common["dim"], "pdim": state_dict["lk_channel"].shape[0],
                          "kernel_size": state_dict["lk_spatial"].shape[-1],
                          **{k: common[k] for k in ("n_blocks", "conv_blocks", "window_size", "num_heads",
                                                    "exp_ratio")}, "scale": scale}
    return None


ARCHITECTURES = {"esc": ESC, "esc_fp": ESCFP, "esc_real": ESCReal}


def build(arch: str, config: dict[str, Any]) -> SRNetwork:
    return ARCHITECTURES[arch](**config)

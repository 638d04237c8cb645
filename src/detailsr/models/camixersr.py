"""CAMixerSR networks (spec: arch-camixer.md sections 1-3, 6-7).

`CAMixerSR` covers the large-image S / M / B models and the lightweight x2 / x3 / x4 models (they
differ only in width and scale). `CAMixerOSR` is the omnidirectional (ERP panorama) variant with a
latitude condition and modulated deformable convs (`DCNv2Pack`, pure PyTorch); `ClassSRCAMixerSR`
is ClassSR's classifier choosing one of three CAMixerSR branches per input (spec 7.2, 7.3).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..choices import AUTO_RATIO, ROUTINGS
from ..errors import ConfigError
from .base import SRNetwork
from .camixer import WINDOW, CAMixer, CAMixerODI, official_gamma
from .camixer_fast import run_body, run_body_odi
from .layers import LayerNorm2d, Upsampler, pad_to_multiple, pair
from .purepass import pure_mask
from .record import attended_share


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


def window_pure_share(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, N): the share of Pure-Pass pure pixels of `x` (B, 3, H, W) in each window, row-major."""
    pure = pure_mask(x).float()[:, None]
    return F.avg_pool2d(pure, window).flatten(1)


def fast_path_applies(net: CAMixerSR | CAMixerOSR) -> bool:
    """Whether `net` runs the channels-last inference path (`camixer_fast`): not when training,
    asked for the plain modules (`fast_path = False`, the oracle), or a mixer computes the dense
    reference."""
    return net.fast_path and not net.training and not any(m.dense_reference for m in net.mixers())


class CAMixerSR(SRNetwork):
    """CAMixerSR. `net(x)` -> image; after a training forward `auxiliary_losses()` gives the ratio loss."""

    arch = "camixersr"
    routes_by_predictor = True
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
        self.routing = "learned"
        self.fast_path = True

    def set_routing(self, routing: str, pure_threshold: float | None = None) -> None:
        """"learned" (the predictor's top-K windows, the official routing) or "purepass": of those,
        only the windows whose share of Pure-Pass pure pixels stays below `pure_threshold` attend."""
        if routing not in ROUTINGS:
            raise ConfigError(f"routing must be one of {', '.join(ROUTINGS)}, not {routing!r}")
        if pure_threshold is not None and not 0.0 <= pure_threshold <= 1.0:
            raise ConfigError(f"pure_threshold must lie in [0, 1], got {pure_threshold}")
        self.routing = routing
        for m in self.mixers():
            m.window_pure = None
            if pure_threshold is not None:
                m.pure_threshold = pure_threshold

    def forward(self, x: torch.Tensor):
        if not self.training and x.shape[0] > 1 and (self.routing == "purepass" or self.ratio == AUTO_RATIO):
            return torch.cat([self(item[None]) for item in x])  # windows vetoed / counted per image
        h, w = x.shape[-2:]
        x = pad_to_multiple(x, WINDOW, mode="reflect")
        if self.routing == "purepass" and not self.training:
            shares = window_pure_share(x, WINDOW)
            for m in self.mixers():
                m.window_pure = shares
        f = self.head(x)
        global_condition = self.global_predictor(f)
        if fast_path_applies(self):
            f = run_body(self, f, global_condition)
        else:
            shortcut = f
            for group in self.body:
                f = group(f, global_condition)
            f = self.body_tail(f) + shortcut
        return self.tail(f)[:, :, : h * self.scale, : w * self.scale]

    def mixers(self) -> list[CAMixer]:
        return [m for m in self.modules() if isinstance(m, CAMixer)]

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The ratio loss of the last training forward: 2 ratio (mean attended share - 0.5)^2,
        the share over blocks, windows and batch."""
        return {"ratio": 2 * official_gamma(self.ratio) * (attended_share(self) - 0.5) ** 2}


# --------------------------------------------------------------------------------------------------
# Modulated deformable convolution (DCNv2) in plain PyTorch (spec 7.2.1).


def _sample_zero_padded(flat: torch.Tensor, y: torch.Tensor, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Bilinear samples of `flat` (B, C, h*w) at positions y, x (B, Ho, Wo), zero outside.

    A position with y <= -1, y >= h, x <= -1 or x >= w gives 0; otherwise each of the four
    corners contributes only when it lies inside the image (no clamping to the border).
    """
    b, c, _ = flat.shape
    inside = (y > -1) & (y < h) & (x > -1) & (x < w)
    # Clamping the floor keeps huge offsets from overflowing the integer cast; such positions
    # are outside anyway and get weight 0.
    y0 = torch.floor(y).clamp_(-1, h)
    x0 = torch.floor(x).clamp_(-1, w)
    ly, lx = y - y0, x - x0
    y0, x0 = y0.long(), x0.long()
    out = None
    for cy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
        for cx, wx in ((x0, 1 - lx), (x0 + 1, lx)):
            valid = inside & (cy >= 0) & (cy < h) & (cx >= 0) & (cx < w)
            index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).view(b, 1, -1).expand(-1, c, -1)
            corner = torch.gather(flat, 2, index).view(b, c, *y.shape[1:])
            term = corner * (wy * wx * valid).unsqueeze(1)
            out = term if out is None else out + term
    return out


def modulated_deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """torchvision's `deform_conv2d` (one offset group, groups 1) by explicit gathers.

    `offset` (B, 2*kh*kw, Ho, Wo): channel 2k is dy and 2k+1 is dx of tap k = i*kw + j (i the
    kernel row); `mask` (B, kh*kw, Ho, Wo) multiplies each sampled value before the weight. Tap k of
    output pixel (p, q) samples the input at (p*sy - py + i*dy + dy_k, q*sx - px + j*dx + dx_k).
    Works tap by tap, so memory stays at a few (B, C, Ho, Wo) tensors.
    """
    b, c, h, w = x.shape
    _, c_in, kh, kw = weight.shape
    if c_in != c:
        raise ValueError(f"deformable conv: input has {c} channels, weight expects {c_in}")
    ho, wo = offset.shape[-2:]
    (sy, sx), (py, px), (dy, dx) = pair(stride), pair(padding), pair(dilation)
    off = offset.view(b, kh * kw, 2, ho, wo)
    base_y = (torch.arange(ho, device=x.device) * sy - py).to(x.dtype).view(1, ho, 1)
    base_x = (torch.arange(wo, device=x.device) * sx - px).to(x.dtype).view(1, 1, wo)
    flat = x.reshape(b, c, h * w)
    out = None
    for i in range(kh):
        for j in range(kw):
            k = i * kw + j
            sample_y = (base_y + i * dy) + off[:, k, 0]
            sample_x = (base_x + j * dx) + off[:, k, 1]
            val = _sample_zero_padded(flat, sample_y, sample_x, h, w) * mask[:, k : k + 1]
            term = torch.einsum("bchw,oc->bohw", val, weight[:, :, i, j])
            out = term if out is None else out + term
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    # The einsum leaves a channels-last result for batches > 1; torchvision's op returns plain NCHW,
    # and so do we: the layout decides which conv kernels run downstream (and so their rounding).
    return out.contiguous()


class DCNv2Pack(nn.Module):
    """BasicSR's `DCNv2Pack`: modulated deformable conv whose offsets and mask come from `feat`.

    Keys `weight` (C_out, C_in, k, k), `bias`, `conv_offset.weight` / `.bias` (a Conv2d C_in -> 3*k*k
    with the layer's stride, padding and dilation). `forward(x, feat)`: `o = conv_offset(feat)`;
    offsets = `o[:, :2*k*k]`, mask = `sigmoid(o[:, 2*k*k:])` (spec 7.2.1 points 1-6). One offset group
    and groups = 1 only, which is all CAMixerOSR uses. Initialised as BasicSR does: `conv_offset` all
    zero, so a fresh layer is 0.5 x a plain conv + bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.conv_offset = nn.Conv2d(
            in_channels, 3 * kernel_size * kernel_size, kernel_size, stride, padding, dilation
        )
        bound = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        o = self.conv_offset(feat)
        taps = self.weight.shape[2] * self.weight.shape[3]
        offset, mask = o[:, : 2 * taps], torch.sigmoid(o[:, 2 * taps :])
        return modulated_deform_conv2d(
            x, offset, mask, self.weight, self.bias, self.stride, self.padding, self.dilation
        )


# --------------------------------------------------------------------------------------------------
# ODI network CAMixerOSR (spec 7.2).

ODI_MEAN = (0.4488, 0.4371, 0.4040)


def pixel_centres(n: int) -> torch.Tensor:
    """Float32 centres of n pixels on [-1, 1], computed as the ODI code does (spec 12.1 `centres`)."""
    return (-1 + 1 / n) + (2 / n) * torch.arange(n, dtype=torch.float32)


def latitude_condition(h: int, w: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The ODI dataset's `cos_latitude` condition of a whole h x w ERP: (1, 1, h, w).

    Row r is `cos(centres(h)[r] * pi/2)` (float32, computed on the CPU as the dataset does), constant
    along the row; then moved to the dtype and device of `like` when given. For a crop of a larger
    ERP, slice the rows of the full map instead (spec 12.3).
    """
    row = torch.cos(pixel_centres(h) * math.pi / 2)
    cond = row.view(1, 1, h, 1).expand(1, 1, h, w).contiguous()
    if like is not None:
        cond = cond.to(device=like.device, dtype=like.dtype)
    return cond


def _offset_conv(dim: int) -> nn.Sequential:
    """The condition -> DCN offset feature: 1x1 conv 1 -> C, LeakyReLU 0.2, 1x1 conv C -> C, LeakyReLU 0.2."""
    return nn.Sequential(
        nn.Conv2d(1, dim, 1), nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(dim, dim, 1), nn.LeakyReLU(0.2, inplace=True),
    )


class GatedFeedForwardODI(nn.Module):
    """The ODI FFN: as `GatedFeedForward` but with biases and a 5x5 depth-wise conv."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project_in = nn.Conv2d(dim, dim * 2, 1)
        self.dwconv = nn.Conv2d(dim * 2, dim * 2, 5, 1, 2, groups=dim * 2)
        self.project_out = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(z1) * z2)


class BlockODI(nn.Module):
    """Post-norm block with the ODI mixer (cyclic window shift `shift`) and the ODI FFN."""

    def __init__(self, dim: int, ratio: float, shift: int) -> None:
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.mixer = CAMixerODI(dim, WINDOW, ratio, shift)
        self.norm2 = LayerNorm2d(dim)
        self.ffn = GatedFeedForwardODI(dim)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.mixer(x, condition))
        return self.norm2(x + self.ffn(x))


class GroupODI(nn.Module):
    """Blocks with shifts 0, 8, 0, 8, ...; tail = DCNv2Pack driven by the group's own `offset_conv`."""

    def __init__(self, dim: int, n_blocks: int, ratio: float) -> None:
        super().__init__()
        self.body = nn.ModuleList(
            BlockODI(dim, ratio, 0 if b % 2 == 0 else WINDOW // 2) for b in range(n_blocks)
        )
        self.offset_conv = _offset_conv(dim)
        self.body_tail = DCNv2Pack(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        shortcut = x
        for block in self.body:
            x = block(x, condition)
        return self.body_tail(x, self.offset_conv(condition)) + shortcut


class CAMixerOSR(SRNetwork):
    """CAMixerSR for ERP panoramas (ODI-SR). `net(x, condition)`; training -> (image, ratio loss).

    `condition` is the (B or 1, 1, h, w) cos-latitude map of the LR input (`latitude_condition` for
    a whole ERP); None gives zeros, as the official code does (here shaped to the batch, dtype and
    device of `x`). The condition is not padded, so h and w must be multiples of 16. The input is
    shifted by the DIV2K mean and the mean added back to the output. The condition describes
    where the input lies on the sphere, so tiling an ERP changes what each tile sees: `tile_safe`
    is False.

    Ratio: the official ODI code ignores it at inference (K = int(N * r) from the Gumbel draw, about
    half the windows); here it sets the deterministic K = floor(N * ratio + 0.5) of every mixer, and
    `stochastic=True` on the mixers restores the official draw.
    """

    arch = "camixerosr"
    routes_by_predictor = True
    min_size = WINDOW
    size_multiple = WINDOW
    tile_safe = False

    def __init__(
        self, n_feats: int = 60, n_block: tuple[int, ...] = (6, 6, 6, 6), scale: int = 4, ratio: float = 0.5
    ) -> None:
        super().__init__(scale, {"n_feats": n_feats, "n_block": list(n_block), "scale": scale})
        self.ratio = ratio
        # A plain constant in the official code, not a state-dict entry.
        self.register_buffer("mean", torch.tensor(ODI_MEAN).view(1, 3, 1, 1), persistent=False)
        self.head = nn.Conv2d(3, n_feats, 3, 1, 1)
        self.norm = LayerNorm2d(n_feats)
        self.body = nn.ModuleList(GroupODI(n_feats, n, ratio) for n in n_block)
        self.offset_conv = _offset_conv(n_feats)
        self.body_tail = nn.Conv2d(n_feats, n_feats, 3, 1, 1)
        self.dcn = DCNv2Pack(n_feats, n_feats, 3, padding=1)
        self.tail = Upsampler(n_feats, scale)
        self.set_ratio(ratio)
        self.fast_path = True

    def forward(self, x: torch.Tensor, condition: torch.Tensor | None = None):
        b, _, h, w = x.shape
        if not self.training and b > 1 and self.ratio == AUTO_RATIO:  # K is counted per image
            per_image = [None if condition is None else condition[i : i + 1] if condition.shape[0] > 1 else condition
                         for i in range(b)]
            return torch.cat([self(x[i : i + 1], per_image[i]) for i in range(b)])
        if h % WINDOW or w % WINDOW:
            raise ConfigError(
                f"CAMixerOSR needs LR sides that are multiples of {WINDOW} (its condition is not padded); "
                f"got {h}x{w}"
            )
        if condition is None:
            condition = x.new_zeros(b, 1, h, w)
        else:
            shape = tuple(condition.shape)
            if len(shape) != 4 or shape[1:] != (1, h, w) or shape[0] not in (1, b):
                raise ConfigError(f"CAMixerOSR condition must be ({b} or 1, 1, {h}, {w}); got {shape}")
            condition = condition.to(dtype=x.dtype, device=x.device).expand(b, -1, -1, -1)
        x = x - self.mean  # the official `(x - mean) * img_range` with img_range 1.0
        f = self.head(x)
        shortcut = f
        f = self.norm(f)
        if fast_path_applies(self):
            f = run_body_odi(self, f, condition) + shortcut
        else:
            for group in self.body:
                f = group(f, condition)
            f = self.body_tail(f)
            f = self.dcn(f, self.offset_conv(condition)) + shortcut
        return self.tail(f) + self.mean

    def condition_for(self, x: torch.Tensor) -> torch.Tensor:
        """The cos-latitude map of `x` taken as a whole ERP panorama."""
        return latitude_condition(x.shape[-2], x.shape[-1], x).expand(x.shape[0], -1, -1, -1)

    def mixers(self) -> list[CAMixerODI]:
        return [m for m in self.modules() if isinstance(m, CAMixerODI)]

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """The ODI ratio loss of the last training forward: (mean attended share - 0.5)^2, no ratio factor."""
        return {"ratio": (attended_share(self) - 0.5) ** 2}


# --------------------------------------------------------------------------------------------------
# ClassSR + CAMixerSR (spec 7.3).

CLASSSR_RATIOS = (0.25, 0.30, 0.50)  # the branch ratios of the released code ("as coded")


class ClassSRClassifier(nn.Module):
    """ClassSR's patch classifier (keys `classifier.lastOut.*`, `classifier.CondNet.*`): 3 logits.

    The official pooling uses a kernel equal to the feature height (square 32x32 LR patches ->
    8x8 features). For a wide input (height <= width < 2 x height) that pools the left square, which
    we keep; where the official code fails (taller than wide, or at least twice as wide as high) we
    average over the whole feature map instead.
    """

    def __init__(self, n_classes: int = 3) -> None:
        super().__init__()
        self.lastOut = nn.Linear(32, n_classes)
        self.CondNet = nn.Sequential(
            nn.Conv2d(3, 128, 4, 4), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 128, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 128, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 128, 1), nn.LeakyReLU(0.1, inplace=True),
            nn.Conv2d(128, 32, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.CondNet(x)
        fh, fw = f.shape[-2:]
        if fh <= fw < 2 * fh:
            f = F.avg_pool2d(f, fh)
        else:
            f = f.mean((2, 3), keepdim=True)
        return self.lastOut(f.flatten(1))


class ClassSRCAMixerSR(SRNetwork):
    """ClassSR over three CAMixerSR branches `net1`, `net2`, `net3` (keys `classifier.*`, `netK.*`).

    Two layouts (spec 7.3): "as coded", three n_feats-60 branches at ratios 0.25 / 0.30 / 0.50 (the
    same weights may be loaded into all three: the classifier then picks the ratio), or S / M / B
    branches (n_feats 36 / 48 / 60) all at ratio 0.5. `ratios=None` picks these defaults from the
    widths (all equal -> as coded).

    Eval: the classifier's argmax picks one branch per sample and `net(x)` returns the stacked
    branch outputs (the image only, as every detailsr network; the choice is in `last_branch` (B,)
    and the softmax in `last_probs` (B, 3) after each forward; `classify(x)` gives the softmax
    without running a branch). Training: like the official code, the branches run in eval mode
    (top-K routing) and the output is the softmax-weighted sum of the three; `last_probs` keeps
    the gradient-free probabilities (call `classify` for differentiable ones).

    Ratios: the per-branch ratios are the point of the "as coded" layout, so the constructor keeps
    them and `set_ratio` only changes them when called: `set_ratio(r)` sets every branch to r (the
    classifier then only picks between the branch weights), `set_ratio((r1, r2, r3))` sets each
    branch, and `set_ratio(None)` restores the defaults. `ratio` is the single value last set, or
    None while the branches have their own ratios (`branch_ratios`).
    """

    arch = "classsr_camixersr"
    routes_by_predictor = True
    min_size = WINDOW
    tile_safe = True

    def __init__(
        self,
        n_feats: Sequence[int] = (60, 60, 60),
        n_block: Sequence[int] = (4, 4, 6, 6),
        scale: int = 4,
        ratios: Sequence[float] | None = None,
    ) -> None:
        n_feats = tuple(int(c) for c in n_feats)
        if len(n_feats) != 3:
            raise ConfigError(f"ClassSR-CAMixerSR has three branches; got n_feats {list(n_feats)}")
        super().__init__(scale, {"n_feats": list(n_feats), "n_block": list(n_block), "scale": scale})
        if ratios is None:
            ratios = CLASSSR_RATIOS if len(set(n_feats)) == 1 else (0.5, 0.5, 0.5)
        self.default_ratios = self._check_ratios(ratios)
        self.classifier = ClassSRClassifier(3)
        self.net1 = CAMixerSR(n_feats[0], tuple(n_block), scale, self.default_ratios[0])
        self.net2 = CAMixerSR(n_feats[1], tuple(n_block), scale, self.default_ratios[1])
        self.net3 = CAMixerSR(n_feats[2], tuple(n_block), scale, self.default_ratios[2])
        self.ratio: float | None = None
        self.last_branch: torch.Tensor | None = None
        self.last_probs: torch.Tensor | None = None

    @staticmethod
    def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
        ratios = tuple(float(r) for r in ratios)
        if len(ratios) != 3 or not all(0.0 <= r <= 1.0 for r in ratios):
            raise ConfigError(f"ClassSR-CAMixerSR needs three ratios in [0, 1]; got {list(ratios)}")
        return ratios

    @property
    def branches(self) -> tuple[CAMixerSR, CAMixerSR, CAMixerSR]:
        return (self.net1, self.net2, self.net3)

    @property
    def branch_ratios(self) -> tuple[float, float, float]:
        return tuple(net.ratio for net in self.branches)

    def set_ratio(self, ratio: float | Sequence[float] | None = None) -> None:
        """One ratio for all branches, one per branch, or None for the layout's defaults."""
        if ratio is None:
            ratios, self.ratio = self.default_ratios, None
        elif ratio == AUTO_RATIO:
            ratios, self.ratio = (AUTO_RATIO,) * 3, AUTO_RATIO
        elif isinstance(ratio, (int, float)):
            if not 0.0 <= ratio <= 1.0:
                raise ConfigError(f"ratio must lie in [0, 1], got {ratio}")
            ratios, self.ratio = (float(ratio),) * 3, float(ratio)
        else:
            ratios, self.ratio = self._check_ratios(ratio), None
        for net, r in zip(self.branches, ratios, strict=True):
            net.set_ratio(r)

    def current_ratio(self) -> float | tuple[float, float, float]:
        return self.ratio if self.ratio is not None else self.branch_ratios

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax class probabilities (B, 3): branch 0 = net1 (cheapest ratio / width)."""
        return torch.softmax(self.classifier(x), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.classifier(x)
        probs = torch.softmax(logits, dim=1)
        self.last_probs = probs.detach()
        self.last_branch = logits.argmax(dim=1)
        if self.training:
            modes = [net.training for net in self.branches]
            try:
                for net in self.branches:
                    net.eval()
                outs = [net(x) for net in self.branches]
            finally:
                for net, mode in zip(self.branches, modes, strict=True):
                    net.train(mode)
            return sum(probs[:, i, None, None, None] * out for i, out in enumerate(outs))
        choice = self.last_branch.tolist()
        if not choice:
            return x.new_empty(0, 3, x.shape[2] * self.scale, x.shape[3] * self.scale)
        if any(m.stochastic for net in self.branches for m in net.mixers()):
            # The official loop, one sample at a time in batch order (each draws its own K).
            return torch.cat([self.branches[c](x[i : i + 1]) for i, c in enumerate(choice)])
        # Deterministic routing is per sample, so samples of one branch can share a batch.
        out = None
        for c in sorted(set(choice)):
            index = torch.tensor([i for i, ci in enumerate(choice) if ci == c], device=x.device)
            y = self.branches[c](x.index_select(0, index))
            if out is None:
                out = y.new_empty(x.shape[0], *y.shape[1:])
            out[index] = y
        return out


# --------------------------------------------------------------------------------------------------
# Architecture detection.


def _count(state_dict: dict, pattern: str) -> int:
    n = 0
    while pattern.format(n) in state_dict:
        n += 1
    return n


def _scale(state_dict: dict) -> int:
    return math.isqrt(state_dict["tail.0.weight"].shape[0] // 3)


def _detect_camixersr(state_dict: dict) -> tuple[str, dict] | None:
    needed = ("global_predictor.0.weight", "body.0.body.0.mixer.route.in_conv.0.weight")
    if not all(k in state_dict for k in needed):
        return None
    n_groups = _count(state_dict, "body.{}.body_tail.weight")
    n_block = [_count(state_dict, f"body.{g}.body.{{}}.norm1.weight") for g in range(n_groups)]
    n_feats = state_dict["head.weight"].shape[0]
    return "camixersr", {"n_feats": n_feats, "n_block": n_block, "scale": _scale(state_dict)}


def _detect_camixerosr(state_dict: dict) -> tuple[str, dict] | None:
    needed = ("head.weight", "norm.weight", "dcn.conv_offset.weight", "body.0.offset_conv.0.weight",
              "body.0.body.0.mixer.conv_sptial.2.weight", "tail.0.weight")
    if "global_predictor.0.weight" in state_dict or not all(k in state_dict for k in needed):
        return None
    n_groups = _count(state_dict, "body.{}.body_tail.conv_offset.weight")
    n_block = [_count(state_dict, f"body.{g}.body.{{}}.norm1.weight") for g in range(n_groups)]
    n_feats = state_dict["head.weight"].shape[0]
    return "camixerosr", {"n_feats": n_feats, "n_block": n_block, "scale": _scale(state_dict)}


def _detect_classsr_camixersr(state_dict: dict) -> tuple[str, dict] | None:
    if "classifier.lastOut.weight" not in state_dict or "classifier.CondNet.0.weight" not in state_dict:
        return None
    branches = []
    for name in ("net1.", "net2.", "net3."):
        sub = {k[len(name) :]: v for k, v in state_dict.items() if k.startswith(name)}
        found = _detect_camixersr(sub)
        if found is None:
            return None
        branches.append(found[1])
    first = branches[0]
    if any(b["n_block"] != first["n_block"] or b["scale"] != first["scale"] for b in branches):
        return None
    return "classsr_camixersr", {
        "n_feats": [b["n_feats"] for b in branches], "n_block": first["n_block"], "scale": first["scale"],
    }


def detect(state_dict: dict) -> tuple[str, dict] | None:
    """(arch, hyper-parameters) for a CAMixerSR, CAMixerOSR or ClassSR-CAMixerSR state dict, else None."""
    for detector in (_detect_camixersr, _detect_camixerosr, _detect_classsr_camixersr):
        found = detector(state_dict)
        if found is not None:
            return found
    return None


ARCHITECTURES = {"camixersr": CAMixerSR, "camixerosr": CAMixerOSR, "classsr_camixersr": ClassSRCAMixerSR}


def build(arch: str, config: dict) -> SRNetwork:
    return ARCHITECTURES[arch](**config)

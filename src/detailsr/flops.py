"""Counting cost: parameters, nominal FLOPs the way the papers count them, executed FLOPs.

Two different numbers, never to be mixed:

- *nominal*: the analytic count a paper's tables use. For CAMixerSR this is the official
  `flops()` counter (spec arch-camixer.md section 9): 2 FLOPs per multiply-accumulate for convs and
  linears, but window attention counted as 2 * 256^2 * C per window (i.e. as MACs), with the ratio
  entering analytically. Its large-image tables quote it per 32x32 LR input.
- *executed*: multiply-accumulates actually performed on a given input, counted op by op (convs,
  linears, matmuls, attention) while the network runs. Content-aware models attend only the
  selected windows, so this count follows the routing of that very image. FLOPs = 2 x MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_flop_count

from .choices import AUTO_RATIO
from .inference import forward_any_size, ratio_setting
from .models.base import SRNetwork
from .models.record import clear_records, mixer_records

aten = torch.ops.aten


def count_parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _cpu_flash_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # (B, heads, L, E) shapes; FlopCounterMode has no formula for the CPU flash kernel.
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _onednn_linear_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    # mkldnn::_linear_pointwise: the GEMM of x (..., in) with W (out, in)
    return 2 * x_shape.numel() * w_shape[0]


def _onednn_conv_flops(x_shape, w_shape, *args, out_shape=None, **kwargs) -> int:
    # mkldnn::_convolution_pointwise: the convolution; its fused element-wise op is not counted
    return conv_flop_count(x_shape, w_shape, out_shape, transposed=False)


def _custom_counts() -> dict:
    """Formulas for the ops FlopCounterMode does not know: the CPU flash attention kernel and the
    oneDNN inference ops of `detailsr.models.layers`."""
    mapping = {}
    op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _cpu_flash_flops
    mkldnn = torch.ops.mkldnn
    if hasattr(mkldnn, "_linear_pointwise"):
        # keyed by op, as FlopCounterMode looks them up: the formulas read the default overloads'
        # arguments, the ones `layers` calls
        mapping[mkldnn._linear_pointwise] = _onednn_linear_flops
        mapping[mkldnn._convolution_pointwise] = _onednn_conv_flops
    return mapping


@torch.no_grad()
def executed_macs(net: SRNetwork, x: torch.Tensor) -> int:
    """Multiply-accumulates performed upscaling `x` as `upscale` runs it (whole image, no tiles)."""
    with FlopCounterMode(display=False, custom_mapping=_custom_counts()) as counter:
        forward_any_size(net, x, net.condition_for(x))
    return counter.get_total_flops() // 2


def nominal_flops(net: SRNetwork, height: int, width: int, ratio: float | None = None) -> int | None:
    """The paper's analytic FLOPs for an LR input of height x width (None: no analytic counter)."""
    if net.arch == "camixersr":
        r = getattr(net, "ratio", 0.5) if ratio is None else ratio
        return camixersr_official_flops(height, width, net.config, r)
    return None


def camixersr_official_flops(h: int, w: int, config: dict, ratio: float) -> int:
    """The official `CAMixerSR.flops()` counter, integer arithmetic where the code uses it."""
    c, s = config["n_feats"], config["scale"]
    n_blocks = sum(config["n_block"])
    hw = h * w
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    nwin = (hp // 16) * (wp // 16)
    cd = c + 4
    predictor = (hw * cd * cd) // 4 * 2 + hw * (cd // 4) * 3 * 2 + hw * (cd // 4) * 2 * 2
    predictor += nwin * 256 * 16 * 2 + nwin * 16 * 2 * 16 * 2
    mixer = (
        predictor
        + hw * c * c * 2  # project_v
        + 2 * hw * c * c * 2 * ratio  # q and k projections of the attended share
        + int(hp * wp * ratio / 256) * 2 * 256 * 256 * c  # attention, counted as MACs
        + 2 * hw * c * 9 * 2  # two depth-wise convs
        + hw * c * c * 2  # project_out
    )
    ffn = hw * c * 2 * c * 2 + hw * 2 * c * 9 * 2 + hw * c * c * 2
    total = (
        hw * 3 * c * 9 * 2  # head
        + hw * 8 * (c + 2) * 9 * 2  # global predictor (the official over-estimate)
        + n_blocks * (mixer + ffn)
        + len(config["n_block"]) * hw * c * c * 2  # group tails
        + hw * c * c * 9 * 2  # body tail
        + hw * c * s * s * 3 * 9 * 2  # tail
    )
    return int(total)


@dataclass
class CostReport:
    params: int
    height: int
    width: int
    ratio: float | None
    nominal_flops: int | None
    executed_macs: int
    # share of (pixel, routed mixer) pairs that took the expensive path (None: nothing is routed)
    expensive_share: float | None = None

    @property
    def executed_flops(self) -> int:
        return 2 * self.executed_macs


def cost_report(net: SRNetwork, x: torch.Tensor, ratio: float | None = None) -> CostReport:
    """Parameters, nominal and executed cost of `net` on the LR input `x` (1 x 3 x H x W)."""
    h, w = x.shape[-2:]
    with ratio_setting(net, ratio):
        used = getattr(net, "ratio", None)
        clear_records(net)
        macs = executed_macs(net, x)
    records = mixer_records(net, routed_only=True)
    share = torch.stack([r.pixel_mask().float().mean() for r in records]).mean().item() if records else None
    # ratio "auto": the paper's counter at the share of windows this image took
    nominal = nominal_flops(net, h, w, share if used == AUTO_RATIO else used)
    return CostReport(count_parameters(net), h, w, used, nominal, macs, share)

"""ONNX export of detailsr networks (`detailsr export`).

The exported graph takes `input`, N x 3 x H x W float32 RGB in [0, 1], and returns `output`,
N x 3 x sH x sW float32 clamped to [0, 1] (s: the network's scale): what `detailsr.inference.run`
returns for a whole image. The graph includes the test pipeline's padding: the input is
reflect-padded at the bottom and right to the network's multiple (CAMixerSR: its 16-pixel window;
ESC: the 32-pixel window, `pipeline_multiple`) and the result cropped back, so any H, W of at least
`export_min_side(net)` (CAMixerSR 16, ESC 17, ESC-XL 25) gives what `upscale` gives.
Batch, height and width are dynamic axes.

CAMixerSR keeps its content-aware routing in the graph: the number of attended windows K is
computed in the graph from the window count (a fixed ratio) or from the predictor's scores
(ratio "auto"), then TopK, Gather, attention and ScatterElements on those windows only.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError
from .models.base import SRNetwork, check_ratio

DEFAULT_OPSET = 17
MIN_OPSET = 11  # dynamic Pad amounts and the TopK count as inputs

# Families that export: arch -> the multiple the graph pads to (None: the network's pipeline_multiple).
EXPORTABLE: dict[str, int | None] = {"camixersr": 16, "esc": None}

# Families that do not, and the operation that stops them.
_CATEGORY_SORT = ("its adaptive category attention sorts the tokens by their data-dependent category "
                  "(aten::sort, which torch's ONNX exporter does not export)")
NOT_EXPORTABLE = {
    "atd": _CATEGORY_SORT,
    "atd_light": _CATEGORY_SORT,
    "pp_atd_light": "Pure-Pass selects the impure pixels with nonzero() per image (a data-dependent shape), "
                    "and the ATD-light it runs sorts tokens by category (aten::sort)",
    "camixerosr": "its latitude condition is a second input and its DCNv2 gathers are not verified for export",
    "classsr_camixersr": "its classifier picks one branch per image in Python (control flow on data)",
    "esc_fp": "not verified for export (only ESC, ESC-light and ESC-XL are)",
    "esc_real": "not verified for export (only ESC, ESC-light and ESC-XL are)",
}


def export_min_side(net: SRNetwork) -> int:
    """The smallest input side for which the graph computes what `upscale` does: its reflect padding
    must be shorter than the side, and `upscale` replicate-pads sides below the network's `min_size`."""
    return max(_multiple(net) // 2 + 1, net.min_size)


def export_onnx(
    net: SRNetwork,
    path: str | os.PathLike,
    ratio: float | str | None = None,
    opset: int | None = None,
    example_size: tuple[int, int] = (64, 64),
) -> Path:
    """Write `net` as an ONNX graph to `path` (atomically: nothing is left there on failure).

    Input `input`: N x 3 x H x W float32 in [0, 1]; output `output`: N x 3 x sH x sW float32 in
    [0, 1] (see the module docstring for the padding, the dynamic axes and the routing).
    ratio: CAMixerSR's share of attended windows in [0, 1] or "auto" (None: the network's current
    setting). opset: ONNX opset (default 17). example_size: (H, W) of the traced example input; the
    graph runs other sizes too. Raises ConfigError for a network or setting that cannot be exported.
    """
    check_exportable(net, ratio)
    opset = DEFAULT_OPSET if opset is None else opset
    if not MIN_OPSET <= opset <= _max_opset():
        raise ConfigError(f"opset {opset} is not supported; choose {MIN_OPSET} to {_max_opset()}")
    h, w = example_size
    if min(h, w) < export_min_side(net):
        raise ConfigError(f"example size {w}x{h} is too small for {net.arch}: sides of at least "
                          f"{export_min_side(net)} pixels")
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: folder {path.parent} does not exist")
    device = next(net.parameters()).device
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    with export_mode(net, ratio):
        _write_atomically(GraphModel(net, _multiple(net)), x, path, opset, _dynamic_axes(net))
    return path


def check_exportable(net: SRNetwork, ratio: float | str | None = None) -> None:
    """ConfigError naming what stops `net` (with `ratio`) from being exported, if anything does."""
    if net.arch in NOT_EXPORTABLE:
        raise ConfigError(f"{net.arch} cannot be exported to ONNX: {NOT_EXPORTABLE[net.arch]}")
    if net.arch not in EXPORTABLE:
        raise ConfigError(f"{net.arch} cannot be exported to ONNX (exportable: {', '.join(EXPORTABLE)})")
    if next(net.parameters()).dtype != torch.float32:
        raise ConfigError("export a float32 network (the graph computes in float32)")
    if ratio is not None and not net.content_aware:
        raise ConfigError(f"{net.arch} has no ratio (it is not content-aware)")
    if ratio is not None:
        check_ratio(ratio)
    if getattr(net, "routing", "learned") != "learned":
        raise ConfigError(f"routing {net.routing!r} cannot be exported: Pure-Pass vetoes windows with "
                          "boolean indexing, a data-dependent shape; export the learned routing")
    if any(getattr(m, "stochastic", False) for m in net.modules()):
        raise ConfigError("the stochastic window count (random draws) cannot be exported; "
                          "use a fixed ratio or 'auto'")


class GraphModel(nn.Module):
    """What the graph computes: reflect-pad to `multiple`, the network, crop, clamp to [0, 1]."""

    def __init__(self, net: SRNetwork, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m, s = self.multiple, self.net.scale
        # Pad amounts from the traced shape: the graph pads whatever size it is given (0 included).
        x = F.pad(x, (0, (m - w % m) % m, 0, (m - h % m) % m), mode="reflect")
        return self.net(x)[:, :, : h * s, : w * s].clamp(0, 1)


@contextlib.contextmanager
def export_mode(net: SRNetwork, ratio: float | str | None) -> Iterator[None]:
    """The network set up for tracing, restored afterwards: eval, `ratio`, the plain module path
    (CAMixerSR), routing in tensor ops (CAMixer's `graph_routing`), naive attention (explicit ops)."""
    saved_training = net.training
    saved_ratio = net.current_ratio() if net.content_aware else None
    saved_fast = getattr(net, "fast_path", None)
    mixers = [m for m in net.modules() if hasattr(m, "graph_routing")]
    attn_sites = [m for m in net.modules() if hasattr(m, "attn_type")]
    saved_attn = [m.attn_type for m in attn_sites]
    try:
        net.eval()
        if ratio is not None:
            net.set_ratio(ratio)
        if saved_fast is not None:
            net.fast_path = False
        for m in mixers:
            m.graph_routing = True
        for m in attn_sites:
            m.attn_type = "naive"
        yield
    finally:
        for m, name in zip(attn_sites, saved_attn, strict=True):
            m.attn_type = name
        for m in mixers:
            m.graph_routing = False
        if saved_fast is not None:
            net.fast_path = saved_fast
        if saved_ratio is not None:
            net.set_ratio(saved_ratio)
        net.train(saved_training)


def _write_atomically(model: nn.Module, x: torch.Tensor, path: Path, opset: int, axes: dict) -> None:
    """Export to a temporary file beside `path`, check it, then rename it into place."""
    import onnx

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with torch.no_grad():
            model(x)  # fills the networks' caches (ESC's symmetrised kernel): constants, not traced ops
        with torch.no_grad(), warnings.catch_warnings():
            # The TorchScript exporter (`dynamo=False`) is deprecated but needs no extra package,
            # and its tracer keeps the shape arithmetic dynamic; its tracer warnings are expected.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), tmp, dynamo=False, opset_version=opset, input_names=["input"],
                              output_names=["output"], dynamic_axes=axes, do_constant_folding=True,
                              training=torch.onnx.TrainingMode.PRESERVE)  # eval already; keeps caches
        onnx.checker.check_model(tmp)
        os.replace(tmp, path)
    except torch.onnx.OnnxExporterError as e:
        raise ConfigError(f"cannot export to ONNX: {_first_line(e)}") from e
    except onnx.checker.ValidationError as e:
        raise ConfigError(f"the exported graph fails onnx.checker: {_first_line(e)}") from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _dynamic_axes(net: SRNetwork) -> dict[str, dict[int, str]]:
    axes = {0: "batch", 2: "height", 3: "width"}
    return {"input": dict(axes), "output": {k: f"{v}_out" if k else v for k, v in axes.items()}}


def _multiple(net: SRNetwork) -> int:
    multiple = EXPORTABLE.get(net.arch)
    return multiple if multiple is not None else max(net.pipeline_multiple, 1)


def _max_opset() -> int:
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


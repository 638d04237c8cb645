"""`detailsr export`: write a network as an ONNX graph (dynamic batch, height and width)."""

from __future__ import annotations

import argparse

from ..errors import ConfigError
from .flops import size_value
from .options import add_model_options, load_from_args, positive_int, routing_ratio


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export", parents=[common], help="export a model to ONNX",
        description="Write the model as an ONNX graph: input N x 3 x H x W float32 RGB in [0, 1], output "
        "N x 3 x sH x sW in [0, 1]; batch, height and width are dynamic; the padding to the network's "
        "window is inside the graph. CAMixerSR keeps its routing in the graph; ESC exports with the naive "
        "attention. Needs the onnx extra: pip install 'detailsr[onnx]'.",
    )
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")
    add_model_options(p)
    p.add_argument("--ratio", type=routing_ratio, help="CAMixerSR: share of windows given attention, or auto "
                   "(the predictor decides per image and layer, computed in the graph; the default)")
    p.add_argument("--opset", type=positive_int, help="ONNX opset version (default 17)")
    p.add_argument("--size", type=size_value, default=(64, 64),
                   help="WxH of the example LR input traced (default 64x64); other sizes run too")
    p.add_argument("--untrained", action="store_true",
                   help="random weights of the zoo model's architecture (no checkpoint needed; for tests)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    path = Path(args.output)
    if path.exists() and not args.overwrite:
        raise ConfigError(f"{path} exists (use --overwrite to replace it)")
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; give a file name such as model.onnx")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs the onnx package: pip install 'detailsr[onnx]'") from None
    from ..export import DEFAULT_OPSET, check_exportable, export_onnx

    net = load_from_args(args)
    check_exportable(net, args.ratio)  # before any tracing: a clear refusal at once
    w, h = args.size
    export_onnx(net, path, ratio=args.ratio, opset=args.opset, example_size=(h, w))
    ratio = args.ratio if args.ratio is not None else getattr(net, "ratio", None)
    routing = f", ratio {ratio}" if net.content_aware and ratio is not None else ""
    size_mb = path.stat().st_size / 2**20
    print(f"{path}: {args.model or 'default'} ({net.arch}, x{net.scale}{routing}) as ONNX opset "
          f"{args.opset or DEFAULT_OPSET}, {size_mb:.1f} MiB, dynamic batch/height/width")
    return 0

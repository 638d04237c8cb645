"""`detailsr flops`: parameters, nominal (paper-convention) and executed FLOPs."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from .options import RATIO_HELP, add_model_options, load_from_args, routing_ratio


def size_value(text: str) -> tuple[int, int]:
    """'WxH' -> (W, H)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x180, got {text!r}") from None
    if w < 1 or h < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size, got {text!r}")
    return w, h


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "flops", parents=[common], help="count parameters and FLOPs",
        description="Parameters; nominal FLOPs as the model's paper counts them (CAMixerSR: the official "
        "analytic counter, whose large-image tables use a 32x32 LR input); executed multiply-accumulates "
        "counted op by op on a real image or a random input, following the routing actually taken.",
    )
    add_model_options(p)
    p.add_argument("--size", type=size_value, help="LR input WxH (default: the LR of a 1280x720 output)")
    p.add_argument("--image", help="count on this image (its content sets the routing)")
    p.add_argument("--ratio", type=routing_ratio, help=RATIO_HELP)
    p.add_argument("--untrained", action="store_true",
                   help="random weights of the zoo model's architecture (no checkpoint needed)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..flops import cost_report
    from ..imageio import read_image, to_tensor

    if args.image and args.size:
        raise UsageError("give --size or --image, not both")
    net = load_from_args(args)
    if args.image:
        x = to_tensor(read_image(args.image).pixels)
        source = f"image {args.image}"
    else:
        w, h = args.size or (1280 // net.scale, 720 // net.scale)
        x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
        source = "random input"
    x = x.to(next(net.parameters()).device)
    report = cost_report(net, x, args.ratio)
    s = net.scale
    print(f"model        {args.model or 'default'} ({net.arch}, x{s})" +
          (f", ratio {report.ratio:g}" if isinstance(report.ratio, float) else
           f", ratio {report.ratio}" if report.ratio is not None else ""))
    print(f"parameters   {report.params:,}")
    print(f"input        {report.width}x{report.height} LR -> {report.width * s}x{report.height * s} ({source})")
    if report.nominal_flops is not None:
        print(f"nominal      {report.nominal_flops / 1e9:.4f} GFLOPs (paper counter: 2 x MACs for convs and "
              "linears, window attention as MACs)")
    if report.expensive_share is not None:
        print(f"routing      {100 * report.expensive_share:.1f} % of the pixels took the expensive path "
              "(mean over the routed mixers)")
    print(f"executed     {report.executed_macs / 1e9:.4f} GMACs = {report.executed_flops / 1e9:.4f} GFLOPs "
          "(convs, linears, matmuls, attention)")
    return 0

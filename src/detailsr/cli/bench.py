"""`detailsr bench`: latency, throughput and peak memory of models and ratios in one interleaved run."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from ..choices import ALL_ATTENTION_BACKENDS
from ..errors import UsageError
from .flops import size_value
from .options import (
    add_compile_option,
    add_device_options,
    add_precision_option,
    add_routing_options,
    check_precision,
    maybe_compile,
    non_negative_int,
    positive_int,
    routing_ratio,
    runtime_options,
    to_device,
    use_device,
    use_threads,
    with_precision,
)


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench", parents=[common], help="measure latency and memory",
        description="Warm up, then time N rounds in which every model/ratio runs once (interleaved, so that "
        "all share the machine's conditions); report median/min/max latency, output megapixels per "
        "second, peak memory, executed GFLOPs (2 x MACs, counted op by op on the same input), and each "
        "median relative to the first case.",
    )
    p.add_argument("-m", "--models", nargs="+", metavar="MODEL",
                   help="zoo names or checkpoint files (default: the embedded CAMixerSR-S x4)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--size", type=size_value, help="LR input WxH (seeded random pixels)")
    source.add_argument("--image", help="LR input: this image (its content sets the routing)")
    p.add_argument("--ratio", type=routing_ratio, nargs="+",
                   help="ratios to compare (content-aware models; auto: CAMixer's predictor decides)")
    add_device_options(p)
    add_precision_option(p)
    add_compile_option(p)
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--warmup", type=non_negative_int, default=1)
    p.add_argument("--attn", choices=ALL_ATTENTION_BACKENDS, help="attention kernel for every model")
    add_routing_options(p)
    p.add_argument("--untrained", action="store_true",
                   help="random weights of each zoo model's architecture (cost only, no checkpoint needed)")
    p.add_argument("--json", type=Path, metavar="FILE")
    p.set_defaults(run=run)


def build_cases(args: argparse.Namespace) -> list:
    from ..benchmark import Case
    from ..models.registry import build_untrained, load_model

    if args.untrained and not args.models:
        raise UsageError("--untrained needs -m with zoo model names")
    cases = []
    options = runtime_options(args)
    check_precision(None, args.precision, args.device)
    for name in args.models or [None]:
        net = to_device((build_untrained if args.untrained else load_model)(name, **options), args.device)
        net = maybe_compile(with_precision(net, args.precision), args)
        ratios = args.ratio if (args.ratio and net.content_aware) else [None]
        for ratio in ratios:
            label = name or "default"
            label = label if ratio is None else f"{label} @ {ratio if isinstance(ratio, str) else format(ratio, 'g')}"
            cases.append(Case(label, net, ratio))
    return cases


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark import measure
    from ..compilation import eagerly
    from ..flops import executed_macs
    from ..imageio import read_image, to_tensor, write_bytes_atomic
    from ..inference import ratio_setting
    from ..precision import PRECISION_DTYPES, precision_guard

    use_threads(args)
    use_device(args)
    cases = build_cases(args)
    if args.compile:  # a compiled network compiles again once its caches are filled
        args.warmup = max(args.warmup, 2)
    if args.image:
        x = to_tensor(read_image(args.image).pixels)
    else:
        x = torch.rand(1, 3, args.size[1], args.size[0], generator=torch.Generator().manual_seed(0))
    h, w = x.shape[-2:]
    x = x.to(PRECISION_DTYPES[args.precision])
    with precision_guard(cases[0].net):  # every case has the same device and dtype
        measure(cases, x, runs=args.runs, warmup=args.warmup)
    out_pixels = w * h * cases[0].net.scale ** 2
    rows = [c.summary(w * h * c.net.scale ** 2) for c in cases]
    for case, row in zip(cases, rows, strict=True):
        with ratio_setting(case.net, case.ratio), torch.no_grad(), precision_guard(case.net), eagerly(case.net):
            row["executed_gflops"] = 2 * executed_macs(case.net, x.to(args.device)) / 1e9
    base = rows[0]
    weights = ", untrained weights" if args.untrained else ""
    source = f"image {args.image}" if args.image else "random input"
    precision = ("" if args.precision == "fp32" else f", {args.precision}") + _compiled(cases, args)
    print(f"LR {w}x{h} ({source}), {torch.get_num_threads()} threads, {args.runs} runs after {args.warmup} "
          f"warm-up{weights}{precision}")
    print(f"{'case':<36} {'median s':>9} {'min s':>7} {'max s':>7} {'MP/s':>7} {'peak MiB':>9} {'GFLOPs':>8} "
          f"{'time vs first':>14} {'FLOPs vs first':>15}")
    for r in rows:
        print(f"{r['label']:<36} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
              f"{r['output_mpix_per_s']:>7.3f} {r['peak_memory_mib']:>9.1f} {r['executed_gflops']:>8.2f} "
              f"{r['median_s'] / base['median_s']:>13.3f}x {r['executed_gflops'] / base['executed_gflops']:>14.3f}x")
    if args.json:
        report = {"command": "detailsr " + shlex.join(sys.argv[1:]), "image": args.image,
                  "size": [w, h], "threads": torch.get_num_threads(), "device": args.device,
                  "precision": args.precision, "compiled": bool(_compiled(cases, args)) and not _failed(cases),
                  "untrained": args.untrained,
                  "output_pixels": out_pixels, "cases": rows}
        write_bytes_atomic(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0


def _failed(cases: list) -> bool:
    return any(getattr(c.net, "compile_error", None) for c in cases)


def _compiled(cases: list, args: argparse.Namespace) -> str:
    if not args.compile:
        return ""
    return ", compile failed: eager" if _failed(cases) else ", compiled"

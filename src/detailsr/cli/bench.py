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
from .options import add_device_options, non_negative_int, positive_int, ratio_value, to_device, use_threads


def add_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bench", parents=[common], help="measure latency and memory",
        description="Warm up, then time N rounds in which every model/ratio runs once (interleaved, so that "
        "all share the machine's conditions); report median/min/max latency, output megapixels per "
        "second and peak memory, and each median relative to the first case.",
    )
    p.add_argument("-m", "--models", nargs="+", metavar="MODEL",
                   help="zoo names or checkpoint files (default: the embedded CAMixerSR-S x4)")
    p.add_argument("--size", type=size_value, required=True, help="LR input WxH")
    p.add_argument("--ratio", type=ratio_value, nargs="+", help="ratios to compare (content-aware models)")
    add_device_options(p)
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--warmup", type=non_negative_int, default=1)
    p.add_argument("--attn", choices=ALL_ATTENTION_BACKENDS, help="attention kernel for every model")
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
    for name in args.models or [None]:
        options = {"attn_type": args.attn} if args.attn else {}
        net = to_device((build_untrained if args.untrained else load_model)(name, **options), args.device)
        ratios = args.ratio if (args.ratio and net.content_aware) else [None]
        for ratio in ratios:
            label = name or "default"
            label = label if ratio is None else f"{label} @ {ratio:g}"
            cases.append(Case(label, net, ratio))
    return cases


def run(args: argparse.Namespace) -> int:
    import torch

    from ..benchmark import measure
    from ..imageio import write_bytes_atomic

    use_threads(args)
    cases = build_cases(args)
    w, h = args.size
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    measure(cases, x, runs=args.runs, warmup=args.warmup)
    out_pixels = w * h * cases[0].net.scale ** 2
    rows = [c.summary(w * h * c.net.scale ** 2) for c in cases]
    base = rows[0]["median_s"]
    weights = ", untrained weights" if args.untrained else ""
    print(f"LR {w}x{h}, {torch.get_num_threads()} threads, {args.runs} runs after {args.warmup} warm-up{weights}")
    print(f"{'case':<40} {'median s':>9} {'min s':>7} {'max s':>7} {'MP/s':>7} {'peak MiB':>9} {'vs first':>9}")
    for r in rows:
        print(f"{r['label']:<40} {r['median_s']:>9.3f} {r['min_s']:>7.3f} {r['max_s']:>7.3f} "
              f"{r['output_mpix_per_s']:>7.3f} {r['peak_memory_mib']:>9.1f} {r['median_s'] / base:>8.2f}x")
    if args.json:
        report = {"command": "detailsr " + shlex.join(sys.argv[1:]),
                  "size": [w, h], "threads": torch.get_num_threads(), "device": args.device,
                  "untrained": args.untrained,
                  "output_pixels": out_pixels, "cases": rows}
        write_bytes_atomic(args.json, (json.dumps(report, indent=2) + "\n").encode())
    return 0

"""Parameters, nominal and executed FLOPs, and CPU latency per ratio of every model with weights,
and of architectures measured untrained (random weights: their speed does not depend on them).

    python benchmarks/cost.py [--weights ../shared/weights] [--untrained esc-light-x4 ...]
                              [--size 256x256] [--threads 1 2] [--runs 3]

Latency is measured with `detailsr.benchmark.measure`: all ratios of a model interleaved in one run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from common import SHARED, available_models, machine, save

import detailsr
from detailsr.benchmark import Case, measure
from detailsr.flops import cost_report
from detailsr.models.registry import build_untrained

UNTRAINED = ["esc-light-x4", "esc-x4", "esc-fp-x4", "atd-light-x4", "pp-atd-light-x4", "camixersr-odi-x4"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, default=SHARED / "weights")
    parser.add_argument("--size", default="256x256", help="LR WxH for latency")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.0])
    parser.add_argument("--untrained", nargs="*", default=UNTRAINED, metavar="ZOO_NAME",
                        help="architectures to time with random weights (default: one per family)")
    args = parser.parse_args()
    w, h = (int(v) for v in args.size.split("x"))
    flops_rows, latency_rows = [], []
    models = [(name, lambda path=path: detailsr.load_model(path)) for name, path in available_models(args.weights)]
    models += [(f"{name} (untrained)", lambda name=name: build_untrained(name)) for name in args.untrained]
    for name, build in models:
        net = build()
        ratios = args.ratios if net.content_aware else [None]
        for ratio in ratios:
            patch = cost_report(net, torch.rand(1, 3, 32, 32), ratio)
            hd = cost_report(net, torch.rand(1, 3, 720 // net.scale, 1280 // net.scale), ratio)
            flops_rows.append({"model": name, "ratio": ratio, "params": patch.params,
                               "nominal_mflops_32x32": None if patch.nominal_flops is None
                               else patch.nominal_flops / 1e6,
                               "executed_mflops_32x32": patch.executed_flops / 1e6,
                               "executed_gmacs_1280x720_out": hd.executed_macs / 1e9})
        for threads in args.threads:
            torch.set_num_threads(threads)
            cases = [Case(f"{name} @ {r}", net, r) for r in ratios]
            measure(cases, torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0)), runs=args.runs)
            for c in cases:
                latency_rows.append({"model": name, "threads": threads, **c.summary(w * h * net.scale ** 2)})
                print(latency_rows[-1])
    save("cost", {"latency_lr_size": [w, h], "machine": machine(), "flops": flops_rows,
                  "latency": latency_rows,
                  "command": f"python benchmarks/cost.py --size {args.size} --threads "
                             f"{' '.join(map(str, args.threads))} --runs {args.runs} "
                             f"--untrained {' '.join(args.untrained)}"})


if __name__ == "__main__":
    main()

"""PSNR/SSIM of every model with weights on this machine, on Set5 / Set14 / B100 at its scale.

    python benchmarks/quality.py [--weights ../shared/weights] [--datasets Set5 Set14 B100]

Writes benchmarks/results/quality.json; `python benchmarks/report.py` renders docs/results.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import SHARED, available_models, machine, save

import detailsr
from detailsr.evaluation import evaluate_folder
from detailsr.models.base import check_ratio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights", type=Path, default=SHARED / "weights")
    parser.add_argument("--datasets", nargs="+", default=["Set5", "Set14", "B100"])
    parser.add_argument("--ratios", type=check_ratio, nargs="+", default=["auto", 1.0, 0.5, 0.25, 0.0])
    args = parser.parse_args()
    rows = []
    for name, path in available_models(args.weights):
        net = detailsr.load_model(path)
        for ratio in args.ratios if net.content_aware else [None]:
            for dataset in args.datasets:
                result = evaluate_folder(net, SHARED / "datasets" / dataset, net.scale, ratio=ratio)
                rows.append({"model": name, "scale": net.scale, "ratio": ratio, "dataset": dataset,
                             "images": len(result.images), "psnr_y": result.mean("psnr"),
                             "ssim_y": result.mean("ssim"), "executed_gflops": result.mean("gflops"),
                             "attended": _mean_attended(result), "seconds": result.mean("seconds")})
                print(rows[-1])
    save("quality", {"protocol": "Y (BT.601), crop = scale, MATLAB-bicubic LR", "machine": machine(),
                     "command": "python benchmarks/quality.py", "rows": rows})


def _mean_attended(result) -> float | None:
    shares = [i.extra["attended"] for i in result.images.values() if "attended" in i.extra]
    return sum(shares) / len(shares) if shares else None


if __name__ == "__main__":
    main()

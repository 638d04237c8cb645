"""Does CAMixerSR-S's routing follow the content? Attended share and flip agreement of its maps.

    python benchmarks/routing.py [--datasets Set5 Set14] [--ratios auto 0.5 0.25]

For every LR image (the dataset's MATLAB-bicubic x4 LR) and ratio: the routing map (share of the
mixers in which each pixel attended, `detailsr.routing_maps`) of the image, and of its vertical and
horizontal flips mapped back. Agreement = 1 - mean |map - map of the flip, flipped back|: 1 when
the routing depends on the content only, lower when the window's position decides.
"""

from __future__ import annotations

import argparse

import numpy as np
from common import SHARED, machine, save

import detailsr
from detailsr.evaluation import hr_files, load_pair
from detailsr.models.base import check_ratio
from detailsr.models.record import attended_window_share


def agreement(net, lr: np.ndarray, ratio, axis: int) -> float:
    own = detailsr.routing_maps(net, lr, ratio=ratio)
    flipped = detailsr.routing_maps(net, np.ascontiguousarray(np.flip(lr, axis)), ratio=ratio)
    return float(1 - np.abs(own - np.flip(flipped, axis)).mean())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--datasets", nargs="+", default=["Set5", "Set14"])
    parser.add_argument("--ratios", type=check_ratio, nargs="+", default=["auto", 0.5, 0.25])
    args = parser.parse_args()
    net = detailsr.load_model()
    rows = []
    for dataset in args.datasets:
        folder = SHARED / "datasets" / dataset
        for ratio in args.ratios:
            shares, vertical, horizontal = [], [], []
            for path in hr_files(folder):
                lr, _ = load_pair(path, folder, net.scale)
                detailsr.routing_maps(net, lr, ratio=ratio)
                shares.append(attended_window_share(net))
                vertical.append(agreement(net, lr, ratio, 0))
                horizontal.append(agreement(net, lr, ratio, 1))
            rows.append({"dataset": dataset, "ratio": ratio, "images": len(shares),
                         "attended": float(np.mean(shares)), "vertical_flip_agreement": float(np.mean(vertical)),
                         "horizontal_flip_agreement": float(np.mean(horizontal))})
            print(rows[-1])
    save("routing", {"model": "camixersr-s-x4", "machine": machine(), "rows": rows,
                     "command": "python benchmarks/routing.py --datasets " + " ".join(args.datasets)
                                + " --ratios " + " ".join(str(r) for r in args.ratios)})


if __name__ == "__main__":
    main()

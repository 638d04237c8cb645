"""Each channels-last inference path against its plain-module twin (the oracle the tests compare it
with), interleaved in one run, at every ratio:

- CAMixerSR-S x4, the embedded weights, a real 256x256 LR crop;
- CAMixerOSR x4, seeded weights (no ODI checkpoint is stored here; speed does not depend on the
  weights, only on the number of attended windows, which the ratio fixes), a real panorama resized
  to a 128x256 LR, with its latitude condition.

    python benchmarks/fast_path.py [--threads 1] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch
from common import SHARED, machine, save
from official_camixersr import lr_image
from PIL import Image

import detailsr
from detailsr.imageio import read_image, to_tensor
from detailsr.models.camixersr import latitude_condition
from detailsr.models.registry import build_untrained

PANORAMA = SHARED / "datasets" / "ODI" / "street_equirec2perspec.jpg"


def panorama_lr(height: int, width: int) -> torch.Tensor:
    pixels = read_image(PANORAMA).pixels[..., :3]
    return to_tensor(np.array(Image.fromarray(pixels).resize((width, height), Image.Resampling.BICUBIC)))


def compare(name: str, net, inputs: tuple, ratios: list[float], runs: int) -> list[dict]:
    """Median seconds of the plain modules and of the fast path at each ratio, interleaved."""
    times: dict[tuple[float, bool], list[float]] = {}
    with torch.inference_mode():
        for run in range(runs + 1):  # the first round warms up
            for ratio in ratios:
                net.set_ratio(ratio)
                for fast in (False, True):
                    net.fast_path = fast
                    start = time.perf_counter()
                    net(*inputs)
                    if run:
                        times.setdefault((ratio, fast), []).append(time.perf_counter() - start)
    net.fast_path = True
    rows = []
    for ratio in ratios:
        plain, fast = (statistics.median(times[ratio, f]) for f in (False, True))
        rows.append({"model": name, "ratio": ratio, "plain_s": plain, "fast_s": fast, "speedup": plain / fast})
        print(f"{name:>26} {ratio:>6} {plain:>8.3f} {fast:>8.3f} {plain / fast:>8.2f}x")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.0])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{'model':>26} {'ratio':>6} {'plain s':>8} {'fast s':>8} {'speed-up':>9}   ({args.threads} thread(s), "
          f"median of {args.runs})")
    rows = compare("CAMixerSR-S x4 256x256", detailsr.load_model(), (lr_image(PANORAMA, (256, 256)),),
                   args.ratios, args.runs)
    rows += compare("CAMixerOSR x4 128x256", build_untrained("camixersr-odi-x4"),
                    (panorama_lr(128, 256), latitude_condition(128, 256)), args.ratios, args.runs)
    command = "python benchmarks/fast_path.py " + " ".join(sys.argv[1:])
    print(f"saved {save(f'fast_path_t{args.threads}', {'command': command, 'machine': machine(), 'rows': rows})}")


if __name__ == "__main__":
    main()

"""An 8K frame on the CPU: `detailsr upscale` x4 from 1920x1080, peak memory, speed, tiles vs whole.

    python benchmarks/large_image.py [--model camixersr-s-x4] [--threads 2] [--no-whole]

The input is a 1920x1080 crop of a real photo (the ODI street panorama, 6656x3328). Each run is the
real command in its own process; its peak resident memory comes from the kernel's accounting of
that process (wait4). The default run uses the default memory budget (tiles planned to fit, streamed
into the output); the whole-image run asks for one tile as large as the frame and lifts the
budget, and the two outputs are compared.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import SHARED, machine, save

from detailsr.imageio import read_image, write_image


def timed_command(args: list[str]) -> tuple[float, int]:
    """(seconds, peak resident bytes) of a command run to completion."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    stderr = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(args)} failed: {stderr.strip()}")
    return seconds, usage.ru_maxrss * 1024  # kilobytes on Linux


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image", type=Path, default=SHARED / "datasets" / "ODI" / "street_equirec2perspec.jpg")
    p.add_argument("--model", default="camixersr-s-x4")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--no-whole", action="store_true", help="skip the whole-image run (it needs ~7 GB)")
    args = p.parse_args()
    pixels = read_image(args.image).pixels
    top, left = (pixels.shape[0] - 1080) // 2, (pixels.shape[1] - 1920) // 2
    frame = np.ascontiguousarray(pixels[top : top + 1080, left : left + 1920, :3])
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "frame.png"
        write_image(src, frame)
        base = [sys.executable, "-m", "detailsr", "upscale", str(src), "-m", args.model, "--threads",
                str(args.threads), "-q"]
        # a tile larger than the frame runs it whole, whatever the budget and the cache
        whole = ["--max-memory", "64G", "--tile", str(max(frame.shape[:2]))]
        cases = {"default budget": []} if args.no_whole else {"default budget": [], "whole image": whole}
        for name, extra in cases.items():
            out = Path(tmp) / f"{name.replace(' ', '_')}.png"
            seconds, peak = timed_command([*base, "-o", str(out), *extra])
            runs[name] = {"seconds": seconds, "peak_rss_gib": peak / 2**30,
                          "output_mpix_per_s": 7680 * 4320 / seconds / 1e6, "output": out}
            print(f"{name}: {seconds:.1f} s, peak RSS {peak / 2**30:.2f} GiB, "
                  f"{runs[name]['output_mpix_per_s']:.3f} output MP/s")
        result = {"command": "python benchmarks/large_image.py " + " ".join(sys.argv[1:]), "machine": machine(),
                  "input": f"{args.image.name}, 1920x1080 centre crop", "model": args.model,
                  "threads": args.threads}
        if "whole image" in runs:
            a, b = (read_image(runs[n]["output"]).pixels.astype(np.float64) for n in ("default budget", "whole image"))
            result["tiled_vs_whole_mean_abs_255"] = float(np.abs(a - b).mean())
            result["tiled_vs_whole_max_abs_255"] = float(np.abs(a - b).max())
            print(f"default budget vs whole image: mean abs {result['tiled_vs_whole_mean_abs_255']:.3f} / 255, "
                  f"max {result['tiled_vs_whole_max_abs_255']:.0f} / 255")
        result["runs"] = {k: {kk: vv for kk, vv in v.items() if kk != "output"} for k, v in runs.items()}
    save("large_image", result)


if __name__ == "__main__":
    main()

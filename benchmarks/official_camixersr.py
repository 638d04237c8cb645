"""CAMixerSR-S latency, detailsr against the official code, interleaved in one run.

The official network file is not part of detailsr: fetch the public repository into a scratch
folder outside this one and point `--official` at its `codes/basicsr/archs/CAMixerSR_arch.py`, e.g.

    git clone https://github.com/icandle/CAMixerSR /tmp/CAMixerSR
    pip install einops
    python benchmarks/official_camixersr.py --official /tmp/CAMixerSR/codes/basicsr/archs/CAMixerSR_arch.py

The file imports two BasicSR helpers; BasicSR itself is not needed: its registry becomes a no-op
and `flow_warp` is BasicSR's function (bilinear grid_sample, border padding, align_corners=True),
written out here from its documented behaviour. Both networks get the same weights (`params_ema` of the
official CAMixerSR_S.pth) and the same real LR image; each timed run alternates official and
detailsr at every ratio, so machine noise falls on both. The official eval forward draws its K with
Gumbel noise (its own routing); detailsr runs its default deterministic K.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import SHARED, machine, save

from detailsr import load_model
from detailsr.imageio import read_image, to_tensor
from detailsr.resize import bicubic_downscale


def basicsr_flow_warp(x, flow, interp_mode="bilinear", padding_mode="zeros", align_corners=True):
    """BasicSR's `flow_warp`: sample x (N, C, H, W) at pixel grid + flow (N, H, W, 2), x then y."""
    _, _, h, w = x.shape
    gy, gx = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    px, py = gx + flow[..., 0], gy + flow[..., 1]
    grid = torch.stack((2.0 * px / max(w - 1, 1) - 1.0, 2.0 * py / max(h - 1, 1) - 1.0), dim=3)
    return F.grid_sample(x, grid, mode=interp_mode, padding_mode=padding_mode, align_corners=align_corners)


def official_module(path: Path) -> types.ModuleType:
    registry = types.SimpleNamespace(register=lambda *a, **k: (lambda cls: cls))
    stubs = {
        "basicsr": types.ModuleType("basicsr"),
        "basicsr.archs": types.ModuleType("basicsr.archs"),
        "basicsr.archs.arch_util": types.ModuleType("basicsr.archs.arch_util"),
        "basicsr.utils": types.ModuleType("basicsr.utils"),
        "basicsr.utils.registry": types.ModuleType("basicsr.utils.registry"),
    }
    stubs["basicsr.archs.arch_util"].flow_warp = basicsr_flow_warp
    stubs["basicsr.utils.registry"].ARCH_REGISTRY = registry
    sys.modules.update(stubs)
    spec = importlib.util.spec_from_file_location("official_camixersr_arch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def lr_image(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """The centre crop of `size` (h, w) of the image's x4 MATLAB-bicubic LR."""
    hr = read_image(path).pixels[..., :3]
    h, w = size[0] * 4, size[1] * 4
    top, left = max(0, (hr.shape[0] - h) // 2), max(0, (hr.shape[1] - w) // 2)
    lr = bicubic_downscale(hr[top : top + h, left : left + w], 4)
    if lr.shape[:2] != size:
        raise SystemExit(f"{path}: its x4 LR is {lr.shape[1]}x{lr.shape[0]}, smaller than {size[1]}x{size[0]}")
    return to_tensor(np.ascontiguousarray(lr))


def timed(net, x: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        net(x)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, required=True, help="the official CAMixerSR_arch.py")
    p.add_argument("--weights", type=Path, default=SHARED / "weights" / "CAMixerSR_S.pth")
    p.add_argument("--image", type=Path, default=SHARED / "datasets" / "ODI" / "street_equirec2perspec.jpg")
    p.add_argument("--size", default="256x256", help="LR crop HxW")
    p.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.5, 0.25, 0.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--official-k", action="store_true",
                   help="detailsr draws K as the official code does (stochastic=True): both attend the same "
                   "number of windows on average; by default detailsr attends exactly ratio x N")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    x = lr_image(args.image, size)
    weights = torch.load(args.weights, map_location="cpu", weights_only=True)["params_ema"]
    official_cls = official_module(args.official).CAMixerSR

    nets = {}
    for ratio in args.ratios:
        official = official_cls(n_feats=36, ratio=ratio).eval()
        official.load_state_dict(weights, strict=True)
        nets[ratio] = (official, load_model({"params_ema": weights}, ratio=ratio, stochastic=args.official_k))
    times = {(r, who): [] for r in args.ratios for who in ("official", "detailsr")}
    for run in range(args.runs + 1):  # the first round warms up
        for ratio, (official, ours) in nets.items():
            for who, net in (("official", official), ("detailsr", ours)):
                seconds = timed(net, x)
                if run:
                    times[(ratio, who)].append(seconds)

    rows = []
    for ratio in args.ratios:
        off, ours = (statistics.median(times[(ratio, who)]) for who in ("official", "detailsr"))
        rows.append({"ratio": ratio, "official_s": off, "detailsr_s": ours, "speedup": off / ours,
                     "official_runs": times[(ratio, "official")], "detailsr_runs": times[(ratio, "detailsr")]})
    full = {r["ratio"]: r for r in rows}
    rule = "the official K rule on both sides" if args.official_k else "detailsr with K = ratio x N"
    print(f"CAMixerSR-S x4, LR {size[1]}x{size[0]} of {args.image.name}, {args.threads} thread(s), "
          f"median of {args.runs} interleaved runs, {rule}")
    print(f"{'ratio':>6} {'official s':>11} {'detailsr s':>11} {'speed-up':>9} {'vs ratio 1':>11}")
    for r in rows:
        relative = r["detailsr_s"] / full[1.0]["detailsr_s"] if 1.0 in full else float("nan")
        print(f"{r['ratio']:>6} {r['official_s']:>11.3f} {r['detailsr_s']:>11.3f} {r['speedup']:>8.2f}x "
              f"{relative:>11.2f}")
    command = "python benchmarks/official_camixersr.py " + " ".join(sys.argv[1:])
    suffix = "_official_k" if args.official_k else ""
    save(f"official_camixersr_{args.size}_t{args.threads}{suffix}", {
        "command": command, "machine": machine(), "image": args.image.name, "size": args.size, "rule": rule,
        "rows": rows})


if __name__ == "__main__":
    main()

"""ATD-light x4 latency, detailsr against the official code, interleaved in one run.

The official network file is not part of detailsr: take it from the public repository into a
scratch folder outside this one and point `--official` at its `basicsr/archs/atd_arch.py`, e.g.

    git clone https://github.com/LabShuHangGU/Adaptive-Token-Dictionary /tmp/ATD
    python benchmarks/official_atd.py --official /tmp/ATD/basicsr/archs/atd_arch.py

The file imports BasicSR's `to_2tuple` / `trunc_normal_`, its registry and fairscale's
`checkpoint_wrapper`; none of them is needed: they are stubbed here (the registry is a no-op, the
wrapper is never called with `use_checkpoint` off, `trunc_normal_` only initialises weights that
are overwritten). No ATD-light checkpoint is on this machine, so both networks get the same
*untrained* weights (detailsr's seeded init, loaded into the official network with strict=True)
and the same real LR crop; timing depends on the weights only through the category sort, which
both sides do identically. Each timed run alternates official and detailsr, so machine noise
falls on both; the reported numbers are medians.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from common import SHARED, machine, save
from official_camixersr import lr_image

from detailsr.models.registry import build_untrained

ZOO_NAME = "atd-light-x4"
# The official options/test/103_ATD_light_SRx4_finetune.yml (use_checkpoint only matters for training).
OFFICIAL_CONFIG = {
    "upscale": 4, "in_chans": 3, "img_size": 64, "embed_dim": 48, "depths": [6, 6, 6, 6],
    "num_heads": [4, 4, 4, 4], "window_size": 16, "category_size": 128, "num_tokens": 64, "reducted_dim": 8,
    "convffn_kernel_size": 7, "img_range": 1.0, "mlp_ratio": 1, "upsampler": "pixelshuffledirect",
    "resi_connection": "1conv", "use_checkpoint": False,
}


def official_module(path: Path) -> types.ModuleType:
    """Import the official atd_arch.py with its BasicSR / fairscale imports stubbed."""
    names = ("basicsr", "basicsr.archs", "basicsr.archs.arch_util", "basicsr.utils", "basicsr.utils.registry",
             "fairscale", "fairscale.nn")
    stubs = {name: types.ModuleType(name) for name in names}
    stubs["basicsr.archs.arch_util"].to_2tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    stubs["basicsr.archs.arch_util"].trunc_normal_ = torch.nn.init.trunc_normal_
    stubs["basicsr.utils.registry"].ARCH_REGISTRY = types.SimpleNamespace(register=lambda *a, **k: (lambda c: c))
    stubs["fairscale.nn"].checkpoint_wrapper = lambda module, **kwargs: module
    sys.modules.update(stubs)
    spec = importlib.util.spec_from_file_location("official_atd_arch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def timed(net: torch.nn.Module, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    with torch.inference_mode():
        y = net(x)
    return time.perf_counter() - start, y


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--official", type=Path, required=True, help="the official basicsr/archs/atd_arch.py")
    p.add_argument("--image", type=Path, default=SHARED / "datasets" / "ODI" / "street_equirec2perspec.jpg")
    p.add_argument("--size", default="128x128", help="LR crop HxW (one official forward at 256x256 takes ~20 s)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--backend", default="naive", help="detailsr's attention backend (naive: bit-exact)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    size = tuple(int(v) for v in args.size.lower().split("x"))
    x = lr_image(args.image, size)

    ours = build_untrained(ZOO_NAME)  # seeded init, eval mode
    ours.set_attention(args.backend)
    official = official_module(args.official).ATD(**OFFICIAL_CONFIG).eval()
    official.load_state_dict(ours.state_dict(), strict=True)
    nets = {"official": official, "detailsr": ours}

    times: dict[str, list[float]] = {who: [] for who in nets}
    outputs: dict[str, torch.Tensor] = {}
    for run in range(args.runs + 1):  # the first round warms up
        for who, net in nets.items():
            seconds, outputs[who] = timed(net, x)
            if run:
                times[who].append(seconds)
    diff = (outputs["official"] - outputs["detailsr"]).abs().max().item()

    off, det = (statistics.median(times[who]) for who in nets)
    row = {"size": args.size, "official_s": off, "detailsr_s": det, "speedup": off / det,
           "official_runs": times["official"], "detailsr_runs": times["detailsr"], "max_abs_diff": diff}
    print(f"ATD-light x4 (untrained weights), LR {size[1]}x{size[0]} of {args.image.name}, {args.threads} "
          f"thread(s), detailsr backend {args.backend}, median of {args.runs} interleaved runs")
    print(f"{'size':>9} {'official s':>11} {'detailsr s':>11} {'speed-up':>9}")
    print(f"{args.size:>9} {off:>11.3f} {det:>11.3f} {off / det:>8.2f}x")
    print(f"outputs: max abs diff {diff:.3g} (official vs detailsr, last run)")
    command = "python benchmarks/official_atd.py " + " ".join(sys.argv[1:])
    path = save(f"official_atd_{args.size}_t{args.threads}_{args.backend}", {
        "command": command, "machine": machine(), "weights": f"untrained ({ZOO_NAME}, seeded init)",
        "image": args.image.name, "size": args.size, "backend": args.backend, "rows": [row]})
    print(f"saved {path}")


if __name__ == "__main__":
    main()

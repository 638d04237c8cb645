"""Pure-Pass on B100 x4 LR: pure share without and with cross-shift fusion, and the executed work it saves.

    python benchmarks/purepass.py [--dataset ../shared/datasets/B100] [--scale 4] [--limit N]

The executed AC-MSA work of PP-ATD-light comes from its mixers' records (what ran); the total saved
is the AC-MSA work saved, since every other op is the same dense computation (tests/test_purepass.py
checks that the op-by-op count agrees). Weights are ATD-light's seeded init: what PP skips depends on
the image only, not on the weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
import torch
from common import SHARED, machine, save

from detailsr.flops import executed_macs
from detailsr.models.atd import ATDLight
from detailsr.models.purepass import PPATDLight, pure_mask


def lr_images(folder: Path, limit: int | None) -> list[tuple[str, torch.Tensor]]:
    files = sorted(folder.glob("*.png"))[:limit]
    images = []
    for f in files:
        rgb = cv2.imread(str(f), cv2.IMREAD_COLOR)[:, :, ::-1]
        images.append((f.name, torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255))
    return images


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=Path, default=SHARED / "datasets" / "B100")
    parser.add_argument("--scale", type=int, default=4)
    parser.add_argument("--limit", type=int, help="only the first N images")
    args = parser.parse_args()
    images = lr_images(args.dataset / "LR_bicubic" / f"X{args.scale}", args.limit)
    torch.manual_seed(0)
    atd = ATDLight(scale=args.scale).eval()
    pp = PPATDLight(scale=args.scale).eval()
    pp.load_state_dict(atd.state_dict())
    dense: dict[tuple[int, int], tuple[int, int]] = {}  # padded size -> (total MACs, AC-MSA MACs) of ATD-light
    pixels = base = fused = 0
    total_dense = total_pp = aca_dense = aca_pp = 0
    for _, x in images:
        pixels += x.shape[-2] * x.shape[-1]
        base += int(pure_mask(x, shifts=((0, 0),)).sum())
        fused += int(pure_mask(x).sum())
        if tuple(x.shape[-2:]) not in dense:
            total = executed_macs(atd, x)
            dense[tuple(x.shape[-2:])] = (total, atd.executed_work()["attn_aca"].macs)
        total, aca = dense[tuple(x.shape[-2:])]
        pp(x)
        saved = aca - pp.executed_work()["attn_aca"].macs
        total_dense, total_pp = total_dense + total, total_pp + total - saved
        aca_dense, aca_pp = aca_dense + aca, aca_pp + aca - saved
    result = {
        "command": "python benchmarks/purepass.py" + (f" --limit {args.limit}" if args.limit else ""),
        "dataset": args.dataset.name, "scale": args.scale, "images": len(images), "machine": machine(),
        "pure_share_without_fusion": base / pixels, "pure_share_with_fusion": fused / pixels,
        "acmsa_macs_saved": 1 - aca_pp / aca_dense, "total_macs_saved": 1 - total_pp / total_dense,
        "total_gmacs_atd_light": total_dense / 1e9, "total_gmacs_pp_atd_light": total_pp / 1e9,
    }
    print(f"{args.dataset.name} x{args.scale} LR, {len(images)} images")
    print(f"pure share: {100 * result['pure_share_without_fusion']:.2f} % without fusion, "
          f"{100 * result['pure_share_with_fusion']:.2f} % with, pooled over the LR pixels")
    print(f"executed AC-MSA MACs saved {100 * result['acmsa_macs_saved']:.2f} %, "
          f"total MACs saved {100 * result['total_macs_saved']:.2f} % "
          f"({result['total_gmacs_atd_light']:.1f} -> {result['total_gmacs_pp_atd_light']:.1f} GMACs)")
    print(f"written {save(f'purepass_{args.dataset.name.lower()}_x{args.scale}', result)}")


if __name__ == "__main__":
    main()

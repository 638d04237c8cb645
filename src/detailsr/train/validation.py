"""Validation during training: the evaluation protocol on dataset folders, shared over processes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..evaluation import hr_files, load_pair
from ..imageio import from_tensor, to_tensor
from ..inference import run
from ..metrics import evaluate
from ..models.base import SRNetwork
from . import distributed


def validate(
    net: SRNetwork, folders: Sequence[str | Path], scale: int, protocol: str = "y",
    max_images: int | None = None, rank: int = 0, world: int = 1,
) -> list[dict[str, float | str | int]]:
    """Mean PSNR, SSIM (the protocol's, on 8-bit output) and L1 (float output in [0, 1]) per folder.

    Process r evaluates images r, r + W, ...; the sums are added over processes, so every process
    returns the same numbers.
    """
    results = []
    was_training = net.training
    net.eval()
    try:
        for folder in folders:
            folder = Path(folder)
            files = hr_files(folder, protocol)[:max_images]
            sums = torch.zeros(4, dtype=torch.float64)
            with torch.no_grad():
                for path in files[rank::world]:
                    sums += torch.tensor(_scores(net, path, folder, scale, protocol), dtype=torch.float64)
            psnr, ssim, l1, count = distributed.all_sum(sums).tolist()
            results.append({"dataset": folder.name, "images": int(count),
                            "psnr": psnr / count, "ssim": ssim / count, "l1": l1 / count})
    finally:
        net.train(was_training)
    return results


def _scores(net: SRNetwork, path: Path, folder: Path, scale: int, protocol: str) -> tuple[float, ...]:
    lr, hr = load_pair(path, folder, scale, protocol)
    y = run(net, to_tensor(lr))
    scores = evaluate(from_tensor(y, np.uint8), hr, scale, protocol)
    l1 = float((y - to_tensor(hr)).abs().mean())
    return scores["psnr"], scores["ssim"], l1, 1.0

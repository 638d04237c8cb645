"""Shared by the benchmark scripts: where weights and datasets are, and writing results."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from detailsr.allocator import bound_kernel_caches, keep_freed_memory
from detailsr.models import zoo

# As the command line does: every model and the official code alike run with freed memory kept.
keep_freed_memory()
bound_kernel_caches()

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "benchmarks" / "results"


def available_models(weights_dir: Path) -> list[tuple[str, Path]]:
    """(zoo name, file) of every zoo model whose checkpoint is on this machine: in the zoo cache,
    or in `weights_dir` under its release name when the published hash confirms which file it is."""
    found = []
    for entry in zoo.ENTRIES:
        cached = zoo.cache_dir() / entry.file
        local = weights_dir / Path(entry.file).name
        if cached.is_file():
            found.append((entry.name, cached))
        elif entry.sha256 and local.is_file() and zoo.sha256_of(local) == entry.sha256:
            found.append((entry.name, local))
    return found


def machine() -> dict:
    return {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(), "python": platform.python_version()}


def save(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path

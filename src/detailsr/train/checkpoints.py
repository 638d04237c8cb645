"""Training checkpoints in BasicSR's layout, written atomically.

`<run>/models/net_g_<iteration>.pth` holds `{"params": ..., "params_ema": ...}` (what BasicSR, the
official code bases and `detailsr.load_model` read; the loader takes `params_ema` first) and
`<run>/training_states/<iteration>.state` everything else needed to continue exactly. A checkpoint
counts only when both files exist; the state is written last, so a run killed while saving leaves
the previous checkpoint as the latest.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError

_STATE = re.compile(r"^(\d+)\.state$")


def model_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / "models" / f"net_g_{iteration}.pth"


def state_path(run_dir: Path, iteration: int) -> Path:
    return run_dir / "training_states" / f"{iteration}.state"


def save(run_dir: Path, iteration: int, weights: dict[str, Any], state: dict[str, Any], keep: int = 0) -> Path:
    """Write the checkpoint of `iteration`, then delete all but the newest `keep` (0: keep all)."""
    path = model_path(run_dir, iteration)
    atomic_save(weights, path)
    atomic_save(state, state_path(run_dir, iteration))
    if keep > 0:
        for old in saved_iterations(run_dir)[:-keep]:
            state_path(run_dir, old).unlink(missing_ok=True)
            model_path(run_dir, old).unlink(missing_ok=True)
    return path


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, flushed to disk, then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def saved_iterations(run_dir: Path) -> list[int]:
    """Iterations with a complete checkpoint, oldest first."""
    folder = run_dir / "training_states"
    if not folder.is_dir():
        return []
    found = (_STATE.match(p.name) for p in folder.iterdir())
    return sorted(i for i in (int(m.group(1)) for m in found if m) if model_path(run_dir, i).is_file())


def load(run_dir: Path, iteration: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(weights, state) of a saved iteration."""
    files = model_path(run_dir, iteration), state_path(run_dir, iteration)
    try:
        return tuple(torch.load(p, map_location="cpu", weights_only=True) for p in files)
    except Exception as e:
        raise CheckpointError(f"cannot read the checkpoint of iteration {iteration} in {run_dir}: {e}") from e

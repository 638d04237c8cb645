"""Shared test fixtures: the read-only reference data in ../shared.

Tests that need a file from ../shared skip with a reason when it is absent (a user's own clone),
but under CI (CI=true, where ../shared is always present) a missing file is a failure.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DETAILSR_SHARED", REPO.parent / "shared"))


def shared_file(relative: str) -> Path:
    """Path of a file under ../shared; skip (or fail under CI) when it is missing."""
    path = SHARED / relative
    if not path.exists():
        message = f"reference data not found: {path}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def shared():
    return shared_file


@pytest.fixture(scope="module")
def one_thread():
    """Small forwards: one thread is fastest and immune to a busy machine's oversubscription."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(*args, env: dict | None = None) -> subprocess.CompletedProcess:
    """The real `detailsr` command in a subprocess (offline: zoo downloads are refused)."""
    return subprocess.run(
        [sys.executable, "-m", "detailsr", *map(str, args)],
        capture_output=True, text=True, timeout=900, env={**os.environ, "DETAILSR_OFFLINE": "1", **(env or {})},
    )

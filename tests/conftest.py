"""Shared test fixtures: the project's own images and embedded model, and the reference data in ../shared.

Tests that need only *a* real photo or *a* real checkpoint use the project's CC0 images
(tests/data/images, examples/) and the embedded default model: they run in any clone. Tests that
need the benchmark sets, their published numbers or the official .pth file read ../shared: they
skip with a reason when it is absent (a user's own clone), but under CI (CI=true, where ../shared
is always present) a missing file is a failure.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detailsr.allocator import bound_kernel_caches, keep_freed_memory

# Tests run the library in the process the command line sets up: memory measurements made here
# (the tiler's probe) then agree with what `detailsr upscale` measures in its own process.
keep_freed_memory()
bound_kernel_caches()

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DETAILSR_SHARED", REPO.parent / "shared"))
# CC0 photos shipped with the project (licences in tests/data/images/README.md, examples/README.md)
PHOTOS = {
    "chelsea": REPO / "tests/data/images/chelsea.png",  # a cat: busy fur, a smooth background (226x150)
    "camera": REPO / "tests/data/images/camera.png",  # grayscale photographer (128x128)
    "gravel": REPO / "tests/data/images/gravel.png",  # grayscale texture, busy everywhere (96x96)
    "coffee": REPO / "examples/coffee.png",  # a cup on a table: flat and detailed regions (300x200)
}


def photo(name: str) -> Path:
    """Path of one of the project's own CC0 photos."""
    return PHOTOS[name]


def default_model_file() -> Path:
    """The embedded default checkpoint (CAMixerSR-S x4, params_ema as safetensors): a real model, no network."""
    from detailsr.models import zoo

    return zoo.fetch(zoo.get(zoo.DEFAULT_MODEL))


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

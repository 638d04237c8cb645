"""detailsr: content-aware, efficient image super-resolution."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .inference import upscale
    from .models.registry import load_model
    from .routing import routing_maps

__all__ = ["load_model", "routing_maps", "upscale"]
__version__ = "0.1.0"

# The public functions import torch: loaded on first use, so that `detailsr --help` answers at once.
_HOMES = {"load_model": ".models.registry", "routing_maps": ".routing", "upscale": ".inference"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name], __name__), name)
    raise AttributeError(f"module 'detailsr' has no attribute {name!r}")

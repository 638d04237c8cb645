"""detailsr: content-aware, efficient image super-resolution."""

from .inference import upscale
from .models.registry import load_model
from .routing import routing_maps

__all__ = ["load_model", "routing_maps", "upscale"]
__version__ = "0.1.0"

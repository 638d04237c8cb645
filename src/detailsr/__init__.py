"""detailsr: content-aware, efficient image super-resolution."""

from .inference import upscale
from .models.registry import load_model

__all__ = ["load_model", "upscale"]
__version__ = "0.1.0"

"""Training datasets: (LR, HR) pairs for super-resolution training."""

from .paired import PairedImages, seed_worker

__all__ = ["PairedImages", "seed_worker"]

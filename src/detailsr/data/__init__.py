"""Training datasets: (LR, HR) pairs for super-resolution training, flat images and ERP panoramas."""

from .erp import ERPPatches, erp_downsample_fisheye
from .paired import PairedImages, seed_worker

__all__ = ["ERPPatches", "PairedImages", "erp_downsample_fisheye", "seed_worker"]

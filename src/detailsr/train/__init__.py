"""Training: recipes (YAML), the trainer, losses, EMA, checkpoints, distributed runs."""

from .config import load_config
from .losses import l1_loss, ws_l1_loss
from .trainer import train

__all__ = ["l1_loss", "load_config", "train", "ws_l1_loss"]

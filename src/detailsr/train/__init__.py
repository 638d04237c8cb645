"""Training: losses (more to come: the trainer, EMA, checkpoints, distributed)."""

from .losses import l1_loss, ws_l1_loss

__all__ = ["l1_loss", "ws_l1_loss"]

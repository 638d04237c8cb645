"""What every detailsr network tells its callers, whatever its family."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..choices import ATTENTION_BACKENDS, AUTO_RATIO
from ..errors import ConfigError


class SRNetwork(nn.Module):
    """Base of the super-resolution networks.

    Attributes callers rely on (the loader, `upscale`, `eval`, `flops`):
      arch          family name as the registry knows it ("camixersr", ...)
      scale         upscaling factor
      config        constructor hyper-parameters (enough to rebuild the network)
      min_size      the smallest LR side `net(x)` accepts; `upscale` pads smaller inputs
      size_multiple LR sides `net(x)` needs to be a multiple of (1 when the network pads itself)
      tile_safe     True when tiling changes outputs only near tile borders (no image-global ops)
      pipeline_multiple  the official *test pipeline* reflect-pads inputs to this multiple before
                    the network (ESC: 32); `upscale`/`eval` do the same, `net(x)` does not
    """

    arch: str = ""
    min_size: int = 1
    size_multiple: int = 1
    tile_safe: bool = True
    pipeline_multiple: int = 1

    def __init__(self, scale: int, config: dict[str, Any]) -> None:
        super().__init__()
        self.scale = scale
        self.config = dict(config)

    routes_by_predictor: bool = False  # CAMixer networks: ratio "auto" lets their predictor set K

    @property
    def content_aware(self) -> bool:
        return any(hasattr(m, "set_ratio") for m in self.modules() if m is not self)

    def set_ratio(self, ratio: float | str) -> None:
        """Fraction of windows (or pixels) that take the expensive path, in [0, 1]; or "auto" where the
        network's own predictor decides (CAMixer's mixers)."""
        ratio = check_ratio(ratio)
        if ratio == AUTO_RATIO and not self.routes_by_predictor:
            raise ConfigError(f"{self.arch} has no predictor to set its ratio: 'auto' needs a CAMixer model")
        self.ratio = ratio
        for m in self.modules():
            if m is not self and hasattr(m, "set_ratio"):
                m.set_ratio(ratio)

    def auxiliary_losses(self) -> dict[str, torch.Tensor]:
        """Losses besides the reconstruction that the last training forward asks for, by name (e.g.
        CAMixer's "ratio"); none for most networks. The forward itself always returns the image."""
        return {}

    def current_ratio(self) -> Any:
        """What `set_ratio` takes to restore the present routing setting."""
        return self.ratio

    def condition_for(self, x: torch.Tensor) -> torch.Tensor | None:
        """An extra input map the network needs for the whole image `x` (None: it needs none).

        `upscale` computes it once for the whole image and crops it with each tile.
        """
        return None

    def set_attention(self, backend: str) -> None:
        """Select the attention kernel of every attention site ("naive", "sdpa", "flex" where offered)."""
        name = backend.lower()
        for m in self.modules():
            if hasattr(m, "attn_type"):
                allowed = getattr(m, "attn_backends", ATTENTION_BACKENDS)
                if name not in allowed:
                    raise ConfigError(
                        f"{self.arch} offers the attention backends {', '.join(allowed)}, not {backend!r}"
                    )
                m.attn_type = name


def check_ratio(ratio: float | str) -> float | str:
    """A ratio in [0, 1] as a float, or "auto"."""
    if isinstance(ratio, str) and ratio.strip().lower() == AUTO_RATIO:
        return AUTO_RATIO
    try:
        value = float(ratio)
    except (TypeError, ValueError):
        raise ConfigError(f"ratio must be a number in [0, 1] or 'auto', got {ratio!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"ratio must lie in [0, 1] (or be 'auto'), got {ratio}")
    return value

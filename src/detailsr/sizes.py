"""Memory sizes as people write them (512M, 2G, 1.5GiB); free of torch, for the command line."""

from __future__ import annotations

import re

from .errors import ConfigError

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """'1G', '512M', '1.5GiB', '2000000' -> bytes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", str(text), re.IGNORECASE)
    if not match:
        raise ConfigError(f"expected a memory size such as 512M or 2G, got {text!r}")
    value = float(match.group(1)) * _UNITS[match.group(2).upper()]
    if value < 1:
        raise ConfigError(f"a memory size must be positive, got {text!r}")
    return int(value)

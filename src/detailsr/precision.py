"""Precision: names -> dtypes, what a device and a network can run in, and the cast."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from typing import Any

import torch

from .choices import PRECISIONS
from .errors import ConfigError
from .models.base import SRNetwork

log = logging.getLogger(__name__)

PRECISION_DTYPES = dict(zip(PRECISIONS, (torch.float32, torch.float16, torch.bfloat16), strict=True))
REDUCED = (torch.float16, torch.bfloat16)
# (arch, precision) -> why that family cannot run in it: measured failures only, not guesses.
# Measured with torch 2.13's CPU float16/bfloat16 kernels under `precision_guard`: the embedded
# CAMixerSR-S on the project's photos peaks at |activation| ~70 and unscaled |q k^T| ~935 (float16
# holds 65504) and stays finite in both; so do ESC-light and ATD-light (random weights). None is
# refused so far; fp16 on a GPU is still to be checked on one.
PRECISION_LIMITS: dict[tuple[str, str], str] = {}


def precision_supported(net: SRNetwork | None, precision: str, device: Any) -> str | None:
    """Why `net` (None: any network) cannot run in `precision` on `device`; None when it can."""
    if precision not in PRECISION_DTYPES:
        return f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}"
    if precision == "fp32":
        return None
    kind = torch.device(device).type
    if kind == "cpu" and precision == "fp16":
        return ("torch's float16 convolutions and attention on the CPU are unsupported or very slow; "
                "use bf16 on the CPU, or fp16 on a GPU")
    if kind == "cuda" and precision == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return "this GPU has no bfloat16 arithmetic (compute capability 8.0 or newer); use fp16"
    return None if net is None else PRECISION_LIMITS.get((net.arch, precision))


def cast_network(net: SRNetwork, precision: str | None) -> SRNetwork:
    """`net` with its weights in `precision` (None: as it is): `net` itself when they already are,
    else a cast copy, so that the caller's weights keep their low bits (casting down and back up
    would lose them). Raises ConfigError where `precision_supported` says no."""
    if precision is None:
        return net
    device = next(net.parameters()).device
    reason = precision_supported(net, precision, device)
    if reason is not None:
        raise ConfigError(f"precision {precision} on {device}: {reason}")
    dtype = PRECISION_DTYPES[precision]
    if next(net.parameters()).dtype == dtype:
        return net
    log.debug("running a %s copy of %s", precision, net.arch)
    return copy.deepcopy(net).to(dtype)


@contextlib.contextmanager
def precision_guard(net: SRNetwork) -> Iterator[None]:
    """Forwards of a float16/bfloat16 `net` under torch's autocast for its dtype: the ops autocast
    keeps in float32 stay there (e.g. `grid_sample`, CAMixer's warp, whose CPU bfloat16 kernel reads
    outside the image in torch 2.13: NaN or a crash). Nothing changes for other dtypes."""
    p = next(net.parameters())
    if p.dtype not in REDUCED:
        yield
        return
    with torch.autocast(p.device.type, dtype=p.dtype):
        yield

"""`torch.compile` for a network's forward, falling back to eager when compiling fails.

Opt-in (`--compile`, `compile_forward(net)`): on this project's 2-core CPU machine compiling took
40 s (ESC-light x4) to 3 min (CAMixerSR-S x4) and the compiled forward ran at 0.96x (ESC-light) and
1.5x (CAMixerSR-S, routing gathers break the graph) of the eager time at 256² LR, 1 thread; the
eager CPU paths are hand-tuned already. Compilers pay off on GPUs.

A compile that fails (no C++ compiler, an operation the backend cannot lower) logs one warning
naming the reason and the network runs eagerly from then on; errors of the eager forward itself
are raised as usual. The first calls fill the networks' per-size caches (position codes, biases),
which the compiled graph guards on: expect a second, shorter compile before the steady state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from .models.base import SRNetwork

log = logging.getLogger(__name__)


def compile_forward(net: SRNetwork, mode: str | None = None) -> SRNetwork:
    """`net` with its forward compiled (the module itself, changed in place, for chaining)."""
    eager = net.forward
    compiled = torch.compile(eager, mode=mode)
    current = compiled

    def forward(*args, **kwargs):
        nonlocal current
        if current is eager:
            return eager(*args, **kwargs)
        try:
            return current(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            log.warning("torch.compile failed for %s (%s: %s); running eagerly", net.arch, type(e).__name__,
                        reason[:300])
            current = eager
            net.compile_error = f"{type(e).__name__}: {reason[:300]}"
            return eager(*args, **kwargs)

    net.forward = forward
    net.eager_forward = eager
    net.compile_error = None
    return net


def is_compiled(net: SRNetwork) -> bool:
    return "eager_forward" in vars(net)


@contextlib.contextmanager
def eagerly(net: SRNetwork) -> Iterator[SRNetwork]:
    """Run `net` uncompiled inside the block (op-by-op FLOP counting needs the eager forward)."""
    if not is_compiled(net):
        yield net
        return
    compiled = net.forward
    net.forward = net.eager_forward
    try:
        yield net
    finally:
        net.forward = compiled

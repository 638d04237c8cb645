"""What a token mixer did in its last forward: the one record every content-aware or measured mixer fills.

Window routing (CAMixer): the indices of the windows that took the expensive path (`keep`) on a
grid of `window`-pixel windows, cyclically shifted by `shift` for ODI mixers. Pixel routing
(Pure-Pass): an `expensive` map at feature resolution. A dense mixer (ATD's window attention or
TDCA) records only its `work`. `routing_maps`, `detailsr mask`, the FLOPs tools and `eval` read
these records through `mixer_records` / `routed_mixers`, never through attribute names. A training
forward of a routed mixer records the share it attended, with its gradient, for the network's
`auxiliary_losses` (CAMixer's ratio loss).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class MixerWork:
    """What one forward of an expensive token mixer executed, summed over the batch."""

    queries: int  # query tokens that went through the mixer
    keys: int  # keys each query attended: window tokens, group size, or dictionary size
    groups: int  # independent attention problems: windows, category groups, or images
    macs: int  # multiply-accumulates of the mixer's matmuls (attention and its own projections)

    def __add__(self, other: MixerWork) -> MixerWork:
        return MixerWork(
            self.queries + other.queries, max(self.keys, other.keys), self.groups + other.groups,
            self.macs + other.macs,
        )


@dataclass(frozen=True)
class MixerRecord:
    """Where one mixer call took its expensive path, and what it executed."""

    work: MixerWork | None = None
    keep: torch.Tensor | None = None  # (B, K) window indices, row-major over `grid`
    grid: tuple[int, int] | None = None  # window rows, window columns
    window: int = 0  # window side in feature pixels
    # Cyclic shift of the window grid: window (r, c) covers rows window*r + shift .. + window - 1
    # (and the same columns) of the map, modulo its size. 0 but for ODI mixers.
    shift: int = 0
    expensive: torch.Tensor | None = None  # (B, H, W) bool: pixel routing, True = the expensive path
    # training forwards: the attended share (B, 1) of a Gumbel hard mask, with its gradient (ratio loss)
    hard_fraction: torch.Tensor | None = None

    @property
    def n_windows(self) -> int:
        return self.grid[0] * self.grid[1]

    def window_mask(self) -> torch.Tensor:
        """(B, rows, cols) bool, True where the window took the expensive path."""
        b = self.keep.shape[0]
        m = torch.zeros(b, self.n_windows, dtype=torch.bool, device=self.keep.device)
        m.scatter_(1, self.keep, True)
        return m.view(b, *self.grid)

    def pixel_mask(self) -> torch.Tensor:
        """(B, H, W) bool at feature resolution, True where the pixel took the expensive path."""
        if self.expensive is not None:
            return self.expensive
        m = self.window_mask().repeat_interleave(self.window, 1).repeat_interleave(self.window, 2)
        if self.shift:  # shifted windows are windows of the map rolled by -shift: roll back
            m = torch.roll(m, shifts=(self.shift, self.shift), dims=(1, 2))
        return m

    def signature(self) -> tuple:
        """A hashable summary of the routing taken (what decides the executed cost)."""
        if self.keep is not None:
            return ("windows", self.keep.shape[1])
        if self.expensive is not None:
            return ("pixels", int(self.expensive.sum()))
        return ()


class RecordingMixer(nn.Module):
    """Base of every mixer that fills `record` in its forward; `routed`: its routing depends on the content."""

    routed = False

    def __init__(self) -> None:
        super().__init__()
        self.record: MixerRecord | None = None


def recording_mixers(net: nn.Module) -> list[RecordingMixer]:
    return [m for m in net.modules() if isinstance(m, RecordingMixer)]


def routed_mixers(net: nn.Module) -> list[RecordingMixer]:
    """The content-aware mixers of `net`, in module order."""
    return [m for m in recording_mixers(net) if m.routed]


def mixer_records(net: nn.Module, routed_only: bool = False) -> list[MixerRecord]:
    """The records of the last forward (mixers that did not run, e.g. other ClassSR branches, have none)."""
    mixers = routed_mixers(net) if routed_only else recording_mixers(net)
    return [m.record for m in mixers if m.record is not None]


def clear_records(net: nn.Module) -> None:
    for m in recording_mixers(net):
        m.record = None


def attended_share(net: nn.Module) -> torch.Tensor:
    """The mean attended share of the last training forward over routed mixers, windows and batch."""
    fractions = [r.hard_fraction for r in mixer_records(net, routed_only=True) if r.hard_fraction is not None]
    if not fractions:
        raise RuntimeError("no routed mixer ran a training forward: call the network in train mode first")
    return torch.cat(fractions, dim=1).mean()


def attended_window_share(net: nn.Module) -> float | None:
    """The share of windows that attended in the last inference forward, over every routed window
    mixer (CAMixer); None when none ran."""
    records = [r for r in mixer_records(net, routed_only=True) if r.keep is not None]
    if not records:
        return None
    return sum(r.keep.numel() for r in records) / sum(r.keep.shape[0] * r.n_windows for r in records)

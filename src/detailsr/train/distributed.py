"""One process or many: what the trainer needs from torch.distributed.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK (read by `detailsr.sharding.world`); without them
the trainer is a single process and nothing here touches torch.distributed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..sharding import barrier, stop, world

__all__ = ["Processes", "all_sum", "barrier", "gather", "start", "stop"]


@dataclass(frozen=True)
class Processes:
    rank: int
    world: int
    device: torch.device

    @property
    def main(self) -> bool:
        """The process that logs, validates into files and writes checkpoints."""
        return self.rank == 0


def start(device: str | None = None) -> Processes:
    """Join the process group torchrun describes (gloo on CPU, NCCL on GPUs), or run alone."""
    ranks = world()
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(f"cuda:{ranks.local_rank}" if device == "cuda" else device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if ranks.size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Processes(ranks.rank, ranks.size, target)


def all_sum(values: torch.Tensor) -> torch.Tensor:
    """The sum over processes (the tensor itself when alone)."""
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
    return values


def gather(obj: Any) -> list[Any]:
    """Every process's `obj`, in rank order."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out

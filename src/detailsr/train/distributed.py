"""One process or many: what the trainer needs from torch.distributed.

`torchrun` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the trainer is a single process and
nothing here touches torch.distributed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


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
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if target.type == "cuda":
        torch.cuda.set_device(target)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo")
    return Processes(rank, world, target)


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


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


def scatter(objs: list[Any] | None, rank: int) -> Any:
    """Process r gets objs[r] from the main process."""
    if not dist.is_initialized():
        return objs[0]
    box: list[Any] = [None]
    dist.scatter_object_list(box, objs if rank == 0 else None, src=0)
    return box[0]


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()

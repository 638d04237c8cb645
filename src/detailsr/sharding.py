"""Sharding batch inference and evaluation across the processes `torchrun` starts.

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK. With WORLD_SIZE > 1, `upscale` and `eval` join one
process group (gloo on the CPU, NCCL on CUDA), each rank takes items rank, rank + W, ... of the
same deterministic list (`shard`), and `eval` gathers every rank's results to rank 0
(`gather_results`), which puts them back in the list's order (`unshard`). A single process (no
torchrun, or WORLD_SIZE 1) never touches `torch.distributed`: every helper is then a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .errors import ConfigError

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run (size 1: alone)."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that prints summaries and writes reports."""
        return self.rank == 0


def world() -> World:
    """The world torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK); size 1 without it."""
    env = os.environ
    try:
        found = World(int(env.get("WORLD_SIZE") or 1), int(env.get("RANK") or 0), int(env.get("LOCAL_RANK") or 0))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={env.get('WORLD_SIZE')!r}, RANK={env.get('RANK')!r}, "
                          f"LOCAL_RANK={env.get('LOCAL_RANK')!r}: expected whole numbers (as torchrun sets)") from None
    if found.size < 1 or not 0 <= found.rank < found.size:
        raise ConfigError(f"RANK {found.rank} does not fit WORLD_SIZE {found.size}")
    return found


def shard(items: Sequence[T], ranks: World | None = None) -> list[T]:
    """This rank's items: rank, rank + W, rank + 2W, ... (all of them in a single process)."""
    ranks = ranks or world()
    return list(items[ranks.rank :: ranks.size])


def unshard(parts: Sequence[Sequence[T]]) -> list[T]:
    """The inverse of `shard`: parts[r] held by rank r, back in the original order."""
    merged: list[T] = []
    for i in range(max((len(p) for p in parts), default=0)):
        merged += [p[i] for p in parts if i < len(p)]
    return merged


def start(device: str) -> bool:
    """Join the process group when WORLD_SIZE > 1 (NCCL for a CUDA `device`, else gloo).

    True when this call started it (then `stop` it); False in a single process or when a group exists.
    """
    ranks = world()
    if ranks.size == 1:
        return False
    import torch
    import torch.distributed as dist

    if dist.is_initialized():
        return False
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(torch.device(device))  # the objects NCCL gathers travel on this GPU
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    log.debug("rank %d of %d joined the process group (%s)", ranks.rank, ranks.size, dist.get_backend())
    return True


def stop(wait: bool = True) -> None:
    """Leave the process group, if there is one; `wait`: first for every rank to be done with it (a
    rank that tears down its gloo connections while another still talks to it can abort that one,
    SIGABRT). After an error there is nobody to wait for: leave at once."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str) -> Iterator[World]:
    """`start` ... `stop` around a block; yields this process's `World`."""
    started = start(device)
    failed = True
    try:
        yield world()
        failed = False
    finally:
        if started:
            stop(wait=not failed)


def _distributed() -> bool:
    if world().size == 1:
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a single process)."""
    if _distributed():
        import torch.distributed as dist

        dist.barrier()


def gather_results(local: Any) -> list[Any] | None:
    """Every rank's picklable `local`, in rank order, on rank 0; None on the other ranks.

    A single process gets [local].
    """
    if not _distributed():
        return [local]
    import torch.distributed as dist

    ranks = world()
    parts: list[Any] | None = [None] * ranks.size if ranks.main else None
    dist.gather_object(local, parts, dst=0)
    return parts


def all_results(local: Any) -> list[Any]:
    """Every rank's picklable `local`, in rank order, on every rank ([local] in a single process)."""
    if not _distributed():
        return [local]
    import torch.distributed as dist

    parts: list[Any] = [None] * world().size
    dist.all_gather_object(parts, local)
    return parts

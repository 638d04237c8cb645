"""Which dataset items each process trains on at each iteration.

Epoch e is one permutation of the dataset drawn from (seed, e); it is cut into global batches (the
remainder is dropped) and process r of W takes the r-th W-th of each. The order is a function of
(seed, iteration), so a run resumed at iteration i reads exactly what an uninterrupted run would,
and W processes with a global batch B read the same items as one process with batch B.
"""

from __future__ import annotations

import torch

from ..data.paired import mix_seed
from ..errors import ConfigError


class DataOrder:
    def __init__(self, size: int, batch: int, world: int = 1, rank: int = 0, seed: int = 0) -> None:
        if batch % world:
            raise ConfigError(f"train.batch {batch} does not split evenly over {world} processes")
        if size < batch:
            raise ConfigError(f"the training data has {size} items, fewer than train.batch {batch}; "
                              "add images or raise the dataset's repeat")
        self.size, self.batch, self.world, self.rank, self.seed = size, batch, world, rank, seed
        self.per_epoch = size // batch

    def position(self, iteration: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of the 1-based `iteration`."""
        return divmod(iteration - 1, self.per_epoch)

    def batches(self, epoch: int, start: int = 0) -> list[list[int]]:
        """This process's items of batches start, start + 1, ... of `epoch`."""
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        order = torch.randperm(self.size, generator=generator).tolist()
        share = self.batch // self.world
        out = []
        for b in range(start, self.per_epoch):
            first = b * self.batch + self.rank * share
            out.append(order[first : first + share])
        return out

    def state(self) -> dict[str, int]:
        return {"size": self.size, "batch": self.batch, "seed": self.seed}

"""An endless, resumable, rank-aware sampler that also hands each sample its augmentation seed.

Position k of the global stream (all ranks together) is sample ``perm_e[k mod N]`` of epoch
``e = k // N``, with a per-epoch seeded permutation, and goes to rank ``k mod world``. Starting at
``k = iteration * batch * world`` therefore continues a run exactly where it stopped, including
the random augmentation of every sample, whatever the number of data loader workers.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def _mix(seed: int, *values: int) -> int:
    return int(np.random.SeedSequence([seed, *values]).generate_state(1)[0])


class ResumableSampler(Sampler[tuple[int, int]]):
    def __init__(
        self, size: int, seed: int, rank: int = 0, world_size: int = 1, start: int = 0
    ) -> None:
        if size <= 0:
            raise ValueError("cannot sample from an empty data set")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start = start

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        position = self.start
        epoch, offset = divmod(position, self.size)
        permutation = self._permutation(epoch)
        while True:
            if position % self.world_size == self.rank:
                yield int(permutation[offset]), _mix(self.seed, position)
            position += 1
            offset += 1
            if offset == self.size:
                epoch, offset = epoch + 1, 0
                permutation = self._permutation(epoch)

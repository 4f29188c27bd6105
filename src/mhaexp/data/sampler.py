"""The training order: a seeded permutation per epoch, cut into global batches.

One sampler serves 1 process and N DDP processes alike: every rank sees its slice
of the same global batch, so a run's loss curve does not depend on the device
count. It can also start part-way into an epoch, which is what makes a resumed
run see exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class GlobalBatchSampler(Sampler[int]):
    """Indices for one rank: batch ``i`` of epoch ``e`` is ``perm_e[i*G:(i+1)*G]``, this rank's share of it.

    Args:
        n: dataset size.
        global_batch: G, the batch summed over all ranks.
        seed: with the epoch, fixes the permutation.
        rank / world_size: this process and how many there are; G must divide by world_size.
        start_step: optimizer steps already taken (a resumed run); that many global batches are skipped.
    """

    def __init__(
        self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1, start_step: int = 0
    ) -> None:
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.batches_per_epoch = n // global_batch
        self.epoch = start_step // max(1, self.batches_per_epoch)
        self._skip_epoch = self.epoch
        self._skip = start_step % max(1, self.batches_per_epoch)

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this at each epoch start (also after a restore)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch * self.local_batch

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n, generator=g)
        first = self._skip if self.epoch == self._skip_epoch else 0
        self._skip = 0  # only the epoch a run resumed in starts late
        for b in range(first, self.batches_per_epoch):
            start = b * self.global_batch + self.rank * self.local_batch
            yield from perm[start : start + self.local_batch].tolist()

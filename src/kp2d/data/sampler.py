"""Batch order of a training run: a fresh permutation per epoch, sharded over processes, resumable."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from kp2d.errors import DataError

__all__ = ["EpochBatchSampler"]


class EpochBatchSampler(Sampler[list[int]]):
    """Yields this process's batches of one epoch; the order depends only on ``(seed, epoch)``.

    Every epoch draws a permutation of the dataset, drops the tail that does not fill a batch on every
    process, and gives process ``rank`` its ``batch_size`` slice of each global batch. Call
    :meth:`set_epoch` before iterating; ``skip_batches`` resumes in the middle of an epoch.
    """

    def __init__(self, size: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        if size < batch_size * world_size:
            raise DataError(
                f"the training set has {size} images, fewer than one batch "
                f"({batch_size} per process x {world_size} process(es))"
            )
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip_batches = 0, 0

    def __len__(self) -> int:
        """Batches per epoch for one process."""
        return self.size // (self.batch_size * self.world_size)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Select the epoch's permutation and how many of its first batches to skip (resuming)."""
        self.epoch, self.skip_batches = epoch, skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        order = torch.randperm(self.size, generator=generator)
        steps = len(self)
        batches = order[: steps * self.world_size * self.batch_size].view(
            steps, self.world_size, self.batch_size
        )
        for step in range(self.skip_batches, steps):
            yield batches[step, self.rank].tolist()

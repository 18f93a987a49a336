"""A distributed, seedable, position-resumable stream of training samples.

The global stream is an endless sequence of epochs; epoch ``e`` is a permutation of the dataset
drawn from ``numpy.random.default_rng([seed, e])`` (detectron2 ``TrainingSampler`` also shuffles an
endless stream). Global position ``p`` holds ``(dataset index, p)``; the position doubles as the
sample's augmentation seed, so what a sample looks like depends on nothing but ``(seed, p)``.

Rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...`` and groups them into micro-batches.
Resuming after ``n`` samples per rank only needs ``start=n``: nothing else is stored.
With W ranks of micro-batch b, step ``i`` of the run consumes exactly the global positions a single
process with micro-batch ``W * b`` would (in another order within the step).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class ResumableSampler:
    """Batch sampler for ``DataLoader(batch_sampler=...)`` yielding lists of ``(index, position)``.

    Args:
        size: number of samples in the dataset.
        batch_size: samples per yielded batch on this rank (the micro-batch).
        seed: shuffling seed (same on every rank).
        rank: this rank; world_size: number of ranks.
        start: samples this rank already consumed (resume point).
        shuffle: False streams 0, 1, 2, ... (epochs in file order).
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        start: int = 0,
        shuffle: bool = True,
    ) -> None:
        if size < 1:
            raise ValueError("the training dataset is empty; check data.root and the image/label folders")
        if batch_size < 1 or not 0 <= rank < world_size or start < 0:
            raise ValueError(f"bad sampler: batch={batch_size} rank={rank}/{world_size} start={start}")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size, self.start, self.shuffle = rank, world_size, start, shuffle
        self._epoch = -1
        self._perm = np.arange(size)

    def index_at(self, position: int) -> int:
        """Dataset index at global ``position``."""
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.size)
            self._epoch = epoch
        return int(self._perm[offset])

    def positions(self, start: int | None = None) -> Iterator[int]:
        """Global positions of this rank, from its ``start``-th sample on (endless)."""
        i = self.start if start is None else start
        while True:
            yield self.rank + i * self.world_size
            i += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        batch: list[tuple[int, int]] = []
        for p in self.positions():
            batch.append((self.index_at(p), p))
            if len(batch) == self.batch_size:
                yield batch
                batch = []

    def __len__(self) -> int:  # DataLoader asks; the stream is endless
        return 2**62

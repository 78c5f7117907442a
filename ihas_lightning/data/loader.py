"""Whole-tensor batches from encoded columns, never per-row ``__getitem__``.

DeepCTR-Torch's own ``fit`` indexes a ``TensorDataset`` row by row (its issue #70); slicing whole batches
is several times faster. Shuffling is two-level so that a cache larger than RAM is read in large
contiguous chunks: the chunk order is permuted, then rows inside a chunk. With data that fits in one
chunk this is an ordinary full shuffle.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import IterableDataset

from .cache import EncodedStore
from .encoders import EncodedColumns

__all__ = ["Batch", "BatchStream", "to_batch"]

Batch = dict[str, torch.Tensor]
"""``sparse`` (B, F_sparse) int64, ``dense`` (B, F_dense) float32, ``multi`` (B, L) int64, ``label`` (B,)."""


def to_batch(columns: EncodedColumns) -> Batch:
    return {
        "sparse": torch.from_numpy(np.ascontiguousarray(columns.sparse)),
        "dense": torch.from_numpy(np.ascontiguousarray(columns.dense)),
        "multi": torch.from_numpy(np.ascontiguousarray(columns.multi)),
        "label": torch.from_numpy(np.ascontiguousarray(columns.labels)),
    }


class BatchStream(IterableDataset):
    """Yields :data:`Batch` dicts; under DDP rank ``r`` of ``W`` takes global batches ``r, r+W, ...``.

    Args:
        source: rows in memory or an on-disk cache.
        batch_size: rows per batch.
        shuffle: permute chunks and rows each epoch (seeded by ``seed`` and the epoch).
        seed: shuffle seed.
        chunk_batches: batches read per contiguous chunk of the cache.
        epoch_fn: returns the current epoch (the trainer's), so a resumed run shuffles as an unbroken one.
        rank_fn: returns ``(rank, world_size)``.
    """

    def __init__(self, source: EncodedColumns | EncodedStore, batch_size: int, *, shuffle: bool = False,
                 seed: int = 0, chunk_batches: int = 64, epoch_fn: Callable[[], int] | None = None,
                 rank_fn: Callable[[], tuple[int, int]] | None = None) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if chunk_batches < 1:
            raise ValueError(f"chunk_batches must be >= 1, got {chunk_batches}")
        self.source = source
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.chunk_rows = batch_size * chunk_batches
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.rank_fn = rank_fn or (lambda: (0, 1))

    @property
    def num_rows(self) -> int:
        return len(self.source)

    def _global_batches(self) -> int:
        return -(-self.num_rows // self.batch_size)

    def __len__(self) -> int:
        _, world = self.rank_fn()
        return -(-self._global_batches() // world)

    def _read(self, rows: slice | np.ndarray) -> EncodedColumns:
        if isinstance(self.source, EncodedStore):
            return self.source.read(rows)
        return self.source.take(rows) if isinstance(rows, np.ndarray) else EncodedColumns(
            self.source.labels[rows], self.source.sparse[rows], self.source.dense[rows], self.source.multi[rows])

    def _batches(self, rng: np.random.Generator | None) -> Iterator[EncodedColumns]:
        starts = np.arange(0, self.num_rows, self.chunk_rows)
        if rng is not None:
            starts = rng.permutation(starts)
        for start in starts:
            stop = min(start + self.chunk_rows, self.num_rows)
            chunk = self._read(slice(int(start), int(stop)))
            if rng is not None:
                chunk = chunk.take(rng.permutation(len(chunk)))
            for begin in range(0, len(chunk), self.batch_size):
                yield chunk.take(np.arange(begin, min(begin + self.batch_size, len(chunk))))

    def __iter__(self) -> Iterator[Batch]:
        rank, world = self.rank_fn()
        rng = np.random.default_rng([self.seed, self.epoch_fn()]) if self.shuffle else None
        wanted = len(self)
        yielded = 0
        first: EncodedColumns | None = None
        for index, batch in enumerate(self._batches(rng)):
            if index % world != rank:
                continue
            first = first if first is not None else batch
            yield to_batch(batch)
            yielded += 1
        # DDP needs equal step counts: a rank short of one batch repeats its first one.
        while yielded < wanted and first is not None:
            yield to_batch(first)
            yielded += 1

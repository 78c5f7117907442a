"""Whole-tensor batches from encoded columns, never per-row ``__getitem__``.

DeepCTR-Torch's own ``fit`` indexes a ``TensorDataset`` row by row (its issue #70); slicing whole batches
is several times faster. Rows in memory are shuffled whole every epoch. An on-disk cache (larger than RAM) is
shuffled in two levels so that it is read in large contiguous chunks: the chunk order is permuted, then rows
inside a chunk. Splits keep the file's row order, so chunks of a sorted file hold blocks of it: MovieLens's
ratings sorted by user, chunked in memory too until November 2026, trained an epoch a third of the users at a
time (docs/design.md, section 9).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from .cache import EncodedStore
from .encoders import EncodedColumns

__all__ = ["Batch", "BatchStream", "StreamLoader", "to_batch"]

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
        shuffle: permute the rows each epoch (seeded by ``seed`` and the epoch): all of them for rows in memory,
            the chunks and the rows inside each for an on-disk cache.
        seed: shuffle seed.
        chunk_batches: batches read per contiguous chunk of an on-disk cache (rows in memory are one chunk).
        epoch_fn: returns the current epoch (the trainer's), so a resumed run shuffles as an unbroken one.
        rank_fn: returns ``(rank, world_size)``.

    Mid-epoch resume: :meth:`state_dict` records the epoch being read and how many batches this rank has
    yielded in it; after :meth:`load_state_dict`, the next pass over the same epoch skips those batches
    (advancing the shuffle generator exactly as a full pass would, without reading skipped chunks), so a
    resumed epoch yields what an uninterrupted one would have yielded next. Lightning saves and restores
    this through :class:`StreamLoader` (it asks the *loader*, not the dataset, for ``state_dict``).
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
        in_memory = not isinstance(source, EncodedStore)
        self.chunk_rows = max(len(source), 1) if in_memory else batch_size * chunk_batches
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.rank_fn = rank_fn or (lambda: (0, 1))
        self._epoch: int | None = None      # epoch of the pass in progress
        self._yielded = 0                   # batches this rank yielded in it
        self._resume: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, Any]:
        """Plain values: ``{"epoch": e, "yielded": n}`` of the pass in progress (``epoch`` None before any)."""
        return {"epoch": self._epoch, "yielded": int(self._yielded)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """The next pass over ``state_dict["epoch"]`` skips its first ``yielded`` batches (once)."""
        epoch, yielded = state_dict.get("epoch"), int(state_dict.get("yielded", 0))
        if yielded < 0:
            raise ValueError(f"BatchStream state: yielded must be >= 0, got {yielded}")
        self._resume = (int(epoch), yielded) if epoch is not None and yielded else None

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

    def _batches(self, rng: np.random.Generator | None, skip: int = 0) -> Iterator[EncodedColumns | None]:
        """Global batches in order; the first ``skip`` come as ``None`` (chunks wholly skipped are not read,
        but their row permutation is still drawn so that the generator stays in step)."""
        starts = np.arange(0, self.num_rows, self.chunk_rows)
        if rng is not None:
            starts = rng.permutation(starts)
        index = 0
        for start in starts:
            stop = min(start + self.chunk_rows, self.num_rows)
            size = int(stop - start)
            in_chunk = -(-size // self.batch_size)
            if index + in_chunk <= skip:
                if rng is not None:
                    rng.permutation(size)
                index += in_chunk
                yield from (None for _ in range(in_chunk))
                continue
            # Let go of the last chunk before reading the next, so a store has one chunk in memory at a time
            # (held, two were, as soon as a split had two full chunks: memory_scale.md).
            chunk = None
            chunk = self._read(slice(int(start), int(stop)))           # rows in memory: views, no copy
            order = rng.permutation(size) if rng is not None else None
            for begin in range(0, size, self.batch_size):
                rows = np.arange(begin, min(begin + self.batch_size, size))
                yield None if index < skip else chunk.take(rows if order is None else order[rows])
                index += 1

    def __iter__(self) -> Iterator[Batch]:
        rank, world = self.rank_fn()
        epoch = int(self.epoch_fn())
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        wanted = len(self)
        skip_local = 0
        if self._resume is not None and self._resume[0] == epoch:
            skip_local = min(self._resume[1], wanted)
        self._resume = None
        self._epoch, self._yielded = epoch, skip_local
        # Global batch g goes to rank g % world: this rank's n-th batch is global batch n * world + rank.
        skip_global = skip_local * world
        yielded = 0
        first: EncodedColumns | None = None
        for index, batch in enumerate(self._batches(rng, skip_global)):
            if index % world != rank:
                continue
            if batch is None:  # consumed before the checkpoint this pass resumes from
                yielded += 1
                continue
            first = first if first is not None else batch
            self._yielded = yielded + 1
            yield to_batch(batch)
            yielded += 1
        # DDP needs equal step counts: a rank short of one batch repeats its first one.
        if first is None and yielded:  # resumed past every real batch of this rank: its first batch of the pass
            first = next((b for i, b in enumerate(self._batches(self._rng(epoch))) if i % world == rank), None)
        while yielded < wanted and first is not None:
            self._yielded = yielded + 1
            yield to_batch(first)
            yielded += 1

    def _rng(self, epoch: int) -> np.random.Generator | None:
        return np.random.default_rng([self.seed, epoch]) if self.shuffle else None


class StreamLoader(DataLoader):
    """A ``DataLoader`` over a :class:`BatchStream` (whole batches, ``batch_size=None``) that Lightning can
    checkpoint: Lightning 2.x stores ``state_dict()`` of every train loader that has one (``_Stateful`` in
    ``utilities/combined_loader.py``) and restores it before the resumed epoch's iterator is created.

    Example:
        >>> loader = StreamLoader(BatchStream(columns, 1024, shuffle=True))
    """

    def __init__(self, dataset: BatchStream, *args: Any, **kwargs: Any) -> None:
        # DataLoader's own signature: Lightning re-instantiates loaders from their arguments (predict mode)
        if not isinstance(dataset, BatchStream):
            raise TypeError(f"StreamLoader needs a BatchStream, got {type(dataset).__name__}")
        if not args:
            kwargs.setdefault("batch_size", None)
        super().__init__(dataset, *args, **kwargs)

    def state_dict(self) -> dict[str, Any]:
        return self.dataset.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.dataset.load_state_dict(state_dict)

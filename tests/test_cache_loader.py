"""The on-disk cache (exact int64 round trip) and ``BatchStream`` (coverage, shapes, seeded shuffles, rank
sharding, memory vs. store), and ``split_rows``."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from ihas_lightning.data.cache import EncodedStore, EncodedWriter, save_encoded
from ihas_lightning.data.datamodule import split_rows
from ihas_lightning.data.encoders import EncodedColumns
from ihas_lightning.data.loader import BatchStream

BIG_IDS = [2**24, 2**24 + 1, 2**24 + 3, 2**31 + 5, 2**53 + 1, 2**63 - 1]


def make_columns(n: int, seed: int = 0, multi_width: int = 3) -> EncodedColumns:
    """Column 0 of ``sparse`` is the row number, so batches can be traced back to rows."""
    rng = np.random.default_rng(seed)
    sparse = np.stack([np.arange(n), rng.integers(0, 2**40, n), rng.integers(0, 50, n)], axis=1).astype(np.int64)
    return EncodedColumns(labels=rng.integers(0, 2, n).astype(np.float32), sparse=sparse,
                          dense=rng.normal(size=(n, 2)).astype(np.float32),
                          multi=rng.integers(0, 7, (n, multi_width)).astype(np.int64))


def rows_of(stream: BatchStream) -> list[np.ndarray]:
    return [batch["sparse"][:, 0].numpy() for batch in stream]


def test_save_encoded_round_trip_keeps_int64_exact(tmp_path: Path) -> None:
    columns = make_columns(100)
    columns.sparse[:len(BIG_IDS), 1] = BIG_IDS
    columns.multi[:len(BIG_IDS), 0] = BIG_IDS
    store = save_encoded(tmp_path / "cache", columns)
    assert isinstance(store, EncodedStore) and len(store) == 100
    back = store.read_all()
    for part in ("labels", "sparse", "dense", "multi"):
        np.testing.assert_array_equal(getattr(back, part), getattr(columns, part))
    assert back.sparse.dtype == np.int64 and back.multi.dtype == np.int64
    assert back.sparse[:len(BIG_IDS), 1].tolist() == BIG_IDS     # 2**24 + 1 did not become 2**24
    assert back.multi[:len(BIG_IDS), 0].tolist() == BIG_IDS
    # Rows by slice and by index array.
    np.testing.assert_array_equal(store.read(slice(10, 20)).sparse, columns.sparse[10:20])
    index = np.array([3, 1, 99, 50])
    np.testing.assert_array_equal(store.read(index).dense, columns.dense[index])
    assert sum(len(c) for c in store.iter_chunks(33)) == 100
    np.testing.assert_array_equal(store.read_labels(), columns.labels)
    # A fresh store over the same folder sees the same rows.
    np.testing.assert_array_equal(EncodedStore(tmp_path / "cache").read_all().sparse, columns.sparse)
    with pytest.raises(FileNotFoundError, match="meta.json"):
        EncodedStore(tmp_path / "nothing")


def test_encoded_writer_checks_row_counts(tmp_path: Path) -> None:
    columns = make_columns(10)
    with pytest.raises(ValueError, match="sized for 10 rows got 5"):
        with EncodedWriter(tmp_path / "short", 10, 3, 2, 3) as writer:
            writer.write(columns.take(np.arange(5)))
    with EncodedWriter(tmp_path / "chunks", 10, 3, 2, 3) as writer:
        writer.write(columns.take(np.arange(4)))
        writer.write(columns.take(np.arange(4, 10)))
        with pytest.raises(ValueError, match="sized for 10"):
            writer.write(columns.take(np.arange(1)))
    np.testing.assert_array_equal(EncodedStore(tmp_path / "chunks").read_all().sparse, columns.sparse)


def test_every_row_once_per_epoch_and_batch_shapes() -> None:
    columns = make_columns(1000)
    for shuffle in (False, True):
        stream = BatchStream(columns, batch_size=64, shuffle=shuffle, seed=1, chunk_batches=4)
        batches = list(stream)
        assert len(stream) == len(batches) == 16                       # ceil(1000 / 64)
        sizes = [len(b["label"]) for b in batches]
        assert sorted(sizes) == [40] + [64] * 15
        if not shuffle:
            assert sizes[-1] == 40
        for batch in batches:
            b = len(batch["label"])
            assert batch["sparse"].shape == (b, 3) and batch["sparse"].dtype == torch.int64
            assert batch["dense"].shape == (b, 2) and batch["dense"].dtype == torch.float32
            assert batch["multi"].shape == (b, 3) and batch["multi"].dtype == torch.int64
            assert batch["label"].shape == (b,) and batch["label"].dtype == torch.float32
            rows = batch["sparse"][:, 0].numpy()
            # Every part of a batch belongs to the same rows.
            np.testing.assert_array_equal(batch["dense"].numpy(), columns.dense[rows])
            np.testing.assert_array_equal(batch["label"].numpy(), columns.labels[rows])
        seen = np.concatenate(rows_of(stream))
        assert len(seen) == 1000 and np.array_equal(np.sort(seen), np.arange(1000))
        if not shuffle:
            assert np.array_equal(seen, np.arange(1000))


def test_shuffle_depends_on_seed_and_epoch_only() -> None:
    columns = make_columns(1000)
    epoch = {"value": 0}
    stream = BatchStream(columns, 64, shuffle=True, seed=7, chunk_batches=4, epoch_fn=lambda: epoch["value"])
    first = np.concatenate(rows_of(stream))
    again = np.concatenate(rows_of(stream))
    assert np.array_equal(first, again)                      # same (seed, epoch): same order
    epoch["value"] = 1
    second = np.concatenate(rows_of(stream))
    assert not np.array_equal(first, second)                 # the next epoch reshuffles
    assert np.array_equal(np.sort(second), np.arange(1000))
    # A new stream at the same (seed, epoch) repeats it (a resumed run shuffles as an unbroken one).
    resumed = BatchStream(columns, 64, shuffle=True, seed=7, chunk_batches=4, epoch_fn=lambda: 1)
    assert np.array_equal(np.concatenate(rows_of(resumed)), second)
    other_seed = BatchStream(columns, 64, shuffle=True, seed=8, chunk_batches=4, epoch_fn=lambda: 1)
    assert not np.array_equal(np.concatenate(rows_of(other_seed)), second)
    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(columns, 0)


@pytest.mark.parametrize("num_rows, batch_size", [(1000, 64), (1000, 70)])  # 16 and 15 global batches
@pytest.mark.parametrize("shuffle", [False, True])
def test_rank_sharding_covers_all_rows_with_equal_batch_counts(num_rows: int, batch_size: int,
                                                               shuffle: bool) -> None:
    columns = make_columns(num_rows)
    per_rank = []
    for rank in (0, 1):
        stream = BatchStream(columns, batch_size, shuffle=shuffle, seed=3, chunk_batches=2,
                             epoch_fn=lambda: 2, rank_fn=lambda rank=rank: (rank, 2))
        batches = rows_of(stream)
        assert len(batches) == len(stream) == 8              # ceil(16 / 2) and ceil(15 / 2)
        per_rank.append(batches)
    rows0, rows1 = (np.concatenate(b) for b in per_rank)
    union = np.union1d(rows0, rows1)
    assert np.array_equal(union, np.arange(num_rows))
    if batch_size == 64:
        assert len(rows0) + len(rows1) == num_rows and not np.intersect1d(rows0, rows1).size
    else:
        # 15 global batches: rank 1 has 7 and repeats its first batch once to keep step counts equal.
        assert np.array_equal(per_rank[1][-1], per_rank[1][0])
        assert len(rows0) + len(rows1) - len(per_rank[1][0]) == num_rows


def test_in_memory_and_store_give_identical_batches(tmp_path: Path) -> None:
    columns = make_columns(777)
    store = save_encoded(tmp_path / "cache", columns)
    for shuffle in (False, True):
        for epoch in (0, 1):
            # rows in memory are one chunk: a store read in one chunk (16 batches of 50 >= 777 rows) is the same
            memory = BatchStream(columns, 50, shuffle=shuffle, seed=5, chunk_batches=3, epoch_fn=lambda e=epoch: e)
            disk = BatchStream(store, 50, shuffle=shuffle, seed=5, chunk_batches=16, epoch_fn=lambda e=epoch: e)
            a, b = list(memory), list(disk)
            assert len(a) == len(b) == 16
            for x, y in zip(a, b):
                assert x.keys() == y.keys()
                for key in x:
                    assert x[key].dtype == y[key].dtype
                    assert torch.equal(x[key], y[key])


def test_rows_in_memory_are_shuffled_whole_a_store_by_chunks(tmp_path: Path) -> None:
    # rows in file order (MovieLens's ratings sorted by user): the first batches of an epoch in memory come from
    # the whole split, those of an on-disk store from one contiguous chunk of it
    columns = make_columns(1000)
    store = save_encoded(tmp_path / "cache", columns)
    memory = np.concatenate(rows_of(BatchStream(columns, 50, shuffle=True, seed=5, chunk_batches=2))[:2])
    disk = np.concatenate(rows_of(BatchStream(store, 50, shuffle=True, seed=5, chunk_batches=2))[:2])
    assert len(memory) == len(disk) == 100
    assert np.ptp(disk) == 99 and len(np.unique(disk)) == 100           # one chunk: 100 contiguous rows
    assert len(np.unique(memory // 100)) == 10 and np.ptp(memory) > 900  # every tenth of the rows


class _CountingStore(EncodedStore):
    """Records, at every chunk read, how many chunks it returned before are still alive."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.returned: list[weakref.ref] = []
        self.alive_at_read: list[int] = []

    def read(self, rows):
        gc.collect()
        self.alive_at_read.append(sum(ref() is not None for ref in self.returned))
        chunk = super().read(rows)
        self.returned.append(weakref.ref(chunk))
        return chunk


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_store_holds_one_chunk_at_a_time(tmp_path: Path, shuffle: bool) -> None:
    # memory_scale.md: with the last chunk still held while the next was read, a split of two or more full
    # chunks had two in memory at once (148 MiB more at 10M rows than at 1M)
    columns = make_columns(1000)
    store = _CountingStore(save_encoded(tmp_path / "cache", columns).directory)
    batches = list(BatchStream(store, 50, shuffle=shuffle, seed=5, chunk_batches=4))
    assert store.alive_at_read == [0] * 5                                   # 5 chunks of 200 rows, read alone
    assert np.array_equal(np.sort(np.concatenate([b["sparse"][:, 0].numpy() for b in batches])), np.arange(1000))


def _vm_hwm_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise OSError("no VmHWM")


def test_reading_a_range_costs_the_rows_once_not_twice(tmp_path: Path) -> None:
    # Read through a memory map and copied, a range was resident twice at the read's peak (the mapped pages and
    # the copy): 2x the rows; read from the file, once.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        _vm_hwm_bytes()
    except OSError:
        pytest.skip("needs Linux's /proc/self/clear_refs and VmHWM")
    rows, width = 80_000, 64
    sparse = np.random.default_rng(0).integers(0, 2**40, (rows, width))
    columns = EncodedColumns(np.zeros(rows, np.float32), sparse, np.zeros((rows, 1), np.float32),
                             np.zeros((rows, 0), np.int64))
    store = save_encoded(tmp_path / "wide", columns)
    del sparse, columns
    gc.collect()
    before = _vm_hwm_bytes()
    Path("/proc/self/clear_refs").write_text("5")
    start = _vm_hwm_bytes()
    chunk = store.read(slice(0, rows))
    grown = _vm_hwm_bytes() - start
    assert chunk.sparse.nbytes == rows * width * 8 and grown < 1.4 * chunk.sparse.nbytes, (grown, before)
    np.testing.assert_array_equal(chunk.sparse[123], np.load(store.directory / "sparse.npy", mmap_mode="r")[123])


def test_a_damaged_cache_file_is_a_clear_error(tmp_path: Path) -> None:
    store = save_encoded(tmp_path / "cache", make_columns(100))
    data = (store.directory / "dense.npy").read_bytes()
    (store.directory / "dense.npy").write_bytes(data[:-8])
    with pytest.raises(ValueError, match="dense.npy' ends before row 100: the cache is truncated"):
        store.read(slice(0, 100))
    np.save(store.directory / "labels.npy", np.zeros(100, np.float64))
    with pytest.raises(ValueError, match="labels.npy' holds a float64 array of shape"):
        store.read(slice(0, 10))


def test_split_rows_seeded_and_disjoint() -> None:
    train, val, test = split_rows(10_000, (0.1, 0.1), seed=0)
    assert (len(train), len(val), len(test)) == (8000, 1000, 1000)
    assert np.array_equal(np.sort(np.concatenate([train, val, test])), np.arange(10_000))
    assert not np.intersect1d(train, val).size and not np.intersect1d(train, test).size \
        and not np.intersect1d(val, test).size
    assert all(np.all(np.diff(part) > 0) for part in (train, val, test))      # sorted, for fast cache reads
    again = split_rows(10_000, (0.1, 0.1), seed=0)
    assert all(np.array_equal(x, y) for x, y in zip((train, val, test), again))
    other = split_rows(10_000, (0.1, 0.1), seed=1)
    assert not np.array_equal(other[2], test)
    # The split is random, not a block: held-out rows come from the whole range.
    assert test.min() < 1000 and test.max() > 9000
    assert [len(p) for p in split_rows(8999, (0.1,), seed=0)] == [8099, 900]
    with pytest.raises(ValueError, match="a part would be empty"):
        split_rows(5, (0.01,), seed=0)
    with pytest.raises(ValueError, match="a part would be empty"):
        split_rows(10, (0.5, 0.5), seed=0)

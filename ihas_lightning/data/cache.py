"""Encoded columns on disk as ``.npy`` files, read back a range of rows at a time.

A range (a chunk of the loader) is read from the file straight into a fresh array: read through a memory map
and copied, its mapped pages counted in the process's resident memory beside the copy until the map closed, one
chunk's worth more at each read (``benchmarks/results/memory_scale.md``). Scattered rows (an index array) are
gathered through a map that is closed right after. Either way the pages of a 10M-row file never pile up in the
process's resident memory: training over data larger than RAM keeps a flat footprint.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from .encoders import EncodedColumns

__all__ = ["save_encoded", "EncodedStore", "EncodedWriter"]

_PARTS = {"labels": np.float32, "sparse": np.int64, "dense": np.float32, "multi": np.int64}


def save_encoded(directory: str | Path, columns: EncodedColumns) -> EncodedStore:
    """Write ``columns`` to ``directory`` and return a store that reads them back."""
    with EncodedWriter(directory, len(columns), columns.sparse.shape[1], columns.dense.shape[1],
                       columns.multi.shape[1]) as writer:
        writer.write(columns)
    return EncodedStore(directory)


class EncodedWriter:
    """Streams chunks of encoded rows into pre-sized ``.npy`` files (for data made chunk by chunk)."""

    def __init__(self, directory: str | Path, num_rows: int, num_sparse: int, num_dense: int,
                 multi_width: int = 0) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.num_rows = num_rows
        self._shapes = {"labels": (num_rows,), "sparse": (num_rows, num_sparse), "dense": (num_rows, num_dense),
                        "multi": (num_rows, multi_width)}
        self._position = 0
        for part, dtype in _PARTS.items():
            np.lib.format.open_memmap(self.directory / f"{part}.npy", mode="w+", dtype=dtype,
                                      shape=self._shapes[part]).flush()

    def write(self, chunk: EncodedColumns) -> None:
        stop = self._position + len(chunk)
        if stop > self.num_rows:
            raise ValueError(f"writing rows up to {stop}, the cache was sized for {self.num_rows}")
        for part in _PARTS:
            target = np.load(self.directory / f"{part}.npy", mmap_mode="r+")
            target[self._position:stop] = getattr(chunk, part)
            target.flush()
            del target
        self._position = stop

    def __enter__(self) -> EncodedWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None and self._position != self.num_rows:
            raise ValueError(f"cache sized for {self.num_rows} rows got {self._position}")
        (self.directory / "meta.json").write_text(json.dumps({"rows": self.num_rows}))


class EncodedStore:
    """Row access to an encoded cache; every read copies out of a map that is closed right after."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        if not (self.directory / "meta.json").exists():
            raise FileNotFoundError(f"no encoded cache in '{self.directory}' (meta.json is missing)")
        self.num_rows = int(json.loads((self.directory / "meta.json").read_text())["rows"])

    def __len__(self) -> int:
        return self.num_rows

    def read(self, rows: slice | np.ndarray) -> EncodedColumns:
        """Rows by slice (read from the files) or by (sorted is fastest) index array (gathered through maps)."""
        parts = {}
        for part in _PARTS:
            path = self.directory / f"{part}.npy"
            if isinstance(rows, slice) and rows.step in (None, 1):
                parts[part] = _read_range(path, rows, _PARTS[part])
            else:
                mapped = np.load(path, mmap_mode="r")
                parts[part] = np.array(mapped[rows])
                del mapped
        return EncodedColumns(**parts)

    def read_labels(self) -> np.ndarray:
        """All labels ``(N,)``."""
        return _read_range(self.directory / "labels.npy", slice(0, self.num_rows), _PARTS["labels"])

    def read_all(self) -> EncodedColumns:
        return self.read(slice(0, self.num_rows))

    def iter_chunks(self, chunk_rows: int) -> Iterable[EncodedColumns]:
        for start in range(0, self.num_rows, chunk_rows):
            yield self.read(slice(start, min(start + chunk_rows, self.num_rows)))


def _read_range(path: Path, rows: slice, dtype: type) -> np.ndarray:
    """Rows ``rows`` (a step-1 slice) of the ``.npy`` array at ``path``, read into a fresh array."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, found = read_header(file)
        if found != np.dtype(dtype) or fortran_order or not shape:
            raise ValueError(f"'{path}' holds a {'Fortran-order ' if fortran_order else ''}{found} array of shape "
                             f"{shape}, not the cache's row-major {np.dtype(dtype)} rows: remove the cache folder")
        start, stop, _ = rows.indices(shape[0])
        out = np.empty((max(stop - start, 0), *shape[1:]), dtype=found)
        if out.nbytes:
            file.seek(start * (out.nbytes // len(out)), 1)
            if file.readinto(memoryview(out.reshape(-1)).cast("B")) != out.nbytes:
                raise ValueError(f"'{path}' ends before row {stop}: the cache is truncated; remove the cache folder")
    return out

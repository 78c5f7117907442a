"""Read CTR data files into :class:`RawColumns`: the public data sets' own layouts and generic tables.

:func:`read_data` is the one entry point the data module uses: it dispatches on a format name so that a
config file can say ``format: avazu``. Bad input raises :class:`DataFormatError` naming the file, the
1-based line (the header is line 1) and the column, never a bare ``IndexError`` or ``KeyError``.
The public data sets' own readers and schemas are in :mod:`ihas_lightning.data.readers_formats`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from ihas_lightning.data.readers_formats import (
    read_avazu,
    read_criteo,
    read_criteo_1tb,
    read_libfm,
)
from ihas_lightning.data.readers_io import (
    PathLike,
    check_dense_range,
    columns_to_raw,
    parse_dense,
    parse_labels,
    read_rows,
    select_columns,
    split_multivalued,
    to_sparse,
)
from ihas_lightning.data.readers_movielens import (
    read_movielens_1m,
    read_movielens_100k,
)
from ihas_lightning.data.schema import DataFormatError, RawColumns, Schema

__all__ = [
    "FORMATS",
    "TableFormat",
    "read_table",
    "read_data",
]

TableFormat = Literal["csv", "tsv", "parquet"]

#: Format names :func:`read_data` accepts.
FORMATS: tuple[str, ...] = ("criteo", "criteo-1tb", "avazu", "movielens-100k", "movielens-1m", "libfm", "csv", "tsv",
                            "parquet")

_SUFFIXES: dict[str, TableFormat] = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def _table_format(path: PathLike) -> TableFormat:
    name = os.fspath(path).lower()
    name = name[:-3] if name.endswith(".gz") else name
    for suffix, fmt in _SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise ValueError(f"cannot tell the table format of '{os.fspath(path)}' from its suffix; pass format= one of "
                     f"csv, tsv, parquet")


def read_table(path: PathLike, schema: Schema, *, format: TableFormat | None = None, header: bool = True,
               ignore_extra: bool = False) -> RawColumns:
    """A CSV, TSV or Parquet table with a declared ``schema``.

    Columns are found by name in the header (or the Parquet schema); without ``header`` a text file must
    hold exactly ``schema.columns`` in that order. Columns the schema does not name are an error unless
    ``ignore_extra`` (an export with extra columns should be a conscious choice). Multi-valued text columns
    are split on their separator. ``format=None`` goes by the suffix (``.csv``, ``.tsv``, ``.parquet``).
    For Parquet, the "line" in errors is the 1-based row.
    """
    fmt = format or _table_format(path)
    if fmt == "parquet":
        return _read_parquet(path, schema, ignore_extra=ignore_extra)
    if fmt not in ("csv", "tsv"):
        raise ValueError(f"format must be csv, tsv or parquet, got {fmt!r}")
    table = read_rows(path, delimiter="," if fmt == "csv" else "\t", quoted=fmt == "csv")
    columns, lines = select_columns(table, schema.columns, header=header, ignore_extra=ignore_extra)
    return columns_to_raw(columns, lines, schema, source=table.source)


def _read_parquet(path: PathLike, schema: Schema, *, ignore_extra: bool) -> RawColumns:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = os.fspath(path)
    try:
        table = pq.read_table(source)
    except (pa.ArrowInvalid, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise DataFormatError(f"cannot read as Parquet: {error}", source=source) from error
    names = table.column_names
    missing = [n for n in schema.columns if n not in names]
    extra = [] if ignore_extra else [n for n in names if n not in schema.columns]
    if missing or extra:
        problems = ([f"missing columns {missing}"] if missing else []) + (
            [f"unexpected columns {extra}"] if extra else [])
        raise DataFormatError(f"bad columns: {'; '.join(problems)}; expected {list(schema.columns)}", source=source)
    if table.num_rows == 0:
        raise DataFormatError("the file has no rows", source=source)
    rows = range(1, table.num_rows + 1)

    def numeric(name: str) -> np.ndarray | None:
        column = table.column(name)
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
            return column.cast(pa.float64()).to_numpy(zero_copy_only=False)
        return None

    labels = numeric(schema.label)
    if labels is None:
        labels = parse_labels(_texts(table.column(schema.label).to_pylist()), rows, source=source,
                              column=schema.label)
    else:
        bad = np.flatnonzero((labels != 0) & (labels != 1))
        if bad.size:
            raise DataFormatError(f"label must be 0 or 1, got {labels[bad[0]]}", source=source,
                                  line=int(bad[0]) + 1, column=schema.label)
        labels = labels.astype(np.float32)
    dense = {}
    for name in schema.dense:
        values = numeric(name)
        if values is None:
            values = parse_dense(_texts(table.column(name).to_pylist()), rows, source=source, column=name)
        check_dense_range(values, rows, source=source, column=name)
        dense[name] = values
    multivalued = {}
    for field in schema.multivalued:
        column = table.column(field.name)
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            multivalued[field.name] = [[_text(v) for v in value if v is not None] if value else []
                                       for value in column.to_pylist()]
        else:
            multivalued[field.name] = split_multivalued(_texts(column.to_pylist()), field.separator)
    sparse = {name: to_sparse(_texts(table.column(name).to_pylist())) for name in schema.sparse}
    return RawColumns(schema=schema, labels=labels, sparse=sparse, dense=dense, multivalued=multivalued,
                      source=source)


def _text(value: object) -> str:
    """A Parquet cell as category text: null/NaN -> "", 7.0 -> "7" (ints stored as floats), True -> "1"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _texts(values: Sequence[object]) -> list[str]:
    return [_text(v) for v in values]


def _project(raw: RawColumns, schema: Schema, fmt: str) -> RawColumns:
    """Restrict a fixed-layout reader's output to ``schema`` (a subset of its columns, same kinds)."""
    if schema == raw.schema:
        return raw
    wrong = [] if schema.label == raw.schema.label else [f"label '{schema.label}' (the format's is "
                                                          f"'{raw.schema.label}')"]
    for kind, wanted, have in (("sparse", schema.sparse, raw.sparse), ("dense", schema.dense, raw.dense),
                               ("multivalued", [m.name for m in schema.multivalued], raw.multivalued)):
        wrong += [f"{kind} '{name}'" for name in wanted if name not in have]
    if wrong:
        raise ValueError(f"schema does not fit format '{fmt}': {', '.join(wrong)} not among its columns "
                         f"{list(raw.schema.columns)}")
    return RawColumns(schema=schema, labels=raw.labels, sparse={n: raw.sparse[n] for n in schema.sparse},
                      dense={n: raw.dense[n] for n in schema.dense},
                      multivalued={m.name: raw.multivalued[m.name] for m in schema.multivalued}, source=raw.source)


_FIXED: dict[str, Callable[[PathLike], RawColumns]] = {
    "criteo": read_criteo,
    "criteo-1tb": read_criteo_1tb,
    "avazu": read_avazu,
    "movielens-100k": read_movielens_100k,
    "movielens-1m": read_movielens_1m,
    "libfm": read_libfm,
}


def read_data(path: PathLike, format: str, schema: Schema | None = None) -> RawColumns:
    """Read ``path`` as ``format`` (one of :data:`FORMATS`).

    ``csv``/``tsv``/``parquet`` need ``schema``. For the data-set formats the schema is built in; a given
    ``schema`` selects a subset of its columns (e.g. to drop fields), and must use the same label.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown data format {format!r}; expected one of {', '.join(FORMATS)}")
    if format in _FIXED:
        raw = _FIXED[format](path)
        return raw if schema is None else _project(raw, schema, format)
    if schema is None:
        raise ValueError(f"format '{format}' needs a schema naming the label, sparse and dense columns")
    return read_table(path, schema, format=format)  # type: ignore[arg-type]

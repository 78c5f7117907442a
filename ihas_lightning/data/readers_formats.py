"""Readers for the public CTR data sets' own layouts: Criteo (Kaggle and 1TB), Avazu, libFM (MovieLens is in
:mod:`~ihas_lightning.data.readers_movielens`).

Each reader knows its data set's columns and returns :class:`RawColumns` with a fixed schema (the module
constants below), so that experiments can name a data set instead of spelling out 40 column names.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence

from ihas_lightning.data.readers_io import (
    PathLike,
    columns_to_raw,
    decoded_lines,
    first_line,
    parse_labels,
    read_rows,
    select_columns,
    to_sparse,
)
from ihas_lightning.data.schema import DataFormatError, RawColumns, Schema

__all__ = [
    "CRITEO_COLUMNS",
    "CRITEO_SCHEMA",
    "AVAZU_COLUMNS",
    "AVAZU_SCHEMA",
    "LIBFM_LABELS",
    "read_criteo",
    "read_criteo_1tb",
    "read_avazu",
    "read_libfm",
    "libfm_schema",
]

_CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
#: Criteo (Kaggle and 1TB): label, I1..I13 integer counts (log1p-transformed), C1..C26 hashed categories.
CRITEO_SCHEMA = Schema(label="label", sparse=tuple(f"C{i}" for i in range(1, 27)), dense=_CRITEO_DENSE,
                       log_dense=_CRITEO_DENSE)
#: The columns of Criteo's files in file order.
CRITEO_COLUMNS = ("label", *CRITEO_SCHEMA.dense, *CRITEO_SCHEMA.sparse)

#: The columns of Avazu's ``train.csv`` in file order.
AVAZU_COLUMNS = ("id", "click", "hour", "C1", "banner_pos", "site_id", "site_domain", "site_category", "app_id",
                 "app_domain", "app_category", "device_id", "device_ip", "device_model", "device_type",
                 "device_conn_type", *(f"C{i}" for i in range(14, 22)))
#: Avazu: ``id`` dropped (unique per row), ``hour`` (YYMMDDHH) replaced by hour of day and weekday
#: (the raw value never repeats between train and test days), everything else categorical.
AVAZU_SCHEMA = Schema(label="click", sparse=("hour_of_day", "weekday", *AVAZU_COLUMNS[3:]))

_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")

#: libFM label spellings: -1/0 are negatives, 1/+1 positives.
LIBFM_LABELS = {"-1": 0.0, "0": 0.0, "1": 1.0, "+1": 1.0, "-1.0": 0.0, "0.0": 0.0, "1.0": 1.0, "+1.0": 1.0}


def read_criteo(path: PathLike, *, header: bool | None = None) -> RawColumns:
    """Criteo Kaggle display ads: raw TSV without header (``train.txt``) or CSV with ``label,I1..,C26`` header.

    The delimiter is sniffed from the first line (a tab means TSV); with ``header=None`` a header is assumed
    when the first field of line 1 is ``label``. Integers may be written as floats (``260.0``).
    """
    line = first_line(path)
    delimiter = "\t" if "\t" in line else ","
    if header is None:
        header = line.split(delimiter, 1)[0].strip().strip('"') == CRITEO_SCHEMA.label
    table = read_rows(path, delimiter=delimiter, quoted=delimiter == ",")
    columns, lines = select_columns(table, CRITEO_COLUMNS, header=header)
    return columns_to_raw(columns, lines, CRITEO_SCHEMA, source=table.source)


def read_criteo_1tb(path: PathLike) -> RawColumns:
    """Criteo 1TB click logs (``day_N``, optionally ``.gz``): the Kaggle TSV layout, no header.

    The 1TB set hashes categories differently from Kaggle (no shared vocabulary), so it is its own format
    name even though the columns match.
    """
    table = read_rows(path, delimiter="\t", quoted=False)
    columns, lines = select_columns(table, CRITEO_COLUMNS, header=False)
    return columns_to_raw(columns, lines, CRITEO_SCHEMA, source=table.source)


def _hour_parts(values: Sequence[str], lines: Sequence[int], source: str) -> tuple[list[str], list[str]]:
    """``YYMMDDHH`` -> (hour of day ``"0".."23"``, weekday ``"Mon".."Sun"``); parsed once per distinct value."""
    cache: dict[str, tuple[str, str]] = {}
    hours: list[str] = []
    weekdays: list[str] = []
    for i, value in enumerate(values):
        parts = cache.get(value)
        if parts is None:
            text = value.strip()
            try:
                if len(text) != 8 or not text.isdigit():
                    raise ValueError("not 8 digits")
                hour = int(text[6:])
                if hour > 23:
                    raise ValueError(f"hour {hour} > 23")
                day = dt.date(2000 + int(text[:2]), int(text[2:4]), int(text[4:6]))
            except ValueError as error:
                raise DataFormatError(f"expected YYMMDDHH, got {value!r} ({error})", source=source,
                                      line=lines[i], column="hour") from None
            parts = cache[value] = (str(hour), _WEEKDAYS[day.weekday()])
        hours.append(parts[0])
        weekdays.append(parts[1])
    return hours, weekdays


def read_avazu(path: PathLike, *, header: bool | None = None) -> RawColumns:
    """Avazu CTR CSV (``train.csv`` layout) with or without header; ``header=None`` looks for ``click`` on line 1.

    ``id`` is dropped and ``hour`` becomes the sparse fields ``hour_of_day`` and ``weekday``.
    """
    if header is None:
        header = "click" in (field.strip().strip('"') for field in first_line(path).split(","))
    table = read_rows(path, delimiter=",", quoted=True)
    columns, lines = select_columns(table, AVAZU_COLUMNS, header=header)
    hours, weekdays = _hour_parts(columns["hour"], lines, table.source)
    columns = {**columns, "hour_of_day": hours, "weekday": weekdays}
    return columns_to_raw(columns, lines, AVAZU_SCHEMA, source=table.source)


def libfm_schema(num_fields: int) -> Schema:
    """One categorical field per token position: ``f1`` .. ``f{num_fields}``."""
    if num_fields < 1:
        raise ValueError(f"num_fields must be >= 1, got {num_fields}")
    return Schema(label="label", sparse=tuple(f"f{k}" for k in range(1, num_fields + 1)))


def read_libfm(path: PathLike, *, num_fields: int | None = None) -> RawColumns:
    """libFM / SVMlight ``label idx:val idx:val ...`` with one categorical field per position.

    The k-th ``idx:val`` token (1-based) is field ``f{k}`` with category ``idx``. Each position is a one-hot
    field, so every ``val`` must be 1: other values would be silently lost. All rows need the same number
    of tokens (``num_fields``, or that of the first row when ``None``). Labels: -1/0 negative, 1/+1 positive.
    """
    if num_fields is not None and num_fields < 1:
        raise ValueError(f"num_fields must be >= 1, got {num_fields}")
    source = os.fspath(path)
    labels: list[str] = []
    rows: list[list[str]] = []
    lines: list[int] = []
    for number, text in enumerate(decoded_lines(path), start=1):
        tokens = text.split()
        if not tokens:
            continue
        if num_fields is None:
            num_fields = len(tokens) - 1
            if num_fields < 1:
                raise DataFormatError("a row needs a label and at least one idx:val token", source=source,
                                      line=number)
        if len(tokens) - 1 != num_fields:
            column = f"f{len(tokens)}" if len(tokens) - 1 < num_fields else None
            raise DataFormatError(f"expected a label and {num_fields} idx:val tokens, got {len(tokens) - 1} tokens",
                                  source=source, line=number, column=column)
        categories = []
        for k, token in enumerate(tokens[1:], start=1):
            index, colon, value = token.partition(":")
            try:
                one = colon and index and float(value) == 1.0
            except ValueError:
                one = False
            if not one:
                raise DataFormatError(f"expected idx:1, got {token!r} (each position is one categorical field)",
                                      source=source, line=number, column=f"f{k}")
            categories.append(index)
        labels.append(tokens[0])
        rows.append(categories)
        lines.append(number)
    if not rows:
        raise DataFormatError("the file is empty", source=source)
    schema = libfm_schema(len(rows[0]))
    columns = list(zip(*rows))
    return RawColumns(
        schema=schema,
        labels=parse_labels(labels, lines, source=source, column="label", mapping=LIBFM_LABELS,
                            expected="-1, 0, 1 or +1"),
        sparse={name: to_sparse(columns[k]) for k, name in enumerate(schema.sparse)},
        source=source,
    )

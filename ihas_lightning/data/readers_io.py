"""Low-level pieces shared by the readers: decoding lines, splitting rows, turning text columns into arrays.

Every error raised here is a :class:`DataFormatError` naming the file, the 1-based physical line (the
header counts as line 1) and, where one applies, the column, so that a bad row in a 100k-line file can
be found with ``sed -n Np``. Files are decoded line by line (not in 8 KiB chunks) so that an undecodable
byte is reported on its own line.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np

from ihas_lightning.data.schema import DataFormatError, RawColumns, Schema

__all__ = [
    "PathLike",
    "TextRows",
    "BINARY_LABELS",
    "open_binary",
    "decoded_lines",
    "read_rows",
    "read_separated_rows",
    "select_columns",
    "parse_labels",
    "parse_dense",
    "check_dense_range",
    "to_sparse",
    "split_multivalued",
    "columns_to_raw",
    "first_line",
]

PathLike = str | os.PathLike[str]

#: Label spellings accepted for a binary label column (Criteo CSV writes labels as ``0``/``1``, some
#: exports as ``0.0``/``1.0``).
BINARY_LABELS: Mapping[str, float] = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0}


def open_binary(path: PathLike) -> BinaryIO:
    """Open ``path`` for reading bytes; ``.gz`` files (Criteo 1TB day files ship gzipped) are decompressed."""
    if os.fspath(path).endswith(".gz"):
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def decoded_lines(path: PathLike, encoding: str = "utf-8") -> Iterator[str]:
    """Yield the decoded physical lines of ``path`` (split on LF only, line ends kept); a BOM is dropped.

    The file is decoded in one go (fast) and, on failure, the bad byte's line is found by counting LF bytes
    before it, so only ASCII-compatible encodings are supported.
    """
    source = os.fspath(path)
    with open_binary(path) as handle:
        data = handle.read()
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        raise DataFormatError(
            f"cannot decode byte 0x{data[error.start]:02x} at character {error.start - line_start + 1} "
            f"as {encoding}", source=source, line=data.count(b"\n", 0, error.start) + 1) from error
    del data
    if text.startswith("\ufeff"):
        text = text[1:]
    yield from io.StringIO(text, newline="\n")


@dataclass(frozen=True)
class TextRows:
    """Non-blank rows of a delimited file with the physical line number of each (header included)."""

    source: str
    rows: list[list[str]]
    lines: list[int]
    delimiter: str


def read_rows(path: PathLike, *, delimiter: str, quoted: bool, encoding: str = "utf-8") -> TextRows:
    """Split ``path`` into rows with :mod:`csv` (C speed); blank lines are skipped; an empty file is an error.

    ``quoted`` enables CSV double-quote handling; TSV and ``|`` files are read with quoting off, because
    their fields (e.g. MovieLens titles) may contain bare ``"`` characters.
    """
    source = os.fspath(path)
    reader = csv.reader(decoded_lines(path, encoding), delimiter=delimiter,
                        quoting=csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE, strict=quoted)
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if row:
                rows.append(row)
                lines.append(reader.line_num)
    except csv.Error as error:
        raise DataFormatError(f"cannot split the line: {error}", source=source, line=reader.line_num) from error
    if not rows:
        raise DataFormatError("the file is empty", source=source)
    return TextRows(source=source, rows=rows, lines=lines, delimiter=delimiter)


def read_separated_rows(path: PathLike, separator: str, *, encoding: str = "utf-8") -> TextRows:
    """Split ``path`` on a multi-character ``separator`` (MovieLens-1M's ``::``, which :mod:`csv` cannot take).

    No quoting; a line end may be LF or CRLF; blank lines are skipped; an empty file is an error.
    """
    source = os.fspath(path)
    rows: list[list[str]] = []
    lines: list[int] = []
    for number, text in enumerate(decoded_lines(path, encoding), start=1):
        text = text.rstrip("\r\n")
        if text:
            rows.append(text.split(separator))
            lines.append(number)
    if not rows:
        raise DataFormatError("the file is empty", source=source)
    return TextRows(source=source, rows=rows, lines=lines, delimiter=separator)


def select_columns(table: TextRows, names: Sequence[str], *, header: bool,
                   ignore_extra: bool = False) -> tuple[dict[str, tuple[str, ...]], list[int]]:
    """Columns ``names`` of ``table`` as tuples of strings, plus the line number of each data row.

    With ``header`` the first row names the columns and ``names`` are looked up by name (missing and, unless
    ``ignore_extra``, unexpected names are an error naming them); without it the file holds exactly
    ``names`` in that order. Every data row must have as many fields as the header (or ``names``).
    """
    source, rows, lines = table.source, table.rows, table.lines
    if header:
        file_names = [name.strip() for name in rows[0]]
        repeated = sorted({n for n in file_names if file_names.count(n) > 1})
        missing = [n for n in names if n not in file_names]
        extra = [] if ignore_extra else [n for n in file_names if n not in names]
        problems = []
        if repeated:
            problems.append(f"repeated columns {repeated}")
        if missing:
            problems.append(f"missing columns {missing}")
        if extra:
            problems.append(f"unexpected columns {extra}")
        if problems:
            raise DataFormatError(f"bad header: {'; '.join(problems)}; expected {list(names)}",
                                  source=source, line=lines[0])
        data, data_lines = rows[1:], lines[1:]
        if not data:
            raise DataFormatError("no data rows after the header", source=source, line=lines[0])
    else:
        file_names = list(names)
        data, data_lines = rows, lines
    width = len(file_names)
    widths = set(map(len, data))
    for i, row in enumerate(data if widths != {width} else ()):
        if len(row) != width:
            column = file_names[len(row)] if len(row) < width else None
            what = f"the row ends before column '{column}'" if column else f"{len(row) - width} extra field(s)"
            raise DataFormatError(f"expected {width} fields separated by {table.delimiter!r}, got {len(row)} "
                                  f"({what})", source=source, line=data_lines[i], column=column)
    transposed = list(zip(*data))
    columns = {name: transposed[file_names.index(name)] for name in names}
    return columns, data_lines


def parse_labels(values: Sequence[str], lines: Sequence[int], *, source: str, column: str,
                 mapping: Mapping[str, float] = BINARY_LABELS, expected: str = "0 or 1") -> np.ndarray:
    """Labels as float32 0/1; any other spelling is an error naming the line and the value."""
    try:
        return np.fromiter((mapping[v.strip()] for v in values), dtype=np.float32, count=len(values))
    except KeyError:
        i = next(i for i, v in enumerate(values) if v.strip() not in mapping)
        raise DataFormatError(f"label must be {expected}, got {values[i]!r}", source=source, line=lines[i],
                              column=column) from None


def parse_dense(values: Sequence[str], lines: Sequence[int], *, source: str, column: str) -> np.ndarray:
    """Numbers as float64 (``260`` and ``260.0`` alike); empty means missing (NaN); inf is an error."""
    nan = math.nan
    try:
        out = np.array([float(v) if v.strip() else nan for v in values], dtype=np.float64)
    except ValueError:
        for i, v in enumerate(values):
            try:
                float(v) if v.strip() else nan
            except ValueError:
                raise DataFormatError(f"expected a number or an empty field, got {v!r}", source=source,
                                      line=lines[i], column=column) from None
        raise
    check_dense_range(out, lines, source=source, column=column, texts=values)
    return out


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_dense_range(values: np.ndarray, lines: Sequence[int], *, source: str, column: str,
                      texts: Sequence[str] | None = None) -> None:
    """A DataFormatError naming the file, line and column of the first value that is infinite or too large for
    float32 (the models' dtype: 1e200 would become inf there, far from where it came from). NaN is missing."""
    bad = np.flatnonzero(np.abs(np.nan_to_num(values, nan=0.0)) > _FLOAT32_MAX)
    if bad.size:
        i = int(bad[0])
        shown = repr(texts[i]) if texts is not None else str(values[i])
        reason = "a finite number" if np.isinf(values[i]) else "a number within float32's range (|x| <= 3.4e38)"
        raise DataFormatError(f"expected {reason}, got {shown}", source=source, line=lines[i], column=column)


def to_sparse(values: Sequence[str]) -> np.ndarray:
    """Categories as a 1-D object array of ``str``; ``""`` stays as the missing marker."""
    out = np.empty(len(values), dtype=object)
    out[:] = list(values)
    return out


def split_multivalued(values: Sequence[str], separator: str) -> list[list[str]]:
    """``"a|b"`` -> ``["a", "b"]``; empty tokens are dropped, so ``""`` (missing) is ``[]``."""
    return [[token for token in value.split(separator) if token] if value else [] for value in values]


def columns_to_raw(columns: Mapping[str, Sequence[str]], lines: Sequence[int], schema: Schema, *,
                   source: str) -> RawColumns:
    """Text columns (by name) -> :class:`RawColumns` for ``schema``: label 0/1, dense floats, sparse strings."""
    return RawColumns(
        schema=schema,
        labels=parse_labels(columns[schema.label], lines, source=source, column=schema.label),
        sparse={name: to_sparse(columns[name]) for name in schema.sparse},
        dense={name: parse_dense(columns[name], lines, source=source, column=name) for name in schema.dense},
        multivalued={m.name: split_multivalued(columns[m.name], m.separator) for m in schema.multivalued},
        source=source,
    )


def first_line(path: PathLike, encoding: str = "utf-8") -> str:
    """The first line of ``path`` without its line end, to sniff a delimiter or a header; empty file -> error."""
    source = os.fspath(path)
    with open_binary(path) as handle:
        raw = handle.readline()
    if not raw.strip():
        raise DataFormatError("the file is empty" if not raw else "line 1 is blank", source=source,
                              line=None if not raw else 1)
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise DataFormatError(f"cannot decode byte 0x{raw[error.start]:02x} at character {error.start + 1} "
                              f"as {encoding}", source=source, line=1) from error
    return text.lstrip("\ufeff").rstrip("\r\n")

"""What a CTR table holds: a binary label, sparse (categorical) fields, dense fields, multi-valued fields.

The schema is the contract between readers, encoders, the cache and the backbones. It is a frozen
dataclass so that it can be saved with a run (JSON) and compared when a checkpoint is loaded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["MultiValuedField", "Schema", "RawColumns", "DataFormatError"]


class DataFormatError(ValueError):
    """Bad input rows: the message names the file, the line and the column."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 column: str | None = None) -> None:
        where = []
        if source is not None:
            where.append(f"file '{source}'")
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column '{column}'")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.source, self.line, self.column = source, line, column


@dataclass(frozen=True)
class MultiValuedField:
    """A field holding several categories per row (e.g. movie genres ``Comedy|Drama``), mean-pooled."""

    name: str
    separator: str = "|"
    max_len: int = 8

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"multi-valued field '{self.name}': max_len must be >= 1, got {self.max_len}")
        if not self.separator:
            raise ValueError(f"multi-valued field '{self.name}': separator must not be empty")


@dataclass(frozen=True)
class Schema:
    """Names and kinds of a CTR table's columns.

    Args:
        label: name of the binary label column.
        sparse: categorical fields, one category per row.
        dense: numeric fields; missing values become 0.
        multivalued: fields with several categories per row.
        log_dense: dense fields that are counts and get ``log1p`` (negative values are clamped to 0 first).

    Example:
        >>> Schema(label="click", sparse=("site_id", "app_id"), dense=("hour",))
    """

    label: str
    sparse: tuple[str, ...]
    dense: tuple[str, ...] = ()
    multivalued: tuple[MultiValuedField, ...] = ()
    log_dense: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "sparse", tuple(self.sparse))
        object.__setattr__(self, "dense", tuple(self.dense))
        object.__setattr__(self, "log_dense", tuple(self.log_dense))
        object.__setattr__(self, "multivalued", tuple(
            m if isinstance(m, MultiValuedField) else MultiValuedField(**m) for m in self.multivalued))
        names = [self.label, *self.sparse, *self.dense, *(m.name for m in self.multivalued)]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"schema: column names must be unique, repeated: {duplicates}")
        if not self.sparse and not self.multivalued:
            raise ValueError("schema: at least one sparse or multi-valued field is needed")
        unknown = sorted(set(self.log_dense) - set(self.dense))
        if unknown:
            raise ValueError(f"schema: log_dense names columns that are not dense: {unknown}")

    @property
    def embedded_fields(self) -> tuple[str, ...]:
        """Fields that own an embedding table, in the order of the (B, F, D) embedding tensor."""
        return self.sparse + tuple(m.name for m in self.multivalued)

    @property
    def columns(self) -> tuple[str, ...]:
        return (self.label, *self.sparse, *self.dense, *(m.name for m in self.multivalued))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Schema:
        known = {"label", "sparse", "dense", "multivalued", "log_dense"}
        extra = sorted(set(data) - known)
        if extra:
            raise ValueError(f"schema: unknown keys {extra}; expected some of {sorted(known)}")
        if "label" not in data or ("sparse" not in data and "multivalued" not in data):
            raise ValueError("schema: 'label' and 'sparse' (or 'multivalued') are required")
        if not isinstance(data["label"], str):
            raise ValueError(f"schema: 'label' must be a column name (a string), got {data['label']!r}")
        for key in ("sparse", "dense", "log_dense"):
            value = data.get(key, [])
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"schema: '{key}' must be a list of column names (strings), got {value!r}")
        multivalued = data.get("multivalued", [])
        if not isinstance(multivalued, (list, tuple)) or not all(isinstance(m, Mapping) for m in multivalued):
            raise ValueError(f"schema: 'multivalued' must be a list of mappings with 'name' (and 'separator', "
                             f"'max_len'), got {multivalued!r}")
        return cls(label=data["label"], sparse=tuple(data.get("sparse", ())), dense=tuple(data.get("dense", ())),
                   multivalued=tuple(data.get("multivalued", ())), log_dense=tuple(data.get("log_dense", ())))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        """Read a schema from JSON or YAML (by suffix)."""
        path = Path(path)
        text = path.read_text()
        try:
            if path.suffix in {".yaml", ".yml"}:
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except ValueError as error:  # json.JSONDecodeError
            raise ValueError(f"schema file '{path}' cannot be read: {error}") from None
        except Exception as error:  # noqa: BLE001  yaml.YAMLError (yaml is not imported for JSON)
            raise ValueError(f"schema file '{path}' cannot be read: {error}".replace("\n", " ")) from None
        if not isinstance(data, Mapping):
            raise ValueError(f"schema file '{path}': expected a mapping, got {type(data).__name__}")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as error:
            raise ValueError(f"schema file '{path}': {error}") from None


@dataclass
class RawColumns:
    """Rows as read from a file, before encoding.

    ``sparse`` values are strings, ``""`` meaning missing; ``dense`` values are float64 with NaN for
    missing; ``multivalued`` values are lists of strings per row. ``labels`` are 0/1.
    """

    schema: Schema
    labels: np.ndarray                                   # (N,) float32 in {0, 1}
    sparse: dict[str, np.ndarray]                        # name -> (N,) object array of str
    dense: dict[str, np.ndarray] = field(default_factory=dict)   # name -> (N,) float64
    multivalued: dict[str, list[list[str]]] = field(default_factory=dict)
    source: str = "<memory>"

    def __post_init__(self) -> None:
        n = len(self.labels)
        for kind, columns in (("sparse", self.sparse), ("dense", self.dense), ("multivalued", self.multivalued)):
            for name, values in columns.items():
                if len(values) != n:
                    raise DataFormatError(f"{kind} column has {len(values)} rows, the label has {n}",
                                          source=self.source, column=name)
        missing = [c for c in self.schema.sparse if c not in self.sparse]
        missing += [c for c in self.schema.dense if c not in self.dense]
        missing += [m.name for m in self.schema.multivalued if m.name not in self.multivalued]
        if missing:
            raise DataFormatError(f"columns {missing} of the schema are missing", source=self.source)
        extra = [c for c in self.sparse if c not in self.schema.sparse]
        extra += [c for c in self.dense if c not in self.schema.dense]
        extra += [c for c in self.multivalued if c not in {m.name for m in self.schema.multivalued}]
        if extra:
            raise DataFormatError(f"columns {extra} are not in the schema (it has {list(self.schema.sparse)} sparse, "
                                  f"{list(self.schema.dense)} dense)", source=self.source)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray | Sequence[int]) -> RawColumns:
        """Rows at ``index`` (a split), as a new table."""
        index = np.asarray(index)
        return RawColumns(
            schema=self.schema,
            labels=self.labels[index],
            sparse={k: v[index] for k, v in self.sparse.items()},
            dense={k: v[index] for k, v in self.dense.items()},
            multivalued={k: [v[i] for i in index] for k, v in self.multivalued.items()},
            source=self.source,
        )

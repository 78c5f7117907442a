"""Encoders fitted on the training split only, saved with a run and reloaded for inference on raw rows.

Id layout of every categorical field (single- and multi-valued):
    0 = missing (and padding of multi-valued fields), 1 = out of vocabulary (rare or unseen), 2.. = known.
Ids are int64 end to end: deepctr-torch's own float32 input loses ids above 2**24.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .schema import DataFormatError, RawColumns, Schema

__all__ = ["MISSING_ID", "OOV_ID", "FieldVocabulary", "FeatureEncoder", "EncodedColumns"]

MISSING_ID = 0
OOV_ID = 1
_FIRST_ID = 2


@dataclass
class EncodedColumns:
    """Model-ready columns: the shapes every stage after the encoders relies on."""

    labels: np.ndarray   # (N,) float32
    sparse: np.ndarray   # (N, F_sparse) int64
    dense: np.ndarray    # (N, F_dense) float32
    multi: np.ndarray    # (N, sum of max_len) int64, 0 = padding

    def __post_init__(self) -> None:
        n = len(self.labels)
        for name in ("sparse", "dense", "multi"):
            array = getattr(self, name)
            if array.ndim != 2 or array.shape[0] != n:
                raise ValueError(f"encoded '{name}' must be (N={n}, k), got {array.shape}")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> EncodedColumns:
        return EncodedColumns(self.labels[index], self.sparse[index], self.dense[index], self.multi[index])


class FieldVocabulary:
    """Known categories of one field; ``range_size`` makes a vocabulary of the tokens ``"0".."n-1"``.

    The range form is how the synthetic generator's integer ids enter the same id layout without
    storing millions of tokens.
    """

    def __init__(self, tokens: list[str] | None = None, *, range_size: int | None = None) -> None:
        if (tokens is None) == (range_size is None):
            raise ValueError("give either tokens or range_size")
        self.tokens = tokens
        self.range_size = range_size
        self._lookup = {t: i + _FIRST_ID for i, t in enumerate(tokens)} if tokens is not None else None

    @property
    def size(self) -> int:
        """Embedding rows needed: known categories plus the missing and OOV ids."""
        return _FIRST_ID + (len(self.tokens) if self.tokens is not None else self.range_size)

    @classmethod
    def fit(cls, values: np.ndarray, min_count: int) -> FieldVocabulary:
        uniques, counts = np.unique(values.astype(str), return_counts=True)
        keep = (counts >= min_count) & (uniques != "")
        # Most frequent first: ids then say something about frequency, which readers of logs appreciate.
        order = np.argsort(-counts[keep], kind="stable")
        return cls([str(t) for t in uniques[keep][order]])

    def encode(self, values: np.ndarray) -> np.ndarray:
        """(N,) tokens -> (N,) int64 ids; '' -> missing, unknown -> OOV."""
        values = np.asarray(values).astype(str)
        if self.range_size is not None:
            out = np.full(len(values), OOV_ID, dtype=np.int64)
            digits = np.char.isdigit(values)
            numbers = np.where(digits, values, "0").astype(np.int64)
            known = digits & (numbers < self.range_size)
            out[known] = numbers[known] + _FIRST_ID
            out[values == ""] = MISSING_ID
            return out
        uniques, inverse = np.unique(values, return_inverse=True)
        mapped = np.array([self._lookup.get(u, OOV_ID) if u != "" else MISSING_ID for u in uniques], dtype=np.int64)
        return mapped[inverse.reshape(-1)] if len(values) else np.zeros(0, dtype=np.int64)

    def to_dict(self) -> dict:
        return {"tokens": self.tokens} if self.tokens is not None else {"range_size": self.range_size}

    @classmethod
    def from_dict(cls, data: dict) -> FieldVocabulary:
        return cls(data.get("tokens"), range_size=data.get("range_size"))


class FeatureEncoder:
    """Turns :class:`RawColumns` into :class:`EncodedColumns` with vocabularies and dense statistics.

    Dense fields: missing -> 0 after standardization (the training mean); ``schema.log_dense`` fields get
    ``log1p(max(x, 0))`` first, since counts in CTR logs are heavy-tailed.

    Args:
        schema: the columns to encode.
        min_count: categories seen fewer times in training map to the OOV id.
    """

    def __init__(self, schema: Schema, min_count: int = 1) -> None:
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        self.schema = schema
        self.min_count = min_count
        self.vocabularies: dict[str, FieldVocabulary] = {}
        self.dense_mean = np.zeros(len(schema.dense), dtype=np.float64)
        self.dense_std = np.ones(len(schema.dense), dtype=np.float64)

    @property
    def fitted(self) -> bool:
        return bool(self.vocabularies)

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Embedding rows per embedded field, in ``schema.embedded_fields`` order."""
        return {name: self.vocabularies[name].size for name in self.schema.embedded_fields}

    def fit(self, raw: RawColumns) -> FeatureEncoder:
        self._check_schema(raw)
        for name in self.schema.sparse:
            self.vocabularies[name] = FieldVocabulary.fit(raw.sparse[name], self.min_count)
        for field in self.schema.multivalued:
            flat = np.array([t for row in raw.multivalued[field.name] for t in row], dtype=object)
            self.vocabularies[field.name] = FieldVocabulary.fit(flat, self.min_count)
        if self.schema.dense:
            self.fit_dense(self._dense_raw(raw))
        return self

    def fit_dense(self, values: np.ndarray) -> FeatureEncoder:
        """The dense fields' statistics from raw values (N, F_dense) in ``schema.dense`` order, NaN = missing
        (for data whose categories need no vocabulary, as :meth:`for_integer_ids`)."""
        dense = self._logged(values)
        self.dense_mean = np.nanmean(dense, axis=0) if len(dense) else self.dense_mean
        self.dense_mean = np.nan_to_num(self.dense_mean)
        std = np.nanstd(dense, axis=0) if len(dense) else self.dense_std
        self.dense_std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        return self

    def encode_dense(self, values: np.ndarray) -> np.ndarray:
        """Raw dense values (N, F_dense), NaN = missing -> standardized float32, missing -> 0."""
        standardized = (self._logged(values) - self.dense_mean) / self.dense_std
        return np.nan_to_num(standardized, nan=0.0).astype(np.float32)

    @classmethod
    def for_integer_ids(cls, schema: Schema, vocab_sizes: dict[str, int]) -> FeatureEncoder:
        """An encoder for data whose categories already are integers ``0..V-1`` (the synthetic generator)."""
        encoder = cls(schema)
        for name in schema.embedded_fields:
            encoder.vocabularies[name] = FieldVocabulary(range_size=vocab_sizes[name])
        return encoder

    def transform(self, raw: RawColumns) -> EncodedColumns:
        if not self.fitted:
            raise RuntimeError("FeatureEncoder.transform called before fit (or load)")
        self._check_schema(raw)
        n = len(raw)
        sparse = np.stack([self.vocabularies[c].encode(raw.sparse[c]) for c in self.schema.sparse], axis=1) \
            if self.schema.sparse else np.zeros((n, 0), dtype=np.int64)
        dense = np.zeros((n, len(self.schema.dense)), dtype=np.float32)
        if self.schema.dense:
            dense = self.encode_dense(self._dense_raw(raw))
        multi = [self._encode_multi(raw, f.name, f.max_len) for f in self.schema.multivalued]
        multi_array = np.concatenate(multi, axis=1) if multi else np.zeros((n, 0), dtype=np.int64)
        return EncodedColumns(raw.labels.astype(np.float32), sparse.astype(np.int64), dense, multi_array)

    def oov_rate(self, encoded: EncodedColumns) -> float:
        """Share of categorical values (not missing) that fell into the OOV bucket."""
        ids = np.concatenate([encoded.sparse.reshape(-1), encoded.multi.reshape(-1)])
        present = ids != MISSING_ID
        return float((ids[present] == OOV_ID).mean()) if present.any() else 0.0

    def to_dict(self) -> dict:
        return {
            "schema": self.schema.to_dict(),
            "min_count": self.min_count,
            "vocabularies": {k: v.to_dict() for k, v in self.vocabularies.items()},
            "dense_mean": self.dense_mean.tolist(),
            "dense_std": self.dense_std.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> FeatureEncoder:
        encoder = cls(Schema.from_dict(data["schema"]), data["min_count"])
        encoder.vocabularies = {k: FieldVocabulary.from_dict(v) for k, v in data["vocabularies"].items()}
        encoder.dense_mean = np.asarray(data["dense_mean"], dtype=np.float64)
        encoder.dense_std = np.asarray(data["dense_std"], dtype=np.float64)
        return encoder

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> FeatureEncoder:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def _check_schema(self, raw: RawColumns) -> None:
        if raw.schema.embedded_fields != self.schema.embedded_fields or raw.schema.dense != self.schema.dense:
            raise DataFormatError(
                f"rows have fields {list(raw.schema.embedded_fields) + list(raw.schema.dense)}, the encoder "
                f"was fitted on {list(self.schema.embedded_fields) + list(self.schema.dense)}", source=raw.source)

    def _dense_raw(self, raw: RawColumns) -> np.ndarray:
        return np.stack([np.asarray(raw.dense[name], dtype=np.float64) for name in self.schema.dense], axis=1)

    def _logged(self, values: np.ndarray) -> np.ndarray:
        """(N, F_dense) float64 with ``log1p(max(x, 0))`` on the ``log_dense`` fields; NaN = missing stays."""
        values = np.array(values, dtype=np.float64)
        for j, name in enumerate(self.schema.dense):
            if name in self.schema.log_dense:
                values[:, j] = np.log1p(np.maximum(values[:, j], 0.0))
        return values

    def _encode_multi(self, raw: RawColumns, name: str, max_len: int) -> np.ndarray:
        rows = raw.multivalued[name]
        out = np.zeros((len(rows), max_len), dtype=np.int64)
        lengths = np.array([min(len(r), max_len) for r in rows], dtype=np.int64)
        flat = np.array([t for r in rows for t in r[:max_len]], dtype=object)
        if len(flat):
            ids = self.vocabularies[name].encode(flat)
            row_index = np.repeat(np.arange(len(rows)), lengths)
            col_index = np.concatenate([np.arange(k) for k in lengths])
            # A known or OOV category must never read as padding: OOV keeps id 1, padding stays 0.
            out[row_index, col_index] = np.where(ids == MISSING_ID, OOV_ID, ids)
        return out

"""Synthetic CTR data with planted instance-wise heterogeneity: known ground truth for iHAS.

Why our own generator: real CTR sets (Criteo, Avazu) cannot ship with the repository, say nothing
about which sample needs which embedding dimensions, and are too small/too fixed for 1M-10M+ row
speed and memory benchmarks. This module makes a Criteo-like table (Zipf-distributed categories,
non-negative count features with missing values) whose click logit depends on *different fields for
different samples*:

* **segment 0 ("rich")**: the logit is a rank-``r`` interaction ``u_A[a] . v_B[b]`` between two
  high-cardinality fields A and B plus per-category main effects. Fitting it takes many embedding
  dimensions on A and B.
* **segment 1 ("coarse")**: the logit depends only on field C through a handful of bins
  (``c mod coarse_bins``): one or two dimensions on C suffice; A and B carry no information.
* all other sparse fields are pure noise; dense field ``I1`` has a mild effect in every segment.

The segment of each row is fully identifiable from one small sparse field (the *segment field*,
value ``v`` belongs to segment ``v mod num_segments``), so an instance-wise model can route on it.
With more than two segments, even segments are rich and odd segments coarse, each with its own
hidden parameters. Per-segment intercepts are calibrated so that every segment's CTR is
``base_ctr``: the segment alone predicts nothing, only its interaction with the other fields does.

Everything is pure numpy and deterministic. The hidden parameters ("the world") come from the
generator's ``seed`` only; rows come from ``(world seed, data seed, block index)`` over fixed internal
blocks of :data:`BLOCK_ROWS` rows, so the streamed rows do not depend on ``chunk_rows`` and the first
``n`` rows of a larger request equal a request for ``n`` rows. See docs/design.md#8-synthetic-data-and-the-demo.

Example:
    >>> gen = SyntheticCTR(SyntheticConfig(), seed=0)
    >>> for chunk in gen.chunks(2_000_000, chunk_rows=500_000):
    ...     chunk.sparse.shape     # (500000, 8) int64 ids
    >>> gen.write_csv("train.csv", 100_000)   # read back with --format csv and gen.schema
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ihas_lightning.data.schema import RawColumns, Schema
from ihas_lightning.data.synthetic_config import SyntheticChunk, SyntheticConfig
from ihas_lightning.data.zipf import InverseCDF, sample_ranks, zipf_cdf

__all__ = ["BLOCK_ROWS", "SyntheticCTR"]

BLOCK_ROWS = 65_536
"""Rows per internal block; each block has its own RNG stream, which makes output chunking-invariant."""

_TAG_WORLD = 0x5EED_0001      # separate the RNG streams of the world, the calibration sample and rows
_TAG_CALIB = 0x5EED_0002
_TAG_ROWS = 0x5EED_0003
_CALIB_BLOCKS = 4             # 262k rows to calibrate the intercepts (CTR error well below 0.01)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))   # overflow-free


class SyntheticCTR:
    """A synthetic CTR world: fixed hidden parameters (from ``seed``) that rows are drawn from.

    Args:
        config: shape and strength of the world.
        seed: world seed; two generators with the same config and seed produce the same rows for the
            same data seed.
    """

    def __init__(self, config: SyntheticConfig | None = None, seed: int = 0) -> None:
        if seed < 0:
            raise ValueError(f"SyntheticCTR: seed must be >= 0, got {seed}")
        self.config = cfg = config if config is not None else SyntheticConfig()
        self.seed = int(seed)
        F, M = cfg.num_sparse, cfg.num_dense
        self._vocab = np.asarray(cfg.vocab_sizes, dtype=np.int64)
        self._a, self._b = (i % F for i in cfg.rich_fields)
        self._c = cfg.coarse_field % F
        self._s = cfg.segment_field % F
        S = cfg.num_segments
        self._sparse_names = tuple(f"C{i + 1}" for i in range(F))
        self._dense_names = tuple(f"I{j + 1}" for j in range(M))
        self._schema = Schema(label="label", sparse=self._sparse_names, dense=self._dense_names,
                              log_dense=self._dense_names)

        rng = np.random.default_rng([self.seed, _TAG_WORLD])
        # Frequency rank -> id, per field, so that the most frequent id is not 0.
        self._rank_to_id = [rng.permutation(int(v)) for v in self._vocab]
        self._cdfs = [zipf_cdf(int(v), cfg.zipf_exponent) for v in self._vocab]
        # Segment field: value v belongs to segment v % S; within a segment, values are Zipf-distributed.
        seg_vocab = int(self._vocab[self._s])
        self._seg_values = [rng.permutation(np.arange(s, seg_vocab, S)) for s in range(S)]
        self._samplers = [InverseCDF(cdf, ids) for cdf, ids in zip(self._cdfs, self._rank_to_id)]
        self._seg_samplers = [InverseCDF(zipf_cdf(len(v), cfg.zipf_exponent), v) for v in self._seg_values]
        probs = np.full(S, 1.0 / S) if cfg.segment_probs is None else np.asarray(cfg.segment_probs)
        self._seg_cdf = np.cumsum(probs)
        self._seg_cdf[-1] = 1.0
        # Dense counts: floor(Exponential(scale_j)) with scales 2, 8, 32, ... (wide spread like Criteo).
        self._dense_scales = (2.0 * 4.0 ** np.arange(M)).astype(np.float32)

        # Hidden effects. Entries of u, v ~ N(0, r^-1/2) make u.v have unit variance.
        r, g = cfg.interaction_rank, cfg.signal_strength
        va, vb, vc = int(self._vocab[self._a]), int(self._vocab[self._b]), int(self._vocab[self._c])
        self._rich_segments = [s for s in range(S) if s % 2 == 0]
        self._coarse_segments = [s for s in range(S) if s % 2 == 1]
        self._u: dict[int, np.ndarray] = {}          # segment -> (V_A, r)
        self._v: dict[int, np.ndarray] = {}          # segment -> (V_B, r)
        self._main_a: dict[int, np.ndarray] = {}     # segment -> (V_A,)
        self._main_b: dict[int, np.ndarray] = {}     # segment -> (V_B,)
        self._coarse: dict[int, np.ndarray] = {}     # segment -> (V_C,) effect per category
        for s in range(S):
            if s % 2 == 0:
                self._u[s] = rng.normal(0.0, r ** -0.25, (va, r)) * np.sqrt(g * cfg.interaction_scale)
                self._v[s] = rng.normal(0.0, r ** -0.25, (vb, r)) * np.sqrt(g * cfg.interaction_scale)
                self._main_a[s] = rng.normal(0.0, g * cfg.main_effect_scale, va)
                self._main_b[s] = rng.normal(0.0, g * cfg.main_effect_scale, vb)
            else:
                bins = np.linspace(-1.0, 1.0, cfg.coarse_bins) if cfg.coarse_bins > 1 else np.zeros(1)
                bin_effect = rng.permutation(bins) * g * cfg.coarse_scale
                self._coarse[s] = bin_effect[np.arange(vc) % cfg.coarse_bins]
        self._dense_coef = g * cfg.dense_scale if M > 0 else 0.0

        # Per-segment intercepts so that each segment's expected CTR is base_ctr.
        self._intercepts = np.zeros(S)
        calib = [self._features(np.random.default_rng([self.seed, _TAG_CALIB, i]), BLOCK_ROWS)
                 for i in range(_CALIB_BLOCKS)]
        sparse = np.concatenate([c[0] for c in calib])
        dense = np.concatenate([c[1] for c in calib])
        segments = np.concatenate([c[3] for c in calib])
        z = self._logits(sparse, dense, segments)
        for s in range(S):
            self._intercepts[s] = self._solve_intercept(z[segments == s], cfg.base_ctr)

    # ----------------------------------------------------------------- description

    @property
    def schema(self) -> Schema:
        """Columns ``label``, ``I1..Im`` (counts, ``log_dense``), ``C1..Cn``."""
        return self._schema

    @property
    def vocab_sizes(self) -> dict[str, int]:
        """Categories per sparse field; generated ids lie in ``[0, vocab)``."""
        return {n: int(v) for n, v in zip(self._sparse_names, self._vocab)}

    @property
    def segment_field(self) -> str:
        """The sparse field whose value ``v`` reveals the segment ``v % num_segments``."""
        return self._sparse_names[self._s]

    def segment_of(self, segment_field_ids: np.ndarray) -> np.ndarray:
        """Segment of each row from its segment-field id (the routing rule a model may learn)."""
        return np.asarray(segment_field_ids, dtype=np.int64) % self.config.num_segments

    @property
    def planted(self) -> dict[str, Any]:
        """The ground truth: which fields each segment's logit depends on, and how.

        ``segments`` maps segment index to ``{"kind", "fields", "needs"}``; ``needs`` is the rough number
        of embedding dimensions per field that the true logit calls for.
        """
        cfg, names = self.config, self._sparse_names
        a, b, c = names[self._a], names[self._b], names[self._c]
        segments: dict[int, dict[str, Any]] = {}
        for s in range(cfg.num_segments):
            if s % 2 == 0:
                segments[s] = {"kind": "rich", "fields": [a, b],
                               "needs": {a: cfg.interaction_rank + 1, b: cfg.interaction_rank + 1},
                               "intercept": float(self._intercepts[s])}
            else:
                segments[s] = {"kind": "coarse", "fields": [c],
                               "needs": {c: 1 if cfg.coarse_bins <= 2 else 2},
                               "intercept": float(self._intercepts[s])}
        noise = [n for i, n in enumerate(names) if i not in (self._a, self._b, self._c, self._s)]
        return {
            "segment_field": self.segment_field,
            "segment_rule": f"segment = id({self.segment_field}) % {cfg.num_segments}",
            "rich_fields": [a, b],
            "coarse_field": c,
            "noise_fields": noise,
            "dense_effect": {self._dense_names[0]: float(self._dense_coef)} if self._dense_names else {},
            "segments": segments,
            "base_ctr": cfg.base_ctr,
        }

    # ----------------------------------------------------------------- generation

    def chunks(self, num_rows: int, *, chunk_rows: int = 1_000_000, seed: int = 0
               ) -> Iterator[SyntheticChunk]:
        """Stream ``num_rows`` rows in chunks of ``chunk_rows`` (the last may be shorter).

        Rows are drawn in fixed blocks of :data:`BLOCK_ROWS`, each from its own RNG
        ``(world seed, seed, block index)``: the concatenation does not depend on ``chunk_rows``, and
        memory stays at about one chunk.
        """
        if num_rows < 0:
            raise ValueError(f"chunks: num_rows must be >= 0, got {num_rows}")
        if chunk_rows < 1:
            raise ValueError(f"chunks: chunk_rows must be >= 1, got {chunk_rows}")
        if seed < 0:
            raise ValueError(f"chunks: seed must be >= 0, got {seed}")
        pending: list[SyntheticChunk] = []
        pending_rows = 0
        produced = 0          # rows generated so far (blocks, truncated at num_rows)
        block = 0
        while produced < num_rows or pending_rows > 0:
            # Fill until a full chunk is buffered or the table is exhausted.
            while pending_rows < chunk_rows and produced < num_rows:
                take = min(BLOCK_ROWS, num_rows - produced)
                b = self._block(seed, block)
                if take < BLOCK_ROWS:
                    b = _slice(b, 0, take)
                pending.append(b)
                pending_rows += take
                produced += take
                block += 1
            out = SyntheticChunk.concat(pending)
            n_out = min(chunk_rows, pending_rows)
            yield _slice(out, 0, n_out) if n_out < len(out) else out
            rest = _slice(out, n_out, len(out)) if n_out < len(out) else None
            pending = [rest] if rest is not None else []
            pending_rows -= n_out

    def generate(self, num_rows: int, *, seed: int = 0) -> SyntheticChunk:
        """All ``num_rows`` rows as one chunk (for small tables and tests)."""
        if num_rows == 0:
            return _empty_chunk(self.config.num_sparse, self.config.num_dense)
        return SyntheticChunk.concat(list(self.chunks(num_rows, chunk_rows=max(num_rows, 1), seed=seed)))

    def raw_with_segments(self, num_rows: int, *, seed: int = 0) -> tuple[RawColumns, np.ndarray]:
        """:meth:`raw` and the (n,) int64 planted segment of each row."""
        chunk = self.generate(num_rows, seed=seed)
        sparse = {name: self.tokens(f)[chunk.sparse[:, f]] for f, name in enumerate(self._sparse_names)}
        dense = {}
        for j, name in enumerate(self._dense_names):
            col = chunk.dense[:, j].astype(np.float64)
            col[chunk.dense_missing[:, j]] = np.nan
            dense[name] = col
        raw = RawColumns(schema=self._schema, labels=chunk.labels.copy(), sparse=sparse, dense=dense,
                         source=f"<synthetic seed={self.seed} data_seed={seed}>")
        return raw, chunk.segments

    def raw(self, num_rows: int, *, seed: int = 0) -> RawColumns:
        """Rows as a reader would return them: category tokens (8 hex digits, like Criteo) as strings,
        dense counts as float64 with NaN for missing. The same rows as :meth:`chunks` with ``seed``.
        """
        return self.raw_with_segments(num_rows, seed=seed)[0]

    def write_csv(self, path: str | Path, num_rows: int, *, seed: int = 0, chunk_rows: int = 1_000_000,
                  delimiter: str = ",") -> Path:
        """Write ``num_rows`` rows to a CSV with a header ``label,I1..Im,C1..Cn`` (streamed by chunk).

        Missing dense cells are empty; categories are the same tokens as :meth:`raw`. Read it back with
        ``--format csv`` and :attr:`schema`.
        """
        import pyarrow as pa
        import pyarrow.csv as pacsv

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        names = ["label", *self._dense_names, *self._sparse_names]
        fields = [pa.field("label", pa.int8())] + [pa.field(n, pa.int64()) for n in self._dense_names] + [
            pa.field(n, pa.string()) for n in self._sparse_names]
        arrow_schema = pa.schema(fields)
        dictionaries = [pa.array(self.tokens(f).tolist(), pa.string()) for f in range(len(self._vocab))]
        # Header written by hand: pyarrow quotes header names even with quoting_style="none".
        options = pacsv.WriteOptions(include_header=False, delimiter=delimiter, quoting_style="none")
        with open(path, "wb") as sink, pacsv.CSVWriter(sink, arrow_schema, write_options=options) as writer:
            sink.write((delimiter.join(names) + "\n").encode())
            for chunk in self.chunks(num_rows, chunk_rows=chunk_rows, seed=seed):
                cols = [pa.array(chunk.labels.astype(np.int8))]
                for j in range(len(self._dense_names)):
                    cols.append(pa.array(chunk.dense[:, j].astype(np.int64), mask=chunk.dense_missing[:, j]))
                for f in range(len(self._vocab)):
                    cols.append(pa.DictionaryArray.from_arrays(
                        pa.array(chunk.sparse[:, f].astype(np.int32)), dictionaries[f]).cast(pa.string()))
                writer.write_table(pa.Table.from_arrays(cols, names=names))
        return path

    # ----------------------------------------------------------------- internals

    def tokens(self, f: int) -> np.ndarray:
        """(V_f,) object array of 8-hex-digit tokens; a bijection of the id, salted per field."""
        cache = self.__dict__.setdefault("_token_cache", {})
        if f not in cache:
            ids = np.arange(int(self._vocab[f]), dtype=np.uint64)
            salt = np.uint64((0x9E3779B1 * (f + 1) + self.seed) & 0xFFFFFFFF)
            hashed = ((ids * np.uint64(2654435761)) & np.uint64(0xFFFFFFFF)) ^ salt  # odd multiplier: bijective
            cache[f] = np.array([f"{int(h):08x}" for h in hashed], dtype=object)
        return cache[f]

    def _features(self, rng: np.random.Generator, n: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Draw features of ``n`` rows: sparse (n, F) int64, dense (n, M) float32, missing (n, M) bool,
        segments (n,) int64. The order of draws is fixed: it defines the data for a given RNG."""
        F, M = len(self._vocab), len(self._dense_names)
        u = rng.random((F, n), dtype=np.float32)                     # (F, n) one uniform per cell
        sparse_t = np.empty((F, n), dtype=np.int64)                  # (F, n), transposed at the end
        for f in range(F):
            if f != self._s:
                sparse_t[f] = self._samplers[f](u[f])
        segments = sample_ranks(self._seg_cdf, rng.random(n, dtype=np.float32)).astype(np.int64)   # (n,)
        for s, sampler in enumerate(self._seg_samplers):
            rows = np.flatnonzero(segments == s)
            sparse_t[self._s, rows] = sampler(u[self._s, rows])
        sparse = np.ascontiguousarray(sparse_t.T)                    # (n, F)
        dense = rng.standard_exponential((n, M), dtype=np.float32)                           # (n, M)
        dense *= self._dense_scales
        np.floor(dense, out=dense)                                   # counts: floor(Exp(scale_j))
        missing = rng.random((n, M), dtype=np.float32) < self.config.dense_missing_rate      # (n, M)
        dense[missing] = 0.0
        return sparse, dense, missing, segments

    def _logits(self, sparse: np.ndarray, dense: np.ndarray, segments: np.ndarray) -> np.ndarray:
        """True logit without intercepts, (n,) float64."""
        z = np.zeros(len(segments))
        a, b, c = sparse[:, self._a], sparse[:, self._b], sparse[:, self._c]
        for s in self._rich_segments:
            rows = np.flatnonzero(segments == s)
            ar, br = a[rows], b[rows]
            z[rows] = (np.einsum("nr,nr->n", self._u[s][ar], self._v[s][br])
                       + self._main_a[s][ar] + self._main_b[s][br])
        for s in self._coarse_segments:
            rows = np.flatnonzero(segments == s)
            z[rows] = self._coarse[s][c[rows]]
        if dense.shape[1] > 0 and self._dense_coef:
            z += self._dense_coef * np.log1p(dense[:, 0])
        return z

    @staticmethod
    def _solve_intercept(z: np.ndarray, target: float) -> float:
        """``b`` with ``mean(sigmoid(z + b)) = target`` (bisection: the mean is increasing in ``b``)."""
        if len(z) == 0:
            return float(np.log(target / (1 - target)))
        lo, hi = -30.0, 30.0
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if _sigmoid(z + mid).mean() < target:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    def _block(self, seed: int, index: int) -> SyntheticChunk:
        """Block ``index`` of data seed ``seed``: always BLOCK_ROWS rows from its own RNG stream."""
        rng = np.random.default_rng([self.seed, seed, index, _TAG_ROWS])
        sparse, dense, missing, segments = self._features(rng, BLOCK_ROWS)
        z = self._logits(sparse, dense, segments) + self._intercepts[segments]
        labels = (rng.random(BLOCK_ROWS) < _sigmoid(z)).astype(np.float32)
        return SyntheticChunk(labels=labels, sparse=sparse, dense=dense, segments=segments,
                              logits=z.astype(np.float32), dense_missing=missing)


def _slice(chunk: SyntheticChunk, start: int, stop: int) -> SyntheticChunk:
    return SyntheticChunk(labels=chunk.labels[start:stop], sparse=chunk.sparse[start:stop],
                          dense=chunk.dense[start:stop], segments=chunk.segments[start:stop],
                          logits=chunk.logits[start:stop], dense_missing=chunk.dense_missing[start:stop])


def _empty_chunk(F: int, M: int) -> SyntheticChunk:
    return SyntheticChunk(labels=np.zeros(0, np.float32), sparse=np.zeros((0, F), np.int64),
                          dense=np.zeros((0, M), np.float32), segments=np.zeros(0, np.int64),
                          logits=np.zeros(0, np.float32), dense_missing=np.zeros((0, M), bool))

"""Configuration and output of the synthetic CTR generator (``ihas_lightning.data.synthetic``)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["SyntheticConfig", "SyntheticChunk"]

_DEFAULT_VOCAB_8 = (1000, 500, 200, 100, 50, 20, 10, 5)


def _default_vocab(num_sparse: int) -> tuple[int, ...]:
    """Criteo-like spread: a few big fields down to tiny ones (geometric from 1000 to 5)."""
    if num_sparse == len(_DEFAULT_VOCAB_8):
        return _DEFAULT_VOCAB_8
    if num_sparse == 1:
        return (1000,)
    return tuple(int(round(v)) for v in np.geomspace(1000, 5, num_sparse))


@dataclass(frozen=True)
class SyntheticConfig:
    """Shape and strength of the synthetic world.

    Args:
        num_sparse: number of categorical fields ``C1..Cn`` (at least 4: A, B, C and the segment field).
        num_dense: number of count fields ``I1..Im`` (0 allowed).
        vocab_sizes: categories per sparse field, length ``num_sparse``; ``None`` picks a Criteo-like
            spread, ``(1000, 500, 200, 100, 50, 20, 10, 5)`` for 8 fields.
        zipf_exponent: ``s`` in ``P(rank k) ~ 1/k^s``; 0 gives uniform categories.
        base_ctr: click rate of every segment (and so overall), reached by calibrated intercepts.
        num_segments: hidden row groups; even segments are "rich", odd ones "coarse".
        segment_probs: share of rows per segment; ``None`` means equal shares.
        rich_fields: indices of fields A and B (default the two largest, C1 and C2).
        coarse_field: index of field C (default C3).
        segment_field: index of the field that reveals the segment (default -1, the last field).
        interaction_rank: rank ``r`` of the hidden A x B interaction.
        interaction_scale: standard deviation of ``u_A[a] . v_B[b]`` (before ``signal_strength``).
        main_effect_scale: standard deviation of the per-category main effects of A and B.
        coarse_bins: number of bins of C in coarse segments (``bin = id mod coarse_bins``).
        coarse_scale: the coarse bin effects lie evenly in ``[-coarse_scale, coarse_scale]``.
        dense_scale: effect of ``log1p(I1)`` on the logit in every segment (mild on purpose).
        dense_missing_rate: share of dense cells that are missing (NaN in raw tables, 0 in chunks).
        signal_strength: multiplies every effect; 0 gives labels independent of all features.
    """

    num_sparse: int = 8
    num_dense: int = 4
    vocab_sizes: tuple[int, ...] | None = None
    zipf_exponent: float = 1.1
    base_ctr: float = 0.2
    num_segments: int = 2
    segment_probs: tuple[float, ...] | None = None
    rich_fields: tuple[int, int] = (0, 1)
    coarse_field: int = 2
    segment_field: int = -1
    interaction_rank: int = 8
    interaction_scale: float = 1.2
    main_effect_scale: float = 0.5
    coarse_bins: int = 2
    coarse_scale: float = 1.5
    dense_scale: float = 0.2
    dense_missing_rate: float = 0.1
    signal_strength: float = 1.0

    def __post_init__(self) -> None:
        if self.num_sparse < 4:
            raise ValueError(f"SyntheticConfig: num_sparse must be >= 4 (fields A, B, C and the segment "
                             f"field), got {self.num_sparse}")
        if self.num_dense < 0:
            raise ValueError(f"SyntheticConfig: num_dense must be >= 0, got {self.num_dense}")
        vocab = _default_vocab(self.num_sparse) if self.vocab_sizes is None else tuple(
            int(v) for v in self.vocab_sizes)
        if len(vocab) != self.num_sparse:
            raise ValueError(f"SyntheticConfig: vocab_sizes has {len(vocab)} entries but num_sparse is "
                             f"{self.num_sparse}; give one vocabulary size per sparse field")
        if min(vocab) < 2:
            raise ValueError(f"SyntheticConfig: every vocabulary size must be >= 2, got {vocab}")
        object.__setattr__(self, "vocab_sizes", vocab)
        object.__setattr__(self, "rich_fields", tuple(int(i) for i in self.rich_fields))
        if len(self.rich_fields) != 2:
            raise ValueError(f"SyntheticConfig: rich_fields must name two fields, got {self.rich_fields}")
        indices = {"rich_fields[0]": self.rich_fields[0], "rich_fields[1]": self.rich_fields[1],
                   "coarse_field": self.coarse_field, "segment_field": self.segment_field}
        for name, i in indices.items():
            if not -self.num_sparse <= i < self.num_sparse:
                raise ValueError(f"SyntheticConfig: {name}={i} is out of range for {self.num_sparse} "
                                 f"sparse fields")
        resolved = [i % self.num_sparse for i in indices.values()]
        if len(set(resolved)) != 4:
            raise ValueError(f"SyntheticConfig: rich_fields, coarse_field and segment_field must be four "
                             f"different fields, got {indices}")
        if not 0.0 < self.base_ctr < 1.0:
            raise ValueError(f"SyntheticConfig: base_ctr must be in (0, 1), got {self.base_ctr}")
        if self.zipf_exponent < 0:
            raise ValueError(f"SyntheticConfig: zipf_exponent must be >= 0, got {self.zipf_exponent}")
        if self.num_segments < 1:
            raise ValueError(f"SyntheticConfig: num_segments must be >= 1, got {self.num_segments}")
        seg_vocab = vocab[self.segment_field % self.num_sparse]
        if seg_vocab < self.num_segments:
            raise ValueError(f"SyntheticConfig: the segment field has {seg_vocab} categories, fewer than "
                             f"num_segments={self.num_segments}")
        if self.segment_probs is not None:
            probs = tuple(float(p) for p in self.segment_probs)
            if len(probs) != self.num_segments or min(probs) < 0 or not np.isclose(sum(probs), 1.0):
                raise ValueError(f"SyntheticConfig: segment_probs must be {self.num_segments} non-negative "
                                 f"numbers summing to 1, got {self.segment_probs}")
            object.__setattr__(self, "segment_probs", probs)
        if self.interaction_rank < 1:
            raise ValueError(f"SyntheticConfig: interaction_rank must be >= 1, got {self.interaction_rank}")
        coarse_vocab = vocab[self.coarse_field % self.num_sparse]
        if not 1 <= self.coarse_bins <= coarse_vocab:
            raise ValueError(f"SyntheticConfig: coarse_bins must be in [1, {coarse_vocab}] (the coarse "
                             f"field's vocabulary), got {self.coarse_bins}")
        if not 0.0 <= self.dense_missing_rate < 1.0:
            raise ValueError(f"SyntheticConfig: dense_missing_rate must be in [0, 1), got "
                             f"{self.dense_missing_rate}")
        for name in ("interaction_scale", "main_effect_scale", "coarse_scale", "dense_scale",
                     "signal_strength"):
            if getattr(self, name) < 0:
                raise ValueError(f"SyntheticConfig: {name} must be >= 0, got {getattr(self, name)}")


@dataclass
class SyntheticChunk:
    """A block of generated rows, already encoded (ids and floats), ready for tensors.

    ``dense`` holds the raw counts (the values a CSV holds) with missing cells set to 0; the schema
    marks them ``log_dense``, so apply ``log1p`` the way the encoder does when feeding a model directly.
    """

    labels: np.ndarray         # (n,) float32 in {0, 1}
    sparse: np.ndarray         # (n, F) int64, column f in [0, vocab_sizes[f])
    dense: np.ndarray          # (n, M) float32 counts, missing -> 0
    segments: np.ndarray       # (n,) int64 planted segment of each row
    logits: np.ndarray         # (n,) float32 true click logit (labels ~ Bernoulli(sigmoid(logits)))
    dense_missing: np.ndarray  # (n, M) bool, True where the raw value is missing (NaN / empty in CSV)

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(chunks: list[SyntheticChunk]) -> SyntheticChunk:
        """One chunk from several (e.g. to collect a whole small table)."""
        if not chunks:
            raise ValueError("SyntheticChunk.concat: no chunks given")
        if len(chunks) == 1:
            return chunks[0]
        return SyntheticChunk(*(np.concatenate([getattr(c, name) for c in chunks])
                                for name in ("labels", "sparse", "dense", "segments", "logits",
                                             "dense_missing")))

"""Zipf-distributed category ids by exact inverse-CDF sampling (the frequency law of CTR categories)."""

from __future__ import annotations

import numpy as np

__all__ = ["InverseCDF", "sample_ranks", "zipf_cdf"]


def zipf_cdf(n: int, exponent: float) -> np.ndarray:
    """CDF over ranks 1..n of ``1/k^s``; the last entry is forced to exactly 1."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -exponent
    cdf = np.cumsum(weights)
    cdf /= cdf[-1]
    cdf[-1] = 1.0
    return cdf


def sample_ranks(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Inverse-CDF sampling: uniform ``u`` in [0, 1) -> rank index in [0, len(cdf))."""
    return np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)


class InverseCDF:
    """Exact inverse-CDF sampling of ids, about twice as fast as a plain ``searchsorted``.

    ``u`` in [0, 1) falls into one of ``2^16`` equal buckets. Where no CDF step lies inside a bucket,
    the answer is a table entry (already mapped through ``rank_to_id``); only the rows in the few
    buckets that hold a step (at most ``len(cdf)`` of them) need a binary search. The result equals
    ``rank_to_id[searchsorted(cdf, u, "right")]`` exactly.
    """

    BUCKETS = 1 << 16

    def __init__(self, cdf: np.ndarray, rank_to_id: np.ndarray) -> None:
        K = self.BUCKETS
        edges = np.arange(K + 1, dtype=np.float64) / K
        lo = sample_ranks(cdf, edges[:-1])                                   # rank at the bucket start
        hi = np.minimum(np.searchsorted(cdf, edges[1:], side="left"), len(cdf) - 1)  # just below its end
        self._cdf = cdf
        self._rank_to_id = rank_to_id
        self._table = rank_to_id[lo]                                          # (K,) id if unambiguous
        self._ambiguous = lo != hi                                            # (K,) bool

    def __call__(self, u: np.ndarray) -> np.ndarray:
        bucket = (u * self.BUCKETS).astype(np.intp)                           # exact for float32 u
        ids = self._table[bucket]
        rows = np.flatnonzero(self._ambiguous[bucket])
        if len(rows):
            ids[rows] = self._rank_to_id[sample_ranks(self._cdf, u[rows])]
        return ids

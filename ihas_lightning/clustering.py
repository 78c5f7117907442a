"""Clustering stage of iHAS: group samples by their deterministic gate masks, give each group dimensions.

After the search stage, every sample has a deterministic mask ``z = 1[p >= 0.5]`` of shape ``(F, D)``.
iHAS (Yu et al., CIKM 2023, arXiv 2309.07967) groups samples whose masks look alike, so that a handful of
retrained models (one per group, section 2.3 of DESIGN.md) can each use the field dimensions its members
asked for. This module does the grouping and the per-group dimensions, and nothing else:

* :class:`MiniBatchKMeans` is mini-batch k-means (Sculley 2010, "Web-scale k-means clustering", WWW:
  per-center learning rate ``1 / count``) with greedy k-means++ initialisation on a reservoir sample
  (Arthur & Vassilvitskii 2007, "k-means++: The Advantages of Careful Seeding", SODA). It is plain
  torch so it streams over data larger than memory and runs on the device of its inputs.
* :func:`assign_dims` turns each group's histogram of active-gate counts per field into a dimension,
  snapped *up* to a candidate set.
* :func:`cluster` runs the whole stage over streams of batches and returns a :class:`ClusterResult`
  that saves to JSON and routes new samples to the nearest centroid.

Choosing K: with ``ClusterConfig.k = None`` the K with the best mean silhouette (Rousseeuw 1987) on a
seeded subsample is taken. Choosing K by the *validation AUC of the retrained groups* needs the retraining
stage, so the pipeline does it (it calls :func:`cluster` once per K); it is not done here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ClusterConfig",
    "ClusterResult",
    "MiniBatchKMeans",
    "active_count_histogram",
    "adjusted_rand_index",
    "assign_dims",
    "cluster",
    "fit_dims_to_budget",
    "silhouette_score",
    "stored_param_share",
]

Stream = Union[Callable[[], Iterable[Tensor]], Iterable[Tensor], Tensor]
"""A re-iterable source of ``(n, d)`` batches: a callable returning a fresh iterator (preferred), a list,
a DataLoader, or one tensor (a single batch). One-shot iterators are refused: k-means needs several passes."""

_LLOYD_STEPS = 10  # refinement of each k-means++ seeding on the in-memory init sample
SILHOUETTE_SAMPLE = 2000  # pairwise distances of the subsample: 2000^2 float64 = 32 MB
_FORMAT_VERSION = 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class ClusterConfig:
    """Configuration of the clustering stage.

    Args:
        k: number of groups; ``None`` chooses it from ``k_candidates`` by silhouette.
        k_candidates: the K tried when ``k`` is None, strictly increasing, each >= 2.
        candidate_dims: the dimensions a group's field may get, strictly increasing. Values above the
            backbone's ``D`` are ignored and ``D`` itself is always allowed, so a field can keep full width.
        min_dim: a group's field never gets fewer dimensions than this (the prototype lost 0.015 AUC when
            the item-id field was dropped), unless ``allow_drop_field`` and the statistic is 0.
        allow_drop_field: a group may drop a field (dimension 0) when its typical member uses none of it.
        feature: what k-means runs on: the flattened binary masks (``"mask"``) or the masked embeddings
            ``e * z`` (``"masked_embedding"``), both of width ``F * D``.
        batch_size: mini-batch size of k-means; stream batches are re-cut to this size.
        iterations: number of mini-batch updates (passes over the stream repeat until this many).
        seed: seeds every random choice (reservoir samples, k-means++), so a run is reproducible.
        quantile: statistic of the members' active-gate counts that sets a group's field dimension;
            0.5 is the median. Higher values favour the members that use more dimensions.

    Example:
        >>> ClusterConfig(k=None, k_candidates=(2, 4), candidate_dims=(0, 4, 8, 16)).k_candidates
        (2, 4)
    """

    k: int | None = 4
    k_candidates: tuple[int, ...] = (2, 3, 4, 6, 8)
    candidate_dims: tuple[int, ...] = (0, 2, 4, 8, 16)
    min_dim: int = 2
    allow_drop_field: bool = False
    feature: Literal["mask", "masked_embedding"] = "mask"
    batch_size: int = 4096
    iterations: int = 100
    seed: int = 0
    quantile: float = 0.5

    def __post_init__(self) -> None:
        if self.k is not None and (not _is_int(self.k) or self.k < 1):
            raise ValueError(f"k must be an int >= 1 or None (choose automatically), got {self.k!r}")
        cands = tuple(self.k_candidates)
        if not cands or not all(_is_int(c) and c >= 2 for c in cands):
            raise ValueError(f"k_candidates must be a non-empty tuple of ints >= 2, got {self.k_candidates!r}")
        if any(a >= b for a, b in zip(cands, cands[1:])):
            raise ValueError(f"k_candidates must be strictly increasing, got {self.k_candidates!r}")
        object.__setattr__(self, "k_candidates", cands)
        dims = tuple(self.candidate_dims)
        if not dims or not all(_is_int(c) and c >= 0 for c in dims):
            raise ValueError(f"candidate_dims must be a non-empty tuple of ints >= 0, got {self.candidate_dims!r}")
        if any(a >= b for a, b in zip(dims, dims[1:])):
            raise ValueError(f"candidate_dims must be strictly increasing, got {self.candidate_dims!r}")
        object.__setattr__(self, "candidate_dims", dims)
        if not _is_int(self.min_dim) or self.min_dim < 0:
            raise ValueError(f"min_dim must be an int >= 0, got {self.min_dim!r}")
        if self.min_dim == 0 and not self.allow_drop_field:
            raise ValueError(
                f"min_dim={self.min_dim} lets a field lose all of its dimensions; "
                "set allow_drop_field=True to allow that, or min_dim >= 1"
            )
        if self.feature not in ("mask", "masked_embedding"):
            raise ValueError(f"feature must be 'mask' or 'masked_embedding', got {self.feature!r}")
        for name in ("batch_size", "iterations"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not (isinstance(self.quantile, (int, float)) and 0.0 <= self.quantile <= 1.0):
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile!r}")

    def dims_for(self, dim: int) -> tuple[int, ...]:
        """The candidate dimensions usable with a backbone of width ``dim``: those <= dim, plus dim."""
        if not _is_int(dim) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if self.min_dim > dim:
            raise ValueError(f"min_dim={self.min_dim} exceeds the embedding dimension {dim}")
        usable = [c for c in self.candidate_dims if c <= dim]
        if not usable:
            raise ValueError(f"candidate_dims {self.candidate_dims} has no value <= the embedding dimension {dim}")
        return tuple(sorted(set(usable) | {dim}))


# ----------------------------------------------------------------------------------------------------------
# streams


def _passes(stream: Stream, what: str) -> Callable[[], Iterator[Tensor]]:
    """A function that starts a fresh pass over ``stream``; refuses one-shot iterators up front."""
    if isinstance(stream, Tensor):
        return lambda: iter((stream,))
    if callable(stream):
        return lambda: iter(stream())  # type: ignore[operator]
    if isinstance(stream, Iterator):
        raise TypeError(
            f"{what} is a one-shot iterator ({type(stream).__name__}); k-means needs several passes: "
            "pass a callable returning a fresh iterator, or a list/DataLoader"
        )
    if isinstance(stream, Iterable):
        return lambda: iter(stream)
    raise TypeError(f"{what} must be a callable returning an iterator of tensors, got {type(stream).__name__}")


def _rows(x: Any, what: str, index: int, width: int | None) -> Tensor:
    """Batch ``index`` as a float ``(n, d)`` tensor; ``(n, F, D)`` masks/embeddings are flattened."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} batch {index}: expected a tensor, got {type(x).__name__}")
    if x.dim() == 3:
        x = x.flatten(1)  # (B, F, D) -> (B, F*D)
    if x.dim() != 2:
        raise ValueError(f"{what} batch {index}: expected shape (n, d) or (n, F, D), got {tuple(x.shape)}")
    if width is not None and x.shape[1] != width:
        raise ValueError(f"{what} batch {index}: has {x.shape[1]} columns, expected {width}")
    if not x.is_floating_point():
        x = x.float()
    return x


def _rechunk(batches: Iterator[Tensor], size: int, what: str, width: int | None) -> Iterator[Tensor]:
    """Re-cut a stream into batches of exactly ``size`` rows (the last may be shorter).

    Everything downstream (random keys, updates) then sees the same mini-batches however the caller
    batched the stream, so a fit is independent of the stream's batching.
    """
    buffer: list[Tensor] = []
    held = 0
    device = None
    for i, x in enumerate(batches):
        x = _rows(x, what, i, width)
        width = x.shape[1]
        device = x.device if device is None else device
        buffer.append(x.to(device))
        held += x.shape[0]
        while held >= size:
            cat = torch.cat(buffer) if len(buffer) > 1 else buffer[0]
            yield cat[:size]
            buffer, held = [cat[size:]], held - size
    if held:
        yield torch.cat(buffer)


def _reservoir(chunks: Iterable[Tensor], size: int, gen: torch.Generator) -> Tensor:
    """A uniform sample without replacement of ``size`` rows in one pass (random keys, keep the smallest)."""
    kept: Tensor | None = None  # (m, d)
    keys = torch.empty(0, dtype=torch.float64)
    for x in chunks:
        new_keys = torch.rand(x.shape[0], dtype=torch.float64, generator=gen)  # CPU: same on any device
        pool = x if kept is None else torch.cat([kept, x])
        all_keys = torch.cat([keys, new_keys])
        if all_keys.numel() > size:
            keys, idx = torch.topk(all_keys, size, largest=False, sorted=True)
            kept = pool[idx.to(pool.device)]
        else:
            kept, keys = pool, all_keys
    if kept is None:
        raise ValueError("the stream yielded no batches")
    return kept


# ----------------------------------------------------------------------------------------------------------
# distances


def _sq_dists(x: Tensor, c: Tensor) -> Tensor:
    """Squared Euclidean distances ``(n, K)`` by the matmul expansion: fast, for assignments."""
    d2 = (x * x).sum(1, keepdim=True) - 2.0 * (x @ c.T) + (c * c).sum(1)[None, :]
    return d2.clamp_min_(0.0)


def _exact_sq_dists(x: Tensor, c: Tensor) -> Tensor:
    """Squared distances ``(n, K)`` without cancellation: identical points are exactly 0 apart."""
    return torch.cdist(x, c, compute_mode="donot_use_mm_for_euclid_dist").square()


def _kmeans_pp(x: Tensor, k: int, gen: torch.Generator) -> Tensor:
    """Greedy k-means++ (Arthur & Vassilvitskii 2007, sec. 6; 2 + ln K local trials as in scikit-learn).

    When every point already coincides with a chosen center (K > distinct points) the remaining centers
    are drawn uniformly, i.e. duplicated; :class:`MiniBatchKMeans` copes with the resulting empty clusters.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=gen))
    centers = [x[first]]
    d2 = _exact_sq_dists(x, x[first : first + 1])[:, 0]  # (n,)
    for _ in range(1, k):
        weights = d2.double().cpu()
        if float(weights.sum()) <= 0.0:
            pick = int(torch.randint(n, (1,), generator=gen))
            centers.append(x[pick])
            continue
        cand = torch.multinomial(weights, trials, replacement=True, generator=gen)  # (t,)
        cand_d2 = torch.minimum(d2[None, :], _exact_sq_dists(x[cand.to(x.device)], x))  # (t, n)
        best = int(cand_d2.sum(1).argmin())
        centers.append(x[int(cand[best])])
        d2 = cand_d2[best]
    return torch.stack(centers)  # (K, d)


def silhouette_score(x: Tensor, labels: Tensor) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987) of ``x`` ``(n, d)`` under ``labels`` ``(n,)``.

    ``s(i) = (b - a) / max(a, b)`` with ``a`` the mean distance to the other members of i's cluster and
    ``b`` the smallest mean distance to another cluster; ``s = 0`` for singletons. NaN with fewer than two
    clusters present. Exact pairwise distances: meant for a subsample (see ``SILHOUETTE_SAMPLE``).
    """
    x = x.double()
    _, lab = torch.unique(labels, return_inverse=True)
    n_clusters = int(lab.max()) + 1 if lab.numel() else 0
    if n_clusters < 2 or n_clusters >= x.shape[0]:
        return float("nan")
    dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")  # (n, n)
    onehot = torch.nn.functional.one_hot(lab, n_clusters).double()  # (n, L)
    sums = dist @ onehot  # (n, L): distance from i to all members of each cluster
    sizes = onehot.sum(0)  # (L,)
    own = sizes[lab]  # (n,)
    a = sums.gather(1, lab[:, None])[:, 0] / (own - 1).clamp_min(1)
    mean_other = sums / sizes[None, :]
    mean_other.scatter_(1, lab[:, None], float("inf"))
    b = mean_other.min(1).values
    denom = torch.maximum(a, b)
    s = torch.where(denom > 0, (b - a) / denom.clamp_min(1e-300), torch.zeros_like(a))
    s = torch.where(own > 1, s, torch.zeros_like(s))
    return float(s.mean())


# ----------------------------------------------------------------------------------------------------------
# mini-batch k-means


class MiniBatchKMeans:
    """Mini-batch k-means over a stream (Sculley 2010), in torch, on the device of its inputs.

    Each mini-batch assigns its rows to the nearest center, then moves center ``c`` towards the mean of
    its ``n_c`` new members with rate ``n_c / count_c`` (``count_c`` = all rows it ever received): the
    per-center rate ``1 / count`` of Sculley's algorithm 1, vectorised, so a center is the running mean
    of its members and converges without a tuned learning rate.

    ``fit`` makes one pass to draw a seeded reservoir sample of ``init_size`` rows, seeds the centers by
    greedy k-means++ on it (best of ``n_init``, refined by Lloyd steps on the sample), then runs ``iterations`` mini-batch updates, passing over the stream as many
    times as needed. A center that received no row during a whole pass is re-seeded at the sample point
    farthest from its nearest center (if no point is farther than 0, e.g. K > distinct points, it stays:
    duplicated centers are harmless, ``predict`` picks the first).

    Args:
        k: number of centers.
        batch_size: rows per update; the stream is re-cut to it, so results do not depend on its batching.
        iterations: number of mini-batch updates in ``fit``.
        seed: seeds a CPU ``torch.Generator``; the same seed gives the same centers on CPU and GPU up to
            floating-point differences.
        init_size: rows of the k-means++ sample (default ``3 * batch_size``, as scikit-learn).
        n_init: k-means++ seedings tried on the sample; the one of lowest sample inertia is kept.

    Example:
        >>> x = torch.cat([torch.zeros(50, 2), torch.ones(50, 2)])
        >>> km = MiniBatchKMeans(2, batch_size=32, iterations=10).fit(lambda: iter(x.split(25)))
        >>> sorted(km.centroids[:, 0].tolist())
        [0.0, 1.0]
    """

    def __init__(
        self,
        k: int,
        *,
        batch_size: int = 4096,
        iterations: int = 100,
        seed: int = 0,
        init_size: int | None = None,
        n_init: int = 3,
    ) -> None:
        for name, value in (("k", k), ("batch_size", batch_size), ("iterations", iterations), ("n_init", n_init)):
            if not _is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if init_size is not None and (not _is_int(init_size) or init_size < 1):
            raise ValueError(f"init_size must be an int >= 1 or None, got {init_size!r}")
        self.k = k
        self.batch_size = batch_size
        self.iterations = iterations
        self.seed = seed
        self.init_size = init_size if init_size is not None else 3 * batch_size
        self.n_init = n_init
        self._gen = torch.Generator().manual_seed(seed)
        self._centroids: Tensor | None = None  # (K, d)
        self._counts: Tensor | None = None  # (K,) float64: rows each center has absorbed
        self.n_steps = 0
        self.n_reseeded = 0

    @property
    def centroids(self) -> Tensor:
        """``(K, d)`` centers."""
        if self._centroids is None:
            raise RuntimeError("MiniBatchKMeans is not fitted: call fit() or partial_fit() first")
        return self._centroids

    @property
    def counts(self) -> Tensor:
        """``(K,)`` number of rows each center has absorbed (0 after a re-seed)."""
        self.centroids  # noqa: B018 - raises when unfitted
        assert self._counts is not None
        return self._counts

    def _step(self, x: Tensor) -> Tensor:
        """One Sculley update on ``x`` ``(n, d)``; returns the assignments ``(n,)``."""
        c, counts = self.centroids, self.counts
        labels = _sq_dists(x, c).argmin(1)  # (n,)
        onehot = torch.nn.functional.one_hot(labels, self.k).to(x.dtype)  # (n, K); matmul: deterministic on GPU
        n_c = onehot.sum(0)  # (K,)
        sums = onehot.T @ x  # (K, d)
        counts += n_c.double()
        hit = n_c > 0
        eta = (n_c[hit].double() / counts[hit]).to(c.dtype)[:, None]  # per-center rate n_c / count_c
        c[hit] += eta * (sums[hit] / n_c[hit][:, None] - c[hit])
        self.n_steps += 1
        return labels

    def _init(self, sample: Tensor) -> None:
        """Best of ``n_init`` k-means++ seedings, each refined by Lloyd steps on the sample.

        One seeding can put two centers in one planted group and one center across two (seen on a 4-group
        toy); keeping the seeding of lowest sample inertia, as scikit-learn's ``n_init`` does, and refining
        it on the in-memory sample (Bradley & Fayyad 1998, "Refining Initial Points for K-Means
        Clustering") avoids most of that for the price of a few passes over ``init_size`` rows.
        """
        best, best_inertia = None, math.inf
        for _ in range(self.n_init):
            c = _kmeans_pp(sample, self.k, self._gen)  # (K, d)
            for _ in range(_LLOYD_STEPS):
                labels = _sq_dists(sample, c).argmin(1)  # (m,)
                onehot = torch.nn.functional.one_hot(labels, self.k).to(sample.dtype)  # (m, K)
                n_c = onehot.sum(0)  # (K,)
                means = (onehot.T @ sample) / n_c.clamp_min(1)[:, None]
                c = torch.where(n_c[:, None] > 0, means, c)  # an empty center stays where it is
            inertia = float(_sq_dists(sample, c).min(1).values.double().sum())
            if inertia < best_inertia:
                best, best_inertia = c, inertia
        assert best is not None
        self._centroids = best.clone()
        self._counts = torch.zeros(self.k, dtype=torch.float64, device=sample.device)

    def _reseed(self, empty: Tensor, sample: Tensor) -> None:
        """Move each empty center to the sample point farthest from its nearest center."""
        c = self.centroids
        nearest = _exact_sq_dists(sample, c).min(1).values  # (m,)
        for j in torch.nonzero(empty.cpu())[:, 0].tolist():
            far = int(nearest.argmax())
            if float(nearest[far]) <= 0.0:
                return  # every sample point is a center already (K > distinct points)
            c[j] = sample[far]
            self.counts[j] = 0.0
            self.n_reseeded += 1
            nearest = torch.minimum(nearest, _exact_sq_dists(sample, sample[far : far + 1])[:, 0])

    def fit(self, stream: Stream) -> MiniBatchKMeans:
        """Fit on a re-iterable stream of ``(n, d)`` batches; never holds more than a few batches."""
        passes = _passes(stream, "stream")
        self._gen = torch.Generator().manual_seed(self.seed)
        self.n_steps = self.n_reseeded = 0
        sample = _reservoir(_rechunk(passes(), self.batch_size, "stream", None), self.init_size, self._gen)
        self._init(sample)
        width = sample.shape[1]
        while self.n_steps < self.iterations:
            hits = torch.zeros(self.k, dtype=torch.long, device=sample.device)
            complete = True
            for x in _rechunk(passes(), self.batch_size, "stream", width):
                hits += torch.bincount(self._step(x.to(sample.device)), minlength=self.k)
                if self.n_steps >= self.iterations:
                    complete = False
                    break
            if complete and self.n_steps < self.iterations and bool((hits == 0).any()):
                self._reseed(hits == 0, sample)
        return self

    def partial_fit(self, x: Tensor) -> MiniBatchKMeans:
        """Update on one batch ``(n, d)`` (cut into ``batch_size`` pieces); initialises on it if unfitted.

        No re-seeding here: a pass over the data is what tells an empty cluster from an unlucky batch.
        """
        x = _rows(x, "partial_fit", 0, None if self._centroids is None else self._centroids.shape[1])
        if x.shape[0] == 0:
            return self
        if self._centroids is None:
            self._init(x[: self.init_size])
        for chunk in x.to(self.centroids.device).split(self.batch_size):
            self._step(chunk)
        return self

    def predict(self, x: Tensor) -> Tensor:
        """Index ``(n,)`` int64 of the nearest center for ``x`` ``(n, d)`` or ``(n, F, D)``."""
        x = _rows(x, "predict", 0, self.centroids.shape[1])
        return _nearest(x.to(self.centroids.device), self.centroids)

    def inertia(self, stream: Stream) -> float:
        """Sum over the stream of squared distances to the nearest center (lower is tighter)."""
        total = 0.0
        for i, x in enumerate(_passes(stream, "stream")()):
            x = _rows(x, "stream", i, self.centroids.shape[1]).to(self.centroids.device)
            total += float(_sq_dists(x, self.centroids).min(1).values.double().sum())
        return total

    def state_dict(self) -> dict[str, Any]:
        """Plain values and tensors: centers, counts, hyperparameters and the generator state."""
        return {
            "k": self.k,
            "batch_size": self.batch_size,
            "iterations": self.iterations,
            "seed": self.seed,
            "init_size": self.init_size,
            "n_init": self.n_init,
            "n_steps": self.n_steps,
            "centroids": self.centroids.detach().clone(),
            "counts": self.counts.detach().clone(),
            "generator_state": self._gen.get_state(),
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> MiniBatchKMeans:
        """Rebuild a fitted instance from :meth:`state_dict`; ``partial_fit`` continues identically."""
        km = cls(
            int(state["k"]),
            batch_size=int(state["batch_size"]),
            iterations=int(state["iterations"]),
            seed=int(state["seed"]),
            init_size=int(state["init_size"]),
            n_init=int(state.get("n_init", 3)),
        )
        centroids, counts = state["centroids"], state["counts"]
        if tuple(centroids.shape[:1]) != (km.k,) or tuple(counts.shape) != (km.k,):
            raise ValueError(f"state has centroids {tuple(centroids.shape)} and counts {tuple(counts.shape)}, k={km.k}")
        km._centroids = centroids.clone()
        km._counts = counts.double().clone()
        km.n_steps = int(state.get("n_steps", 0))
        if "generator_state" in state:
            km._gen.set_state(state["generator_state"])
        return km


def _nearest(x: Tensor, c: Tensor) -> Tensor:
    return _sq_dists(x.to(c.dtype), c).argmin(1)  # (n,) int64


# ----------------------------------------------------------------------------------------------------------
# per-group dimensions


def active_count_histogram(masks: Tensor, labels: Tensor, k: int) -> Tensor:
    """``(K, F, D+1)`` int64: ``h[c, f, j]`` = members of group c whose field f has exactly j open gates.

    Args:
        masks: ``(B, F, D)`` 0/1 deterministic masks.
        labels: ``(B,)`` group of each sample.
        k: number of groups.
    """
    b, f, d = masks.shape
    active = (masks > 0.5).sum(-1)  # (B, F) open gates per field
    flat = (labels.to(active.device)[:, None] * f + torch.arange(f, device=active.device)) * (d + 1) + active
    hist = torch.bincount(flat.reshape(-1), minlength=k * f * (d + 1))
    return hist.view(k, f, d + 1)


def assign_dims(
    count_hist: Tensor,
    candidate_dims: Sequence[int],
    *,
    min_dim: int = 2,
    allow_drop_field: bool = False,
    quantile: float = 0.5,
) -> Tensor:
    """Per-group, per-field dimensions ``(K, F)`` int64 from the members' active-gate counts.

    The statistic is the ``quantile`` of the members' counts (inverted-CDF definition, Hyndman & Fan 1996
    type 1: the ``ceil(q * n)``-th smallest; for q = 0.5 the median, the lower one for even n). It is
    snapped *up* to the nearest candidate so that the typical member keeps every dimension it used, and
    raised to ``min_dim`` first unless ``allow_drop_field`` and the statistic is 0 (then the field is
    dropped for the group: dimension 0, or the smallest candidate if 0 is not one). Snapping to
    candidates keeps the number of distinct table widths small (DESIGN.md 2.2).

    A group without members (possible when K exceeds the distinct samples) takes the statistic of all
    samples, so the router can still send a new sample there.

    Args:
        count_hist: ``(K, F, D+1)`` counts from :func:`active_count_histogram`, summed over the data.
        candidate_dims: allowed dimensions; values above ``D`` are ignored, ``D`` is always allowed.
        min_dim: floor of a kept field's dimension.
        allow_drop_field: permit dimension 0 when the statistic is 0.
        quantile: in [0, 1].
    """
    if count_hist.dim() != 3:
        raise ValueError(f"count_hist must have shape (K, F, D+1), got {tuple(count_hist.shape)}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
    dim = count_hist.shape[-1] - 1
    if not 0 <= min_dim <= dim:
        raise ValueError(f"min_dim={min_dim} must be in [0, {dim}] (the embedding dimension)")
    usable = sorted({int(c) for c in candidate_dims if 0 <= int(c) <= dim} | {dim})
    cands = torch.tensor(usable, dtype=torch.long, device=count_hist.device)
    hist = count_hist.long()
    n = hist.sum(-1)  # (K, F)
    if int(n.sum()) == 0:
        raise ValueError("count_hist is empty: no sample was counted")
    empty = n.sum(1) == 0  # (K,) groups without members
    hist = torch.where(empty[:, None, None], hist.sum(0, keepdim=True), hist)
    n = hist.sum(-1)
    rank = torch.ceil(quantile * n.double()).long().clamp_min(1)  # (K, F) 1-based rank of the statistic
    stat = (hist.cumsum(-1) < rank[..., None]).sum(-1)  # (K, F) smallest j with cdf(j) >= rank
    target = stat.clamp_min(min_dim)
    if allow_drop_field:
        target = torch.where(stat == 0, torch.zeros_like(stat), target)
    idx = torch.searchsorted(cands, target.contiguous())  # first candidate >= target; D is always there
    return cands[idx]


# ----------------------------------------------------------------------------------------------------------
# the stage


@dataclass(frozen=True, eq=False)
class ClusterResult:
    """What the clustering stage hands to retraining: centers, per-group dims, and how K was chosen.

    Attributes:
        centroids: ``(K, d)`` float centers in the space of ``feature``.
        dims: ``(K, F)`` int64 per-group, per-field embedding dimensions.
        group_sizes: ``(K,)`` int64 training samples in each group.
        k: number of groups.
        selection: how K was chosen (``method``; with silhouette: ``scores`` per candidate, sample size).
        feature: ``"mask"`` or ``"masked_embedding"``: what :meth:`predict` expects.
    """

    centroids: Tensor
    dims: Tensor
    group_sizes: Tensor
    k: int
    selection: dict[str, Any] = field(default_factory=dict)
    feature: str = "mask"

    def __post_init__(self) -> None:
        k = self.k
        if self.centroids.dim() != 2 or self.centroids.shape[0] != k:
            raise ValueError(f"centroids must have shape ({k}, d), got {tuple(self.centroids.shape)}")
        if self.dims.dim() != 2 or self.dims.shape[0] != k:
            raise ValueError(f"dims must have shape ({k}, F), got {tuple(self.dims.shape)}")
        if tuple(self.group_sizes.shape) != (k,):
            raise ValueError(f"group_sizes must have shape ({k},), got {tuple(self.group_sizes.shape)}")
        if self.feature not in ("mask", "masked_embedding"):
            raise ValueError(f"feature must be 'mask' or 'masked_embedding', got {self.feature!r}")

    def predict(self, features: Tensor) -> Tensor:
        """Group ``(n,)`` of each row of ``features`` ``(n, d)`` or ``(n, F, D)``: the nearest centroid."""
        x = _rows(features, "features", 0, self.centroids.shape[1])
        return _nearest(x.to(self.centroids.device), self.centroids)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe plain lists and numbers."""
        return {
            "format_version": _FORMAT_VERSION,
            "k": self.k,
            "feature": self.feature,
            "centroids": self.centroids.detach().float().cpu().tolist(),
            "dims": self.dims.long().cpu().tolist(),
            "group_sizes": self.group_sizes.long().cpu().tolist(),
            "selection": self.selection,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClusterResult:
        version = data.get("format_version", _FORMAT_VERSION)
        if version != _FORMAT_VERSION:
            raise ValueError(f"cluster result format_version {version} is not supported (expected {_FORMAT_VERSION})")
        return cls(
            centroids=torch.tensor(data["centroids"], dtype=torch.float32),
            dims=torch.tensor(data["dims"], dtype=torch.long),
            group_sizes=torch.tensor(data["group_sizes"], dtype=torch.long),
            k=int(data["k"]),
            selection=dict(data.get("selection", {})),
            feature=str(data.get("feature", "mask")),
        )

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ClusterResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _json_float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def cluster(
    feature_stream: Stream | None,
    mask_stream: Stream,
    num_fields: int,
    dim: int,
    config: ClusterConfig = ClusterConfig(),
    val_feature_stream: Stream | None = None,
) -> ClusterResult:
    """Group the training samples and give every group its per-field dimensions.

    Args:
        feature_stream: batches ``(B, F*D)`` (or ``(B, F, D)``) of what k-means runs on (``config.feature``);
            ``None`` with ``feature="mask"`` uses ``mask_stream`` itself.
        mask_stream: batches ``(B, F, D)`` of 0/1 deterministic masks, in the same order and sizes as
            ``feature_stream``.
        num_fields: F.
        dim: D, the backbone's embedding dimension.
        config: see :class:`ClusterConfig`.
        val_feature_stream: features of held-out samples; the silhouette subsample for choosing K is drawn
            from it (from the training stream if None). Only used when ``config.k`` is None.

    K is ``config.k``, or (``k=None``) the candidate with the highest mean silhouette on a seeded
    subsample of at most 2000 points; ties go to the smaller K. Selection by validation AUC of the
    retrained groups belongs to the pipeline, which calls this function once per K.
    """
    if not _is_int(num_fields) or num_fields < 1:
        raise ValueError(f"num_fields must be an int >= 1, got {num_fields!r}")
    candidate_dims = config.dims_for(dim)
    width = num_fields * dim
    feature_name = "feature_stream"
    if feature_stream is None:
        if config.feature != "mask":
            raise ValueError("feature_stream is required with feature='masked_embedding'")
        feature_stream, feature_name = mask_stream, "mask_stream"
    features = _passes(feature_stream, feature_name)
    masks = _passes(mask_stream, "mask_stream")

    def train_chunks() -> Iterator[Tensor]:
        for i, x in enumerate(features()):
            yield _rows(x, feature_name, i, width)

    def fit(k: int) -> MiniBatchKMeans:
        return MiniBatchKMeans(k, batch_size=config.batch_size, iterations=config.iterations, seed=config.seed).fit(
            train_chunks
        )

    if config.k is not None:
        km = fit(config.k)
        selection: dict[str, Any] = {"method": "fixed", "k": config.k}
    else:
        source = "validation" if val_feature_stream is not None else "training"
        eval_stream = _passes(val_feature_stream if val_feature_stream is not None else feature_stream, "features")
        sample = _reservoir(
            _rechunk(eval_stream(), config.batch_size, f"{source} features", width),
            SILHOUETTE_SAMPLE,
            torch.Generator().manual_seed(config.seed),
        )
        scores: dict[str, float | None] = {}
        fitted: dict[int, MiniBatchKMeans] = {}
        best_k, best_score = None, -math.inf
        for k in config.k_candidates:
            if k >= sample.shape[0]:
                scores[str(k)] = None  # silhouette needs K < n
                continue
            fitted[k] = fit(k)
            score = silhouette_score(sample, fitted[k].predict(sample))
            scores[str(k)] = _json_float(score)
            if math.isfinite(score) and score > best_score + 1e-12:  # strict: ties keep the smaller K
                best_k, best_score = k, score
        if best_k is None:
            raise ValueError(
                f"no K in {config.k_candidates} gives a silhouette on {sample.shape[0]} {source} samples "
                "(fewer than two clusters found); set ClusterConfig.k explicitly"
            )
        km = fitted[best_k]
        selection = {
            "method": "silhouette",
            "k": best_k,
            "scores": scores,
            "sample_size": int(sample.shape[0]),
            "source": source,
        }

    k = km.k
    device = km.centroids.device
    hist = torch.zeros(k, num_fields, dim + 1, dtype=torch.long, device=device)
    sentinel = object()
    feat_iter, mask_iter = features(), masks()
    i = 0
    while True:
        x, m = next(feat_iter, sentinel), next(mask_iter, sentinel)
        if x is sentinel and m is sentinel:
            break
        if x is sentinel or m is sentinel:
            raise ValueError(f"feature_stream and mask_stream have different numbers of batches (at batch {i})")
        x = _rows(x, feature_name, i, width)
        if not isinstance(m, Tensor) or m.dim() != 3 or tuple(m.shape[1:]) != (num_fields, dim):
            got = tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__
            raise ValueError(f"mask_stream batch {i}: expected shape (B, {num_fields}, {dim}), got {got}")
        if m.shape[0] != x.shape[0]:
            raise ValueError(f"batch {i}: {x.shape[0]} feature rows but {m.shape[0]} masks")
        if not bool(((m == 0) | (m == 1)).all()):
            raise ValueError(f"mask_stream batch {i}: masks must be 0/1 (deterministic gates)")
        hist += active_count_histogram(m.to(device), km.predict(x), k)
        i += 1
    group_sizes = hist[:, 0, :].sum(-1)  # (K,) every sample counts once per field
    dims = assign_dims(
        hist,
        candidate_dims,
        min_dim=config.min_dim,
        allow_drop_field=config.allow_drop_field,
        quantile=config.quantile,
    )
    return ClusterResult(
        centroids=km.centroids.detach().clone(),
        dims=dims,
        group_sizes=group_sizes,
        k=k,
        selection=selection,
        feature=config.feature,
    )


def adjusted_rand_index(a: Sequence[int] | np.ndarray | Tensor, b: Sequence[int] | np.ndarray | Tensor) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985) of two labelings: 1 identical up to renaming, ~0 random.

    ``ARI = (sum_ij C(n_ij, 2) - E) / (0.5 (sum_i C(a_i, 2) + sum_j C(b_j, 2)) - E)`` with
    ``E = sum_i C(a_i, 2) sum_j C(b_j, 2) / C(n, 2)`` over the contingency table ``n_ij``.
    """
    a_arr = (a.cpu().numpy() if isinstance(a, Tensor) else np.asarray(a)).ravel()
    b_arr = (b.cpu().numpy() if isinstance(b, Tensor) else np.asarray(b)).ravel()
    if a_arr.shape != b_arr.shape:
        raise ValueError(f"labelings have different lengths: {a_arr.size} and {b_arr.size}")
    n = a_arr.size
    if n < 2:
        return 1.0
    _, ai = np.unique(a_arr, return_inverse=True)
    _, bi = np.unique(b_arr, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1), dtype=np.int64)
    np.add.at(table, (ai.ravel(), bi.ravel()), 1)

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1.0) / 2.0).sum())

    index = pairs(table)
    rows, cols = pairs(table.sum(1)), pairs(table.sum(0))
    expected = rows * cols / (n * (n - 1.0) / 2.0)
    maximum = 0.5 * (rows + cols)
    if maximum == expected:  # both labelings trivial (one cluster, or all singletons) and equal in kind
        return 1.0
    return (index - expected) / (maximum - expected)


def stored_param_share(dims: Tensor, field_costs: Sequence[float], dim: int) -> float:
    """Embedding parameters of shared tables (field f stored at ``max_c dims[c, f]``) over uniform ``dim``."""
    widths = dims.max(dim=0).values.double()                                                  # (F,)
    costs = torch.as_tensor(field_costs, dtype=torch.float64)
    return float((costs * widths).sum() / (costs.sum() * dim))


def fit_dims_to_budget(dims: Tensor, count_hist: Tensor, field_costs: Sequence[float], dim: int, budget: float,
                       candidate_dims: Sequence[int], min_dim: int = 2) -> Tensor:
    """Narrow the widest groups' dimensions until the shared tables hold at most ``budget`` of the uniform
    model's embedding parameters.

    With shared tables a field costs ``V_f * max_c d[c, f]``: one small group asking for 16 dimensions keeps
    the whole table at 16, and the search's budget (an *expected* share per sample) says nothing about that
    maximum. Greedily, the field whose next narrower width saves the most parameters per dimension taken
    from members is narrowed (damage = members' open gates above the new width, from ``count_hist``), until
    the stored share meets the budget or every field is at ``min_dim``.

    Args:
        dims: (K, F) dimensions from :func:`assign_dims`.
        count_hist: (K, F, D+1) active-gate counts per group and field.
        field_costs: (F,) parameters of one dimension of each field (its vocabulary size).
        dim: D.
        budget: target stored share in (0, 1].
        candidate_dims: allowed widths.
        min_dim: no field narrower than this.
    """
    dims = dims.clone()
    allowed = sorted({int(c) for c in candidate_dims if min_dim <= c <= dim} | {max(min_dim, 0)})
    costs = torch.as_tensor(field_costs, dtype=torch.float64)
    counts = torch.arange(count_hist.shape[-1], dtype=torch.float64)                           # (D+1,)
    while stored_param_share(dims, field_costs, dim) > budget + 1e-12:
        widths = dims.max(dim=0).values                                                        # (F,)
        best, best_score = None, -1.0
        for field in range(dims.shape[1]):
            lower = [a for a in allowed if a < int(widths[field])]
            if not lower:
                continue
            new = lower[-1]
            saved = float(costs[field] * (int(widths[field]) - new))
            lost = float((count_hist[:, field].double() * (counts - new).clamp_min(0)).sum())
            score = saved / (1.0 + lost)
            if score > best_score:
                best, best_score = (field, new), score
        if best is None:
            break
        field, new = best
        dims[:, field] = dims[:, field].clamp_max(new)
    return dims

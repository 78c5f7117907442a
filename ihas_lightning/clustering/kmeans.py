"""Mini-batch k-means in torch (Sculley 2010) with k-means++ seeding, silhouette and adjusted Rand index."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .streams import Stream, as_rows, is_int, rechunk, reservoir_sample, stream_passes

__all__ = ["SILHOUETTE_SAMPLE", "MiniBatchKMeans", "adjusted_rand_index", "kmeans_assign",
           "silhouette_score"]

_LLOYD_STEPS = 10  # refinement of each k-means++ seeding on the in-memory init sample
SILHOUETTE_SAMPLE = 2000  # pairwise distances of the subsample: 2000^2 float64 = 32 MB

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
    per-center rate ``1 / count`` of Sculley's algorithm 1, vectorized, so a center is the running mean
    of its members and converges without a tuned learning rate.

    ``fit`` makes one pass to draw a seeded reservoir sample of ``init_size`` rows, seeds the centers by
    greedy k-means++ on it (best of ``n_init``, refined by Lloyd steps on the sample), then runs
    ``iterations`` mini-batch updates, passing over the stream as many times as needed. A center that
    received no row during a whole pass is re-seeded at the sample point farthest from its nearest center
    (if no point is farther than 0, e.g. K > distinct points, it stays: duplicated centers are harmless,
    ``predict`` picks the first).

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
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if init_size is not None and (not is_int(init_size) or init_size < 1):
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

        One seeding can put two centers in one group and one center across two; keeping the seeding of
        lowest sample inertia, as scikit-learn's ``n_init`` does, and refining it on the in-memory sample
        (Bradley & Fayyad 1998, "Refining Initial Points for K-Means Clustering") avoids most of that for
        the price of a few passes over ``init_size`` rows. See docs/design.md#31-clustering-grouping-the-masks.
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
        passes = stream_passes(stream, "stream")
        self._gen = torch.Generator().manual_seed(self.seed)
        self.n_steps = self.n_reseeded = 0
        sample = reservoir_sample(rechunk(passes(), self.batch_size, "stream", None), self.init_size, self._gen)
        self._init(sample)
        width = sample.shape[1]
        while self.n_steps < self.iterations:
            hits = torch.zeros(self.k, dtype=torch.long, device=sample.device)
            complete = True
            for x in rechunk(passes(), self.batch_size, "stream", width):
                hits += torch.bincount(self._step(x.to(sample.device)), minlength=self.k)
                if self.n_steps >= self.iterations:
                    complete = False
                    break
            if complete and self.n_steps < self.iterations and bool((hits == 0).any()):
                self._reseed(hits == 0, sample)
        return self

    def partial_fit(self, x: Tensor) -> MiniBatchKMeans:
        """Update on one batch ``(n, d)`` (cut into ``batch_size`` pieces); initializes on it if unfitted.

        No re-seeding here: a pass over the data is what tells an empty cluster from an unlucky batch.
        """
        x = as_rows(x, "partial_fit", 0, None if self._centroids is None else self._centroids.shape[1])
        if x.shape[0] == 0:
            return self
        if self._centroids is None:
            self._init(x[: self.init_size])
        for chunk in x.to(self.centroids.device).split(self.batch_size):
            self._step(chunk)
        return self

    def predict(self, x: Tensor) -> Tensor:
        """Index ``(n,)`` int64 of the nearest center for ``x`` ``(n, d)`` or ``(n, F, D)``."""
        x = as_rows(x, "predict", 0, self.centroids.shape[1])
        return kmeans_assign(x.to(self.centroids.device), self.centroids)

    def inertia(self, stream: Stream) -> float:
        """Sum over the stream of squared distances to the nearest center (lower is tighter)."""
        total = 0.0
        for i, x in enumerate(stream_passes(stream, "stream")()):
            x = as_rows(x, "stream", i, self.centroids.shape[1]).to(self.centroids.device)
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


def kmeans_assign(x: Tensor, c: Tensor) -> Tensor:
    """Index ``(n,)`` of the nearest of the centers ``c`` ``(K, d)`` for each row of ``x`` ``(n, d)``.

    k-means' own assignment, by the squared-distance expansion (fast on large batches); on near-ties it can
    differ from the served routing rule, :func:`ihas_lightning.modules.router.nearest_centroid`.
    """
    return _sq_dists(x.to(c.dtype), c).argmin(1)  # (n,) int64



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



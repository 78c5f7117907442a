"""The clustering stage as one call: :func:`cluster` groups samples by their searched masks and gives
each group its per-field dimensions; :class:`ClusterResult` saves to JSON and routes new samples.

K is fixed (``ClusterConfig.k``) or, with ``k=None``, the candidate with the best mean silhouette (Rousseeuw
1987) on a seeded subsample. The pipeline calls :func:`cluster` once per run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from ..gates import check_min_dim
from .dims import active_count_histogram, assign_dims
from .kmeans import SILHOUETTE_SAMPLE, MiniBatchKMeans, kmeans_assign, silhouette_score
from .streams import Stream, as_rows, is_int, rechunk, reservoir_sample, stream_passes

__all__ = ["ClusterConfig", "ClusterResult", "cluster"]

_FORMAT_VERSION = 1


def _increasing_ints(name: str, values: Sequence[int], minimum: int) -> tuple[int, ...]:
    """``values`` as a tuple, checked: non-empty, ints >= ``minimum``, strictly increasing."""
    checked = tuple(values)
    if not checked or not all(is_int(v) and v >= minimum for v in checked):
        raise ValueError(f"{name} must be a non-empty tuple of ints >= {minimum}, got {values!r}")
    if any(a >= b for a, b in zip(checked, checked[1:])):
        raise ValueError(f"{name} must be strictly increasing, got {values!r}")
    return checked


@dataclass(frozen=True)
class ClusterConfig:
    """Configuration of the clustering stage.

    Args:
        k: number of groups; ``None`` chooses it from ``k_candidates`` by silhouette.
        k_candidates: the K tried when ``k`` is None, strictly increasing, each >= 2.
        candidate_dims: the dimensions a group's field may get, strictly increasing. Values above the
            backbone's ``D`` are ignored and ``D`` itself is always allowed, so a field can keep full width.
        min_dim: a group's field never gets fewer dimensions than this, unless ``allow_drop_field`` and the
            statistic is 0 (see docs/design.md#32-clustering-per-group-dimensions).
        allow_drop_field: a group may drop a field (dimension 0) when its typical member uses none of it.
        feature: what k-means runs on: the flattened binary masks (``"mask"``) or the masked embeddings
            ``e * z`` (``"masked_embedding"``), both of width ``F * D``.
        batch_size: mini-batch size of k-means; stream batches are re-cut to this size.
        iterations: number of mini-batch updates (passes over the stream repeat until this many).
        seed: seeds every random choice (reservoir samples, k-means++), so a run is reproducible.
        quantile: statistic of the members' active-gate counts that sets a group's field dimension;
            0.5 is the median. Higher values favor the members that use more dimensions.

    Example:
        >>> ClusterConfig(k=None, k_candidates=(2, 4), candidate_dims=(0, 4, 8, 16)).k_candidates
        (2, 4)
    """

    k: int | None = 4
    k_candidates: tuple[int, ...] = (2, 3, 4, 6, 8)
    candidate_dims: tuple[int, ...] = (0, 2, 4, 6, 8, 12, 16)
    min_dim: int = 2
    allow_drop_field: bool = False
    feature: Literal["mask", "masked_embedding"] = "mask"
    batch_size: int = 4096
    iterations: int = 100
    seed: int = 0
    quantile: float = 0.5

    def __post_init__(self) -> None:
        if self.k is not None and (not is_int(self.k) or self.k < 1):
            raise ValueError(f"k must be an int >= 1 or None (choose automatically), got {self.k!r}")
        object.__setattr__(self, "k_candidates", _increasing_ints("k_candidates", self.k_candidates, 2))
        object.__setattr__(self, "candidate_dims", _increasing_ints("candidate_dims", self.candidate_dims, 0))
        check_min_dim(self.min_dim, self.allow_drop_field)
        if self.feature not in ("mask", "masked_embedding"):
            raise ValueError(f"feature must be 'mask' or 'masked_embedding', got {self.feature!r}")
        for name in ("batch_size", "iterations"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not is_int(self.seed):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not (isinstance(self.quantile, (int, float)) and 0.0 <= self.quantile <= 1.0):
            raise ValueError(f"quantile must be in [0, 1], got {self.quantile!r}")

    def dims_for(self, dim: int) -> tuple[int, ...]:
        """The candidate dimensions usable with a backbone of width ``dim``: those <= dim, plus dim."""
        if not is_int(dim) or dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {dim!r}")
        if self.min_dim > dim:
            raise ValueError(f"min_dim={self.min_dim} exceeds the embedding dimension {dim}")
        usable = [c for c in self.candidate_dims if c <= dim]
        if not usable:
            raise ValueError(f"candidate_dims {self.candidate_dims} has no value <= the embedding dimension {dim}")
        return tuple(sorted(set(usable) | {dim}))


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
        x = as_rows(features, "features", 0, self.centroids.shape[1])
        return kmeans_assign(x.to(self.centroids.device), self.centroids)

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
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"'{path}' is not a clustering result ({type(error).__name__}: {error}): remove its "
                             "folder and rerun the command") from None


def _json_float(value: float) -> float | None:
    return None if not math.isfinite(value) else float(value)


def _count_rows_up_to(batches: Iterator[Tensor], limit: int) -> int:
    """Rows in ``batches``, counted until ``limit`` is reached (one batch, usually, not a pass over the data)."""
    rows = 0
    for batch in batches:
        rows += int(batch.shape[0])
        if rows >= limit:
            break
    return rows


def _check_k_fits_rows(config: ClusterConfig, training_rows: int) -> None:
    """K groups need at least K training rows; more would leave groups empty (their dimensions unfounded)."""
    if config.k is not None and config.k > training_rows:
        raise ValueError(f"ClusterConfig.k={config.k} groups, but the training data has only {training_rows} "
                         f"rows: set k <= {training_rows} (or k=None to choose it)")
    if config.k is None and min(config.k_candidates) > training_rows:
        raise ValueError(f"every K in ClusterConfig.k_candidates={config.k_candidates} exceeds the "
                         f"{training_rows} training rows")


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
    subsample of at most 2000 points; ties go to the smaller K.
    """
    if not is_int(num_fields) or num_fields < 1:
        raise ValueError(f"num_fields must be an int >= 1, got {num_fields!r}")
    candidate_dims = config.dims_for(dim)
    width = num_fields * dim
    feature_name = "feature_stream"
    if feature_stream is None:
        if config.feature != "mask":
            raise ValueError("feature_stream is required with feature='masked_embedding'")
        feature_stream, feature_name = mask_stream, "mask_stream"
    features = stream_passes(feature_stream, feature_name)
    masks = stream_passes(mask_stream, "mask_stream")
    most_groups = config.k if config.k is not None else max(config.k_candidates)
    training_rows = _count_rows_up_to((as_rows(x, feature_name, i, width) for i, x in enumerate(features())),
                                      most_groups)
    _check_k_fits_rows(config, training_rows)

    def train_chunks() -> Iterator[Tensor]:
        for i, x in enumerate(features()):
            yield as_rows(x, feature_name, i, width)

    def fit(k: int) -> MiniBatchKMeans:
        return MiniBatchKMeans(k, batch_size=config.batch_size, iterations=config.iterations, seed=config.seed).fit(
            train_chunks
        )

    if config.k is not None:
        km = fit(config.k)
        selection: dict[str, Any] = {"method": "fixed", "k": config.k}
    else:
        source = "validation" if val_feature_stream is not None else "training"
        eval_source = val_feature_stream if val_feature_stream is not None else feature_stream
        eval_stream = stream_passes(eval_source, "features")
        sample = reservoir_sample(
            rechunk(eval_stream(), config.batch_size, f"{source} features", width),
            SILHOUETTE_SAMPLE,
            torch.Generator().manual_seed(config.seed),
        )
        scores: dict[str, float | None] = {}
        fitted: dict[int, MiniBatchKMeans] = {}
        best_k, best_score = None, -math.inf
        for k in config.k_candidates:
            if k >= sample.shape[0] or k > training_rows:
                scores[str(k)] = None  # silhouette needs K < n; K groups need K training rows
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
        x = as_rows(x, feature_name, i, width)
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

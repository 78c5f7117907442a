"""Fitting the retraining's linear router to the searched routing, and measuring how often a router agrees
with it.

The searched routing of a row is the clustering's group of its deterministic gate mask on the searched tables
(:func:`~ihas_lightning.pipeline.search.searched_masks`, ``ClusterResult.predict``): what the clustering
grouped and the groups' dimensions were chosen for. The linear router learns it from the training rows only.
"""

from __future__ import annotations

import torch

from ..clustering import ClusterResult
from ..data.datamodule import CTRDataModule
from ..modules import LinearRouter, RetrainModule, SearchModule
from ..modules.base import eval_mode
from .search import searched_masks

__all__ = ["fit_linear_router", "routing_agreement", "searched_routes"]


@torch.no_grad()
def searched_routes(search: SearchModule, clusters: ClusterResult, dm: CTRDataModule, split: str,
                    max_rows: int | None = None) -> torch.Tensor:
    """(N,) the clustering's group of every row of ``split`` (the first ``max_rows``), from the searched masks."""
    groups, rows = [], 0
    for batch in dm.stream(split, shuffle=False):
        groups.append(clusters.predict(searched_masks(search, batch).flatten(1)))
        rows += len(groups[-1])
        if max_rows is not None and rows >= max_rows:
            break
    return torch.cat(groups)[:max_rows] if groups else torch.zeros(0, dtype=torch.long)


@torch.no_grad()
def _module_routes(module: RetrainModule, dm: CTRDataModule, split: str, max_rows: int | None = None) -> torch.Tensor:
    """(N,) the module's own routing of the rows of ``split`` (on its own tables); its modes are kept."""
    groups, rows = [], 0
    with eval_mode(module):
        for batch in dm.stream(split, shuffle=False):
            groups.append(module.route(module.backbone.field_embeddings(batch)))
            rows += len(groups[-1])
            if max_rows is not None and rows >= max_rows:
                break
    return torch.cat(groups)[:max_rows] if groups else torch.zeros(0, dtype=torch.long)


def fit_linear_router(module: RetrainModule, search: SearchModule, clusters: ClusterResult, dm: CTRDataModule,
                      seed: int, max_rows: int = 262_144) -> float:
    """Fit ``module``'s linear router on its own tables' leading columns of the training rows (at most
    ``max_rows``, in split order) to the searched routing of those rows; returns the training agreement."""
    router = module.router
    if not isinstance(router, LinearRouter):
        raise ValueError(f"fit_linear_router needs a RetrainModule with the linear router, got {type(router).__name__}")
    with eval_mode(module), torch.no_grad():      # the retraining then starts in the modes it found
        features, rows = [], 0
        for batch in dm.stream("train", shuffle=False):
            features.append(router.features(module.backbone.field_embeddings(batch)))          # (B, F*c)
            rows += len(features[-1])
            if rows >= max_rows:
                break
    if not features:
        raise ValueError("the linear router is fitted on training rows, and the training split is empty")
    targets = searched_routes(search, clusters, dm, "train", max_rows)
    return router.fit(torch.cat(features)[:max_rows], targets, seed=seed)


def routing_agreement(module: RetrainModule, search: SearchModule, clusters: ClusterResult, dm: CTRDataModule,
                      split: str = "val", max_rows: int | None = None) -> float | None:
    """Share of the rows of ``split`` the module routes (on its own tables, as it serves) to the group the
    searched routing gives them; None for an empty split."""
    searched = searched_routes(search, clusters, dm, split, max_rows)
    if len(searched) == 0:
        return None
    return float((_module_routes(module, dm, split, max_rows) == searched).float().mean())

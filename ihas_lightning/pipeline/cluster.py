"""The cluster stage: deterministic gates over the training set -> mini-batch k-means -> per-group dimensions,
narrowed to the search's budget; writes ``DIR/cluster/clusters.json`` and ``metrics.json``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.nn.functional as F

from .. import training
from ..clustering import (ClusterConfig, ClusterResult, active_count_histogram, cluster, fit_dims_to_budget,
                          loss_increase, open_gate_cost)
from ..data.datamodule import CTRDataModule
from ..modules import SearchModule
from ..modules.retrain_module import prefix_masks
from ..run_config import RunConfig
from .run_directory import RunDirectory
from .search import load_searched_module, searched_masks

__all__ = ["stage_cluster"]


def _mask_stream(module: SearchModule, dm: CTRDataModule, split: str) -> Callable[[], Iterator[torch.Tensor]]:
    """Deterministic gate masks (B, F, D) of a split, streamed batch by batch."""

    def stream() -> Iterator[torch.Tensor]:
        with torch.no_grad():
            for batch in dm.stream(split, shuffle=False):
                yield searched_masks(module, batch)
    return stream


def _prefix_logloss(module: SearchModule, dm: CTRDataModule, result: ClusterResult,
                    max_rows: int = 32_768) -> Callable[[torch.Tensor], float]:
    """Validation logloss of the searched backbone when every row, in the group the clustering gives it,
    keeps the first ``dims[c, f]`` columns of each field: what ``--budget-fit loss`` narrows by.

    Why the loss and not the gates: the search prices a gate by its field's vocabulary, so the gates of small
    noise fields stay open for free while a large field's gates close under pressure; counting open gates
    then cut a large, informative field first (synthetic data: field A, rank-8 signal, to 4 dimensions while
    pure-noise fields kept 16). The groups stay as the searched tables route them. The retraining routes on
    its narrowed tables, which sent 0-66% of validation rows to another group in the quality runs checked
    (Avazu most); re-centering the router on narrowed-table masks lowered the retrained validation AUC on 4
    of 4 Avazu runs, so it was left out. It reads the validation split (at most ``max_rows`` rows), as
    ``--k 0`` does to choose K.
    """
    batches, groups, rows = [], [], 0
    with torch.no_grad():
        for batch in dm.stream("val", shuffle=False):
            batches.append(batch)
            groups.append(result.predict(searched_masks(module, batch).flatten(1)))
            rows += len(groups[-1])
            if rows >= max_rows:
                break
    if rows == 0:
        raise ValueError("--budget-fit loss scores dimensions on validation rows, and the validation split is "
                         "empty: give it rows, or use --budget-fit gates")
    backbone, dim = module.backbone, module.hparams.dim

    @torch.no_grad()
    def logloss(dims: torch.Tensor) -> float:
        masks, total = prefix_masks(dims, dim), 0.0
        transform = backbone.embedding_transform
        try:
            for batch, group in zip(batches, groups):
                backbone.embedding_transform = lambda e, m=masks[group]: e * m
                total += float(F.binary_cross_entropy_with_logits(backbone(batch), batch["label"], reduction="sum"))
        finally:
            backbone.embedding_transform = transform
        return total / rows
    return logloss


def stage_cluster(run: RunDirectory, run_config: RunConfig, dm: CTRDataModule | None = None,
                  stage: str = "cluster") -> dict:
    """Deterministic gates over the training set -> mini-batch k-means -> per-group dimensions, written to
    ``DIR/<stage>/`` (the field-wise variant clusters the same search with K = 1 into ``DIR/fieldwise_cluster/``)."""
    if run.done(stage):
        return run.metrics(stage)
    budget_fit = run_config.cluster.budget_fit
    start = time.perf_counter()
    dm = dm or training.datamodule_from_config(run_config.data, run_config.trainer.threads)
    module = load_searched_module(run)
    fields = module.schema.embedded_fields
    min_dim = run_config.gate.min_dim
    config = ClusterConfig(k=run_config.cluster.k, candidate_dims=run_config.cluster.candidate_dims,
                           min_dim=min_dim, allow_drop_field=min_dim == 0, seed=run_config.model.seed)
    train_masks, val_masks = _mask_stream(module, dm, "train"), _mask_stream(module, dm, "val")
    dim = module.hparams.dim
    result = cluster(lambda: (m.flatten(1) for m in train_masks()), train_masks, len(fields), dim,
                     config, val_feature_stream=lambda: (m.flatten(1) for m in val_masks()))
    searched_dims = result.dims
    budget = module.hparams.gate.get("budget")
    if budget is not None:
        costs = [float(dm.vocab_sizes[f]) for f in fields]
        if budget_fit == "loss":
            cost = loss_increase(_prefix_logloss(module, dm, result))
        else:
            cost = open_gate_cost(sum(active_count_histogram(m, result.predict(m.flatten(1)), result.k)
                                      for m in train_masks()))
        result = replace(result, dims=fit_dims_to_budget(result.dims, costs, dim, budget, config.dims_for(dim),
                                                         config.min_dim, cost=cost))
    run.stage(stage).mkdir(parents=True, exist_ok=True)
    result.save(run.stage(stage) / "clusters.json")
    metrics = {"k": result.k, "group_sizes": result.group_sizes.tolist(),
               "dims": {str(c): dict(zip(fields, map(int, row))) for c, row in enumerate(result.dims.tolist())},
               "dims_before_budget": searched_dims.tolist(), "budget": budget, "budget_fit": budget_fit,
               "selection": result.selection, "seconds": time.perf_counter() - start}
    training.write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics

"""The cluster stage: deterministic gates over the training set -> mini-batch k-means -> per-group dimensions,
narrowed to the search's budget; writes ``DIR/cluster/clusters.json`` and ``metrics.json``."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from .. import training
from ..clustering import (ClusterConfig, ClusterResult, active_count_histogram, cluster, fill_dims_to_budget,
                          fit_dims_to_budget, loss_decrease, loss_increase, open_gate_cost, open_gate_gain)
from ..data.datamodule import CTRDataModule
from ..modules import SearchModule
from ..modules.retrain_module import prefix_masks
from ..run_config import RunConfig
from .run_directory import RunDirectory
from .search import load_searched_module, searched_masks

__all__ = ["PrefixScorer", "mask_stream", "stage_cluster"]


def mask_stream(module: SearchModule, dm: CTRDataModule, split: str) -> Callable[[], Iterator[torch.Tensor]]:
    """Deterministic gate masks (B, F, D) of a split, streamed batch by batch."""

    def stream() -> Iterator[torch.Tensor]:
        with torch.no_grad():
            for batch in dm.stream(split, shuffle=False):
                yield searched_masks(module, batch)
    return stream


class PrefixScorer:
    """The searched backbone on validation rows when every row, in the group the clustering gives it, keeps
    the first ``dims[c, f]`` columns of each field: what ``--budget-fit loss`` narrows by (:meth:`logloss`)
    and what ``--budget-fit auto`` chooses a fit by (:meth:`auc`).

    The groups stay as the searched tables route them (the router is not re-centered on narrowed-table
    masks). It reads the validation split (at most ``max_rows`` rows), as ``--k 0`` does to choose K. Why
    the loss and not the gates: see docs/design.md#33-clustering-fitting-the-budget.
    """

    def __init__(self, module: SearchModule, dm: CTRDataModule, result: ClusterResult, max_rows: int = 32_768) -> None:
        self.module, self.batches, self.groups, rows = module, [], [], 0
        with torch.no_grad():
            for batch in dm.stream("val", shuffle=False):
                self.batches.append(batch)
                self.groups.append(result.predict(searched_masks(module, batch).flatten(1)))
                rows += len(self.groups[-1])
                if rows >= max_rows:
                    break
        if rows == 0:
            raise ValueError("--budget-fit loss and auto score dimensions on validation rows, and the validation "
                             "split is empty: give it rows, or use --budget-fit gates")
        self.rows = rows
        self.labels = torch.cat([batch["label"] for batch in self.batches])                     # (N,)

    @torch.no_grad()
    def batch_logits(self, dims: torch.Tensor) -> list[torch.Tensor]:
        """Logits of each validation batch read, every group at its prefix ``dims`` (K, F)."""
        backbone = self.module.backbone
        masks, transform, out = prefix_masks(dims, self.module.hparams.dim), backbone.embedding_transform, []
        try:
            for batch, group in zip(self.batches, self.groups):
                backbone.embedding_transform = lambda e, m=masks[group]: e * m
                out.append(backbone(batch))                                                      # (B,)
        finally:
            backbone.embedding_transform = transform
        return out

    def logloss(self, dims: torch.Tensor) -> float:
        total = sum(float(F.binary_cross_entropy_with_logits(logits, batch["label"], reduction="sum"))
                    for logits, batch in zip(self.batch_logits(dims), self.batches))
        return total / self.rows

    def auc(self, dims: torch.Tensor) -> float:
        return float(binary_auroc(torch.cat(self.batch_logits(dims)), self.labels.long()))


def stage_cluster(run: RunDirectory, run_config: RunConfig, dm: CTRDataModule | None = None,
                  stage: str = "cluster", budget: float | None = None) -> dict:
    """Deterministic gates over the training set -> mini-batch k-means -> per-group dimensions, narrowed and
    then widened to the budget (the search's, or ``budget``: a stored share of the uniform tables), written to
    ``DIR/<stage>/`` (the field-wise variant clusters the same search with K = 1 into ``DIR/fieldwise_cluster/``,
    at iHAS's footprint)."""
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
    train_masks, val_masks = mask_stream(module, dm, "train"), mask_stream(module, dm, "val")
    dim = module.hparams.dim
    result = cluster(lambda: (m.flatten(1) for m in train_masks()), train_masks, len(fields), dim,
                     config, val_feature_stream=lambda: (m.flatten(1) for m in val_masks()))
    searched_dims = result.dims
    budget = module.hparams.gate.get("budget") if budget is None else budget
    candidates: list[dict] = []
    if budget is not None:
        costs = [float(dm.vocab_sizes[f]) for f in fields]
        scorer = PrefixScorer(module, dm, result) if budget_fit in ("loss", "auto") else None

        def fitted(fit: str) -> torch.Tensor:
            if fit == "loss":
                cost, gain = loss_increase(scorer.logloss), loss_decrease(scorer.logloss)
            else:
                hist = sum(active_count_histogram(m, result.predict(m.flatten(1)), result.k) for m in train_masks())
                cost, gain = open_gate_cost(hist), open_gate_gain(hist)
            narrow = fit_dims_to_budget(result.dims, costs, dim, budget, config.dims_for(dim), config.min_dim,
                                        cost=cost)
            return fill_dims_to_budget(narrow, costs, dim, budget, config.dims_for(dim), gain=gain)

        if budget_fit == "auto":
            # Both fits, each scored by the narrowed searched model's validation AUC; ties keep 'loss'.
            candidates = [{"fit": fit, "dims": fitted(fit)} for fit in ("loss", "gates")]
            for candidate in candidates:
                candidate["val_auc"] = scorer.auc(candidate["dims"])
            kept = max(candidates, key=lambda c: c["val_auc"])
            budget_fit, dims = kept["fit"], kept["dims"]
            candidates = [{"fit": c["fit"], "val_auc": c["val_auc"], "dims": c["dims"].tolist()} for c in candidates]
        else:
            dims = fitted(budget_fit)
        result = replace(result, dims=dims)
    run.stage(stage).mkdir(parents=True, exist_ok=True)
    result.save(run.stage(stage) / "clusters.json")
    metrics = {"k": result.k, "group_sizes": result.group_sizes.tolist(),
               "dims": {str(c): dict(zip(fields, map(int, row))) for c, row in enumerate(result.dims.tolist())},
               "dims_before_budget": searched_dims.tolist(), "budget": budget, "budget_fit": budget_fit,
               "budget_fit_asked": run_config.cluster.budget_fit, "budget_fit_candidates": candidates,
               "selection": result.selection, "seconds": time.perf_counter() - start}
    training.write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics

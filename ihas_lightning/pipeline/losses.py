"""Where validation AUC goes between the search and the retrained model: one figure per step of the pipeline.

Each step changes one thing, on the validation split:

1. ``gated``: the searched model as it validates (its gates in eval mode);
2. ``deterministic_masks``: every sample keeps the dimensions its own deterministic gates open;
3. ``groups_raw``: every sample keeps its group's raw statistic (the members' median open count per field,
   raised to ``min_dim``), the first dimensions of each field (prefix);
4. ``groups_snapped``: the same, snapped up to the candidate dimensions;
5. ``budget_fit``: the tables narrowed to the budget (the dimensions the retraining gets);
6. ``retrain_start``: the retrained model before its first step (the searched weights cut to the groups,
   routed by its own router on the cut tables);
7. ``retrained``: the retrained model as kept (its best validation epoch, or its start).

Steps 2-5 run the searched backbone and route every sample by the clustering's centroids on the searched
tables. The step with the largest drop is the one to fix (see docs/design.md#44-where-validation-auc-goes).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import binary_auroc

from .. import training
from ..clustering import ClusterResult, active_count_histogram, assign_dims
from ..data.datamodule import CTRDataModule
from ..modules import SearchModule
from ..modules.retrain_module import prefix_masks
from ..run_config import RunConfig
from .cluster import mask_stream
from .retrain import build_retrain_module
from .run_directory import RunDirectory
from .search import load_searched_module, searched_masks

__all__ = ["LOSS_STEPS", "stage_losses"]

LOSS_STEPS = ("gated", "deterministic_masks", "groups_raw", "groups_snapped", "budget_fit", "retrain_start",
              "retrained")


def _scores(logits: Tensor, labels: Tensor) -> dict[str, float]:
    return {"val_auc": float(binary_auroc(logits, labels.long())),
            "val_logloss": float(F.binary_cross_entropy_with_logits(logits, labels))}


@torch.no_grad()
def _masked_logits(search: SearchModule, batches: list[dict[str, Tensor]],
                   mask_of: Callable[[dict[str, Tensor]], Tensor]) -> Tensor:
    """Logits of the searched backbone with each batch's embeddings multiplied by ``mask_of(batch)`` (B, F, D)."""
    backbone, transform, logits = search.backbone, search.backbone.embedding_transform, []
    try:
        for batch in batches:
            backbone.embedding_transform = lambda e, m=mask_of(batch): e * m
            logits.append(backbone(batch))
    finally:
        backbone.embedding_transform = transform
    return torch.cat(logits)


@torch.no_grad()
def stage_losses(run: RunDirectory, config: RunConfig, dm: CTRDataModule | None = None) -> dict:
    """Validation AUC and logloss after each step (:data:`LOSS_STEPS`); writes ``DIR/losses/metrics.json``.

    Needs the search, cluster and retrain stages done. Reads every validation row (forward passes only).
    """
    if run.done("losses"):
        return run.metrics("losses")
    dm = dm or training.datamodule_from_config(config.data, config.trainer.threads)
    if len(dm.split("val")) == 0:
        raise ValueError("the validation split is empty: the step-by-step validation AUC needs validation rows")
    search = load_searched_module(run)
    clusters = ClusterResult.load(run.stage("cluster") / "clusters.json")
    dim = search.hparams.dim
    batches = list(dm.stream("val", shuffle=False))
    labels = torch.cat([batch["label"] for batch in batches])
    groups = {id(batch): clusters.predict(searched_masks(search, batch).flatten(1)) for batch in batches}
    hist = sum(active_count_histogram(m, clusters.predict(m.flatten(1)), clusters.k)
               for m in mask_stream(search, dm, "train")())
    min_dim = config.gate.min_dim
    raw = assign_dims(hist, range(dim + 1), min_dim=min_dim, allow_drop_field=min_dim == 0)       # (K, F)
    snapped = torch.as_tensor(run.metrics("cluster")["dims_before_budget"])                         # (K, F)

    def prefix(dims: Tensor) -> Callable[[dict[str, Tensor]], Tensor]:
        masks = prefix_masks(dims, dim)                                                            # (K, F, D)
        return lambda batch: masks[groups[id(batch)]]                                             # (B, F, D)

    logits = {
        "gated": torch.cat([search(batch) for batch in batches]),
        "deterministic_masks": _masked_logits(search, batches, lambda b: searched_masks(search, b)),
        "groups_raw": _masked_logits(search, batches, prefix(raw)),
        "groups_snapped": _masked_logits(search, batches, prefix(snapped)),
        "budget_fit": _masked_logits(search, batches, prefix(clusters.dims)),
    }
    start = build_retrain_module(run, config, dm, config.model.backbone, search=search, clusters=clusters).eval()
    logits["retrain_start"] = torch.cat([start(batch) for batch in batches])
    steps = [{"step": name, **_scores(value, labels)} for name, value in logits.items()]
    retrained = run.metrics("retrain")
    steps.append({"step": "retrained", "val_auc": retrained.get("val_auc"), "val_logloss": None,
                  "kept": retrained.get("kept")})
    for before, after in zip(steps, steps[1:]):
        if before["val_auc"] is not None and after["val_auc"] is not None:
            after["change"] = after["val_auc"] - before["val_auc"]
    metrics = {"steps": steps, "raw_dims": raw.tolist(), "snapped_dims": snapped.tolist(),
               "dims": clusters.dims.tolist(), "rows": int(labels.numel())}
    training.write_json(run.stage("losses") / "metrics.json", metrics)
    return metrics

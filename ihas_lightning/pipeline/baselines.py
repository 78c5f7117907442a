"""The equal-footprint baselines of a run, each a plain backbone at per-field widths on the run's split:

* ``DIR/baseline_matched/`` (b): every field ``d`` or ``d + 1`` columns, tables within 1% of iHAS's footprint
  (its tables plus its router) where the vocabularies allow (:func:`~ihas_lightning.footprint_dims.matched_field_dims`).
* ``DIR/baseline_mde/`` (g): mixed-dimension embeddings (Ginart et al. 2019), widths proportional to
  ``vocab ** -alpha`` at the same target (:func:`~ihas_lightning.footprint_dims.mde_field_dims`), alpha chosen
  by validation AUC among :data:`MDE_ALPHAS`; each candidate trains in full in ``DIR/baseline_mde/alpha_<a>/``.

Both record ``"dims"`` (per field), ``"target_footprint"`` and ``"footprint_gap"`` (relative, signed).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from .. import training
from ..data.datamodule import CTRDataModule
from ..footprint_dims import footprint_gap, matched_field_dims, mde_field_dims, table_params
from ..run_config import RunConfig
from .retrain import stage_baseline
from .run_directory import RunDirectory

__all__ = ["MDE_ALPHAS", "stage_matched_baseline", "stage_mde_baseline"]

MDE_ALPHAS = (0.0, 0.1, 0.2, 0.3, 0.5)
"""The alphas the mixed-dimension baseline compares on validation data (0: uniform widths)."""


def _target_record(dims: dict[str, int], dm: CTRDataModule, target: int) -> dict:
    return {"target_footprint": int(target),
            "footprint_gap": footprint_gap(table_params(dims, dm.vocab_sizes), target)}


def stage_matched_baseline(run: RunDirectory, config: RunConfig, target_footprint: int,
                           dm: CTRDataModule | None = None, stage: str = "baseline_matched") -> dict:
    """Baseline (b): the run's backbone with every field ``d`` or ``d + 1`` columns, its tables nearest
    ``target_footprint`` (iHAS's ``footprint_params``)."""
    if run.done(stage):
        return run.metrics(stage)
    dm = dm or training.datamodule_from_config(config.data, config.trainer.threads)
    dims = matched_field_dims(target_footprint, dm.vocab_sizes, dm.schema.embedded_fields)
    return stage_baseline(run, config, max(dims.values()), stage, dm, field_dims=dims,
                          extra=_target_record(dims, dm, target_footprint))


def stage_mde_baseline(run: RunDirectory, config: RunConfig, target_footprint: int,
                       dm: CTRDataModule | None = None, stage: str = "baseline_mde",
                       alphas: Sequence[float] = MDE_ALPHAS) -> dict:
    """Baseline (g): mixed-dimension embeddings at ``target_footprint``, widths in ``[1, config.model.dim]``.

    Every alpha trains in full (the baselines' epochs, the run's seed); alphas whose widths coincide share one
    training. The kept candidate has the highest validation AUC (ties: the smaller alpha); its test figures and
    counts are the stage's, and ``"candidates"`` lists every alpha's validation AUC and widths.
    """
    if run.done(stage):
        return run.metrics(stage)
    if not alphas:
        raise ValueError("the mixed-dimension baseline needs at least one alpha")
    start = time.perf_counter()
    dm = dm or training.datamodule_from_config(config.data, config.trainer.threads)
    fields = dm.schema.embedded_fields
    trained: dict[tuple[int, ...], tuple[str, dict]] = {}
    candidates, results = [], []
    for alpha in alphas:
        dims = mde_field_dims(target_footprint, dm.vocab_sizes, float(alpha), config.model.dim, fields)
        key = tuple(dims.values())
        if key not in trained:
            where = f"{stage}/alpha_{float(alpha):g}"
            trained[key] = where, stage_baseline(run, config, max(dims.values()), where, dm, field_dims=dims)
        where, metrics = trained[key]
        candidates.append({"alpha": float(alpha), "val_auc": metrics.get("val_auc"), "dims": dims,
                           "trained_in": where})
        results.append(metrics)
    best = max(range(len(candidates)), key=lambda i: (_score(candidates[i]["val_auc"]), -i))
    kept, dims = results[best], candidates[best]["dims"]
    metrics = {**{k: v for k, v in kept.items() if k != "seconds"}, **_target_record(dims, dm, target_footprint),
               "kept_alpha": candidates[best]["alpha"], "candidates": candidates,
               "seconds": time.perf_counter() - start}
    training.write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics


def _score(val_auc: float | None) -> float:
    """A candidate's validation AUC for the choice; one without it (no validation split) ranks last."""
    return float("-inf") if val_auc is None else float(val_auc)

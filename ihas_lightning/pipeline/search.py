"""The search stage: a :class:`SearchModule` trained with its callbacks; writes ``DIR/search/``."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from .. import training
from ..callbacks import BestSearchedCheckpoint, GateStatisticsLogger, RegularizerWarmup, TemperatureAnnealing
from ..callbacks.presets import load_callbacks
from ..modules import SearchModule
from ..run_config import RunConfig
from .run_directory import RunDirectory

__all__ = ["load_searched_module", "search_metrics", "searched_checkpoint", "searched_masks", "stage_search",
           "unsettled_gates"]


def search_metrics(module: SearchModule, trainer: pl.Trainer) -> dict:
    """The searched epoch's validation AUC/logloss and gate statistics, as ``search/metrics.json`` holds them."""
    summary = module.last_val_summary or {}
    return {
        "val_auc": float(trainer.callback_metrics.get("val_auc", float("nan"))),
        "val_logloss": float(trainer.callback_metrics.get("val_logloss", float("nan"))),
        "mean_active_dims": {"overall": summary.get("mean_active_dims"),
                             "per_field": summary.get("mean_active_dims_per_field", {})},
        "distinct_masks": summary.get("distinct_masks"),
        "decided_share": summary.get("decided_share"),
        "expected_param_share": summary.get("expected_param_share"),
        "dim": module.hparams.dim, "backbone": module.hparams.backbone,
    }


def unsettled_gates(metrics: dict, budget: float | None, min_decided: float = 0.5,
                    budget_slack: float = 0.1) -> str | None:
    """Why the kept search epoch's gates tell little about the samples, or None when they settled.

    On small data the best validation epoch can come before the gates have learned anything; the clustering
    then fits the budget from nearly uniform gates. Unsettled means fewer than ``min_decided`` of the gates
    decided, or an expected parameter share more than ``budget_slack`` above ``budget``. See
    docs/design.md#23-search-schedule.
    """
    decided, share = metrics.get("decided_share"), metrics.get("expected_param_share")
    reasons = []
    if decided is not None and decided < min_decided:
        reasons.append(f"only {decided:.0%} of its gates are decided (near 0 or 1)")
    if budget is not None and share is not None and share > budget + budget_slack:
        reasons.append(f"its expected parameter share is {share:.2f} against a budget of {budget:.2f}")
    if not reasons:
        return None
    return (f"the search kept epoch {metrics.get('epoch')}, where {' and '.join(reasons)}: the clustering will "
            "fit the budget from gates that barely differ between samples. More gated steps (--epochs, a smaller "
            "--batch-size), a larger --gate-lr, or --search-checkpoint last let the gates settle; compare the "
            "retrained validation AUC, since on small data settled gates can score lower.")


def searched_checkpoint(stage_dir: str | Path) -> Path:
    """The search checkpoint the later stages read: ``best.ckpt`` when the search kept one, else ``last.ckpt``."""
    checkpoints = Path(stage_dir) / "checkpoints"
    best = checkpoints / "best.ckpt"
    return best if best.exists() else checkpoints / "last.ckpt"


def load_searched_module(run: RunDirectory) -> SearchModule:
    """The searched module the later stages read (see :func:`searched_checkpoint`), in eval mode on the CPU."""
    path = searched_checkpoint(run.stage("search"))
    if not path.exists():
        raise FileNotFoundError(f"no search checkpoint at {path}: run the search stage first")
    module = SearchModule.load_from_checkpoint(str(path), map_location="cpu")
    return module.eval()


def searched_masks(search: SearchModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, F, D) deterministic gate masks of a batch on the searched tables: what the clustering groups."""
    return search.gates.deterministic_mask(search.backbone.field_embeddings(batch))


def stage_search(run: RunDirectory, config: RunConfig) -> dict:
    """Train the search (resuming from ``search/checkpoints/last.ckpt``) and write ``search/metrics.json``.

    Unlike the later stages it runs even when its metrics exist (a finished search then only re-validates):
    ``run_pipeline`` skips it instead. It opens its own data module, so that the data module the later
    stages share starts with a fresh shuffle order.
    """
    start = time.perf_counter()
    pl.seed_everything(config.model.seed, workers=True)
    stage_dir = run.stage("search")
    dm = training.datamodule_from_config(config.data, config.trainer.threads)
    search = config.search
    module = SearchModule(dm.schema, dm.vocab_sizes, gate_lr=search.gate_lr, warmup_epochs=search.warmup_epochs,
                          gate=config.gate, config=config.model)
    if search.init_from and not (stage_dir / "checkpoints" / "last.ckpt").exists():
        module.init_backbone_from(search.init_from)
    steps_per_epoch = len(dm.stream("train"))
    gated_steps = max(1, (config.trainer.epochs - search.warmup_epochs) * steps_per_epoch)
    callbacks = load_callbacks(search.callbacks) if search.callbacks else [
        TemperatureAnnealing(steps=max(1, int(0.8 * gated_steps))),
        RegularizerWarmup(steps=max(1, gated_steps // 5)), GateStatisticsLogger()]
    if search.checkpoint == "best":
        callbacks = [BestSearchedCheckpoint(stage_dir / "checkpoints"), *callbacks]
    trainer = training.make_trainer(config.trainer, stage_dir, callbacks=callbacks, monitor=None)
    last = stage_dir / "checkpoints" / "last.ckpt"
    trainer.fit(module, dm, ckpt_path=str(last) if last.exists() else None)
    kept = searched_checkpoint(stage_dir)
    if kept != last:
        # The metrics (and the gate statistics) describe the kept epoch, the one the later stages read.
        trainer.validate(module, dm, ckpt_path=str(kept), verbose=False)
    metrics = {**search_metrics(module, trainer), "checkpoint": kept.name,
               "epoch": int(torch.load(kept, map_location="cpu", weights_only=True)["epoch"]),
               "seconds": time.perf_counter() - start}
    unsettled = unsettled_gates(metrics, config.gate.budget)
    metrics["gates_settled"] = unsettled is None
    training.write_json(stage_dir / "metrics.json", metrics)
    if unsettled:
        warnings.warn(unsettled, stacklevel=1)
    return metrics

"""Training plumbing every stage shares: the data module, the Trainer, fit-then-test, metrics files.

The stages of :mod:`ihas_lightning.pipeline` and ``ihas train`` build their Trainers here (one factory, so a
test or a user can wrap it in one place) and write their ``metrics.json`` with :func:`write_json`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from typing_extensions import override

from .callbacks.throughput import ThroughputMeter
from .checkpoint_io import AtomicCheckpointIO
from .data.config import DataConfig
from .data.datamodule import CTRDataModule
from .hparams_log import HPARAMS_FOLDER, hparam_values, write_hparams
from .modules import BackboneModule
from .modules.config import BackboneConfig
from .run_config import TrainerConfig

__all__ = ["LOG_EVERY_N_STEPS", "apply_threads", "checkpoint_start", "datamodule_from_config", "fit_and_test",
           "make_trainer", "train_backbone", "write_json"]


def apply_threads(threads: int) -> None:
    """``torch.set_num_threads(threads)``; 0 keeps torch's default."""
    if threads:
        torch.set_num_threads(threads)


def datamodule_from_config(config: DataConfig, threads: int = 0) -> CTRDataModule:
    """The data module of ``config``, prepared (encoded cache written or reused) and set up for fitting; with
    ``threads``, :func:`apply_threads` first."""
    apply_threads(threads)
    dm = CTRDataModule.from_config(config)
    dm.prepare_data()
    dm.setup("fit")
    return dm


LOG_EVERY_N_STEPS = 10
"""Steps between the logged training points (fewer where an epoch is shorter)."""


class _LogWithinAnEpoch(Callback):
    """Lowers the Trainer's logging interval to the steps of an epoch where an epoch is shorter (small data sets:
    a curve point per epoch at least, and no Lightning warning about the interval on every stage)."""

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        dm = trainer.datamodule
        if stage == "fit" and isinstance(dm, CTRDataModule):
            steps = -(-len(dm.split("train")) // (dm.batch_size * trainer.world_size))
            trainer.log_every_n_steps = max(1, min(trainer.log_every_n_steps, steps))


def make_trainer(config: TrainerConfig, stage_dir: Path, callbacks: Sequence[Callback] = (),
                 monitor: str | None = "val_auc", max_epochs: int | None = None) -> pl.Trainer:
    """A Trainer that logs to TensorBoard under ``stage_dir`` and checkpoints ``last.ckpt`` (and the best)."""
    # Not save_last=True: Lightning 2.6 writes last.ckpt only in an epoch that also wrote a top-k checkpoint
    # (never with save_top_k=0, so the search kept no checkpoint until it finished, and a stage whose val_auc
    # stopped improving kept a stale one). Its own callback writes last.ckpt at every epoch end instead; the
    # best-by-val_auc one comes first, as the trainer's ``checkpoint_callback`` (``fit_and_test`` tests it).
    last = ModelCheckpoint(dirpath=stage_dir / "checkpoints", filename="last", monitor=None, mode="max",
                           save_top_k=1, enable_version_counter=False)
    best = [ModelCheckpoint(dirpath=stage_dir / "checkpoints", monitor=monitor, mode="max", save_top_k=1,
                            filename="best")] if monitor else []
    all_callbacks = [*best, last, _LogWithinAnEpoch(), *callbacks]
    if not config.quiet:
        all_callbacks.append(TQDMProgressBar(refresh_rate=10))
    strategy = config.strategy
    if config.devices != 1 and strategy == "auto":
        # The search's gates take no part in its warm-up epochs: DDP must allow unused parameters.
        strategy = "ddp_find_unused_parameters_true"
    return pl.Trainer(max_epochs=max_epochs or config.epochs, accelerator=config.accelerator,
                      devices=config.devices, strategy=strategy, num_nodes=config.num_nodes,
                      # no hparams session per stage: TensorBoard's HPARAMS tab lists whole runs (hparams_log)
                      logger=TensorBoardLogger(str(stage_dir), name="tensorboard", version="",
                                               default_hp_metric=False),
                      callbacks=all_callbacks, enable_progress_bar=not config.quiet, enable_model_summary=False,
                      deterministic=False, log_every_n_steps=LOG_EVERY_N_STEPS, plugins=[AtomicCheckpointIO()],
                      # no_grad, not inference mode, outside fit: tensors made by ``checkpoint_start``'s validate
                      # (the metrics' states) are updated in place again during the fit that follows
                      inference_mode=False)


def fit_and_test(module: pl.LightningModule, dm: pl.LightningDataModule, trainer: pl.Trainer,
                 ckpt_path: str | None = None, start_competes: bool = False) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path`` if given), then test the best checkpoint by validation AUC.

    With ``start_competes`` (a warm-started fine-tuning), the starting weights are validated before the first
    step and compete with the epochs for the best checkpoint: on data that overfit within an epoch the
    fine-tuning's first epoch can already be worse than where it started (see ``checkpoint_start``).
    """
    with warnings.catch_warnings():
        if start_competes and ckpt_path is None:
            checkpoint_start(module, dm, trainer)
            warnings.filterwarnings("ignore", message=r".*exists and is not empty")  # it holds the start
        trainer.fit(module, dm, ckpt_path=ckpt_path)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        val["val_auc"] = float(trainer.checkpoint_callback.best_model_score)
    results = trainer.test(module, dm, ckpt_path=best or None, verbose=False)
    if not results:  # an empty test split (a small group of the separate-models variant): no test figures
        if best:      # but the module still ends with the best weights, as after a test
            module.load_state_dict(torch.load(best, map_location=module.device, weights_only=True)["state_dict"])
        return val
    return {**val, **{k: float(v) for k, v in results[0].items()}}


def checkpoint_start(module: pl.LightningModule, dm: pl.LightningDataModule, trainer: pl.Trainer) -> float | None:
    """Validate ``module`` as it is and make it the trainer's best checkpoint so far; return its score.

    An epoch must then beat the starting weights to replace them: early stopping that can stop at step 0.
    The score lives in the checkpoint callback's state, so a resumed fit keeps it. Returns None when the
    trainer monitors no metric. See docs/design.md#42-retraining-schedule-and-starting-point.
    """
    best = trainer.checkpoint_callback
    if not isinstance(best, ModelCheckpoint) or not best.monitor:
        return None
    trainer.validate(module, dm, verbose=False)
    if best.monitor not in trainer.callback_metrics:
        raise KeyError(f"validation logged no {best.monitor!r}; it logged {sorted(trainer.callback_metrics)}")
    score = trainer.callback_metrics[best.monitor].detach().clone()
    path = best.format_checkpoint_name({best.monitor: score})
    best.load_state_dict({"dirpath": best.dirpath, "best_model_score": score, "best_model_path": path,
                          "best_k_models": {path: score}, "kth_best_model_path": path, "kth_value": score})
    trainer.save_checkpoint(path)  # after: a test from this file restores the callback's state as set here
    return float(score)


def train_backbone(data: DataConfig, model: BackboneConfig, trainer: TrainerConfig, out: str | Path) -> dict:
    """``ihas train``: one backbone at a uniform dimension, fitted (resumed from ``out``'s ``last.ckpt``) and
    tested; writes and returns ``out/metrics.json`` (and ``out/hparams/``: see :mod:`.hparams_log`)."""
    pl.seed_everything(model.seed, workers=True)
    out = Path(out)
    dm = datamodule_from_config(data, trainer.threads)
    module = BackboneModule(dm.schema, dm.vocab_sizes, config=model)
    meter = ThroughputMeter()
    fit = make_trainer(trainer, out, callbacks=[meter])
    last = out / "checkpoints" / "last.ckpt"
    scores = fit_and_test(module, dm, fit, ckpt_path=str(last) if last.exists() else None)
    metrics = {
        "test_auc": scores["test_auc"], "test_logloss": scores["test_logloss"], "val_auc": scores.get("val_auc"),
        "val_logloss": scores.get("val_logloss"), "embedding_params": module.backbone.embedding_params,
        "train_samples_per_s": meter.samples_per_s, "backbone": model.backbone, "dim": model.dim,
        "rows_train": len(dm.split("train")), "rows_val": len(dm.split("val")), "rows_test": len(dm.split("test")),
        "data": data.data, "format": dm.format, "epochs": trainer.epochs, "seed": model.seed,
    }
    write_json(out / "metrics.json", metrics)
    write_hparams(out / HPARAMS_FOLDER, hparam_values({"data": data, "model": model, "trainer": trainer}),
                  {f"kept/{key}": float(metrics[key]) for key in ("test_auc", "test_logloss", "val_auc",
                                                                  "embedding_params") if metrics[key] is not None})
    return metrics


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON atomically (a temporary file, then a rename); tensors become lists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable))
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} to JSON")

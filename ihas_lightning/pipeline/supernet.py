"""Supernet training and sub-architecture scoring over one run folder (``DIR/supernet/``).

``train_supernet`` writes ``checkpoints/`` (``last.ckpt`` is the supernet), TensorBoard logs, ``metrics.json``,
``data.json`` (the data options, so that ``score_subnet`` rebuilds the same splits) and ``supernet.json`` (the
search space and the sampler's seed).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..callbacks.supernet_sampler import SupernetSampler
from ..data.config import DataConfig
from ..devices import resolve_device
from ..json_files import read_json, record_differences
from ..modules.supernet_module import REFIT_PRIOR, REFIT_ROWS, FinetuneScope, SupernetModule
from ..run_config import RunConfig
from ..safe_load import load_torch_file
from ..subarchitecture import SupernetConfig
from ..training import datamodule_from_config, make_trainer, write_json

__all__ = ["DATA_OPTIONS", "default_warmup", "score_subnet", "train_supernet", "trained_lr"]

DATA_OPTIONS = ("data", "format", "schema", "test", "rows", "min_count", "batch_size", "seed", "cache_dir")
"""The data options ``data.json`` keeps (``DataConfig`` fields)."""
_EXECUTION_DATA_OPTIONS = frozenset({"cache_dir"})
"""Data options a resumed supernet may change (the cache is keyed by the data's content)."""


def default_warmup(space: SupernetConfig, steps_per_epoch: int) -> int:
    """``train_supernet``'s warm-up when none is given: one epoch, or none under the sandwich rule."""
    return 0 if space.sandwich else steps_per_epoch


def train_supernet(out: str | Path, config: RunConfig, space: SupernetConfig,
                   warmup_steps: int | None = None, freeze_masked: bool = True, restart: bool = False) -> dict:
    """Train a supernet of ``config.model`` over ``space`` (resuming ``last.ckpt``); return its metrics.

    A folder whose supernet was trained with other settings (data, model, learning rate, search space, sampler) is
    refused, naming what differs, unless ``restart`` clears it first: resuming would mix the two (more epochs are
    not a different setting).

    ``warmup_steps`` overrides ``space.warmup_steps``: NASRec's warm-up, from the full network to sampled
    sub-architectures. None: one epoch with one sub-architecture a step, none with the sandwich rule, which trains
    the full network every step anyway (with a one-epoch warm-up added it ranked the development sets lower,
    docs/supernet_ranking.md). ``freeze_masked``: :class:`SupernetModule`'s (the optimiser leaves what a step
    masks where it is).
    """
    start = time.perf_counter()
    seed = config.model.seed
    pl.seed_everything(seed, workers=True)
    stage = Path(out) / "supernet"
    dm = datamodule_from_config(config.data, config.trainer.threads)
    if max(space.dim_choices) > config.model.dim:
        raise ValueError(f"dim choices {space.dim_choices} exceed the model's dimension {config.model.dim}")
    steps_per_epoch = math.ceil(len(dm.split("train")) / dm.batch_size)
    sampler = SupernetSampler(dim_choices=space.dim_choices, width_choices=space.width_choices,
                              per_sample=space.per_sample,
                              warmup_steps=default_warmup(space, steps_per_epoch) if warmup_steps is None
                              else warmup_steps,
                              sample_widths=space.sample_widths, sandwich=space.sandwich, distill=space.distill,
                              sampling=space.sampling, seed=seed)
    model = config.model
    module = SupernetModule(dm.schema, dm.vocab_sizes, backbone=model.backbone, dim=model.dim,
                            dnn_hidden_units=model.dnn_hidden_units, lr=model.lr, seed=seed,
                            embedding_updates=model.embedding_updates, freeze_masked=freeze_masked)
    data = asdict(config.data)
    data_record = {k: data[k] for k in DATA_OPTIONS}
    record = {"sampler": sampler.config.to_dict(), "seed": seed, "backbone": model.backbone, "dim": model.dim,
              "dnn": list(model.dnn_hidden_units), "freeze_masked": freeze_masked, "lr": model.lr,
              "embedding_updates": model.embedding_updates}
    last = stage / "checkpoints" / "last.ckpt"
    if restart and stage.exists():
        shutil.rmtree(stage)
    elif last.exists():
        _refuse_other_settings(stage, record, data_record)
    write_json(stage / "data.json", data_record)
    write_json(stage / "supernet.json", record)
    trainer = make_trainer(config.trainer, stage, callbacks=[sampler])
    trainer.fit(module, dm, ckpt_path=str(last) if last.exists() else None)
    val = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
    test = trainer.test(module, dm, verbose=False)[0]  # the supernet as trained (last weights), full network
    metrics = {
        "val_auc": val.get("val_auc", float("nan")), "val_logloss": val.get("val_logloss", float("nan")),
        "test_auc": float(test["test_auc"]), "test_logloss": float(test["test_logloss"]),
        "embedding_params": module.backbone.embedding_params, "sampled_steps": sampler.step,
        "backbone": model.backbone, "dim": model.dim, "dnn": list(model.dnn_hidden_units),
        "supernet": sampler.config.to_dict(), "freeze_masked": freeze_masked, "epochs": config.trainer.epochs,
        "seed": seed,
        "rows_train": len(dm.split("train")), "data": config.data.data, "format": dm.format,
        "checkpoint": str(last), "seconds": time.perf_counter() - start,
    }
    write_json(stage / "metrics.json", metrics)
    return metrics


def trained_lr(stage: Path) -> float | None:
    """The learning rate the supernet in ``stage`` (``DIR/supernet``) trained at, from its checkpoint's
    hyperparameters; None without a checkpoint or the value."""
    checkpoint = stage / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        return None
    lr = load_torch_file(checkpoint, "the supernet checkpoint").get("hyper_parameters", {}).get("lr")
    return None if lr is None else float(lr)


def _refuse_other_settings(stage: Path, record: dict, data_record: dict) -> None:
    """A ValueError naming every setting of the supernet in ``stage`` that differs from this command's."""
    saved = {**(read_json(stage / "supernet.json") if (stage / "supernet.json").exists() else {}),
             **(read_json(stage / "data.json") if (stage / "data.json").exists() else {})}
    if "lr" not in saved:             # written before the record kept it: the checkpoint's hyperparameters have it
        saved["lr"] = trained_lr(stage)
    now = json.loads(json.dumps({**record, **data_record}))          # as a JSON file gives it back
    differences = record_differences(saved, now, skip=_EXECUTION_DATA_OPTIONS)
    if differences:
        raise ValueError(f"'{stage.parent}' holds a supernet trained with other settings ({'; '.join(differences)}); "
                         "resume it with those, or start over with --restart (or another --out)")


def score_subnet(run: str | Path, dims: str = "", widths: str | None = None, finetune_steps: int = 0,
                 checkpoint: str | Path | None = None, *, finetune_scope: FinetuneScope = "last_layer",
                 finetune_lr: float | None = None, refit_sweeps: int = 0,
                 refit_prior: float = REFIT_PRIOR, refit_rows: int = REFIT_ROWS,
                 device: str | torch.device = "cpu") -> dict:
    """Validation score of one sub-architecture (``FIELD=D,...`` and DNN ``widths``) with inherited weights,
    optionally after a first-order refit and a fine-tune at ``finetune_lr`` (None: the supernet's learning rate;
    :meth:`SupernetModule.evaluate_subnet`), computed on ``device`` (:func:`~ihas_lightning.devices.resolve_device`)."""
    device = resolve_device(device)
    stage = Path(run) / "supernet"
    options_path = stage / "data.json"
    if not options_path.exists():
        raise FileNotFoundError(f"{options_path} not found: is '{run}' a run directory of `ihas supernet`?")
    checkpoint = Path(checkpoint) if checkpoint else stage / "checkpoints" / "last.ckpt"
    if not checkpoint.exists():
        raise FileNotFoundError(f"supernet checkpoint {checkpoint} not found")
    dm = datamodule_from_config(DataConfig(**read_json(options_path)))
    module = SupernetModule.load_from_checkpoint(str(checkpoint), map_location=device).to(device)
    subarch = module.parse_subarch(dims, widths)
    finetune_lr = float(module.hparams.lr) if finetune_lr is None else finetune_lr
    score = module.evaluate_subnet(subarch, dm, finetune_steps=finetune_steps, finetune_scope=finetune_scope,
                                   finetune_lr=finetune_lr, refit_sweeps=refit_sweeps, refit_prior=refit_prior,
                                   refit_rows=refit_rows)
    return {**score.to_dict(), "subarchitecture": str(subarch), "run": str(run), "checkpoint": str(checkpoint),
            "device": str(device)}

"""Train a sub-architecture of a supernet on its own, on the supernet's split: the study's baseline and its check.

Inherited weights score a sub-architecture cheaply but below what the same shape reaches when trained alone, so
a co-design study needs both ends measured the usual way: the baseline (the supernet's full shape, uniform
dims, trained as a plain model) and the reported point's shape, retrained from scratch with the same recipe.
Both run :func:`~ihas_lightning.pipeline.retrain.stage_baseline` on the split of the run's ``data.json``, into
``DIR/<stage>/`` (reused when done). See docs/design.md#6-pim-co-design.

Example:
    >>> base = train_standalone("runs/sn", stage="pim_baseline")                  # uniform, full widths
    >>> point = train_standalone("runs/sn", SubArchitecture(fields, dims, widths), stage="pim_trial_17",
    ...                          precision="fp16")
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torchmetrics.functional.classification import binary_auroc

from ..json_files import read_json
from ..modules import BackboneModule
from ..pipeline.retrain import stage_baseline
from ..pipeline.run_directory import RunDirectory
from ..pipeline.supernet import trained_lr
from ..run_config import RunConfig
from ..safe_load import load_checkpoint_state
from ..subarchitecture import SubArchitecture
from ..training import datamodule_from_config, write_json
from .study import quantized_tables

__all__ = ["DEFAULT_EPOCHS", "standalone_config", "train_standalone"]

#: ``ihas run``'s baseline epochs (5 search + 2 retraining epochs): the quality benchmark's uniform model.
DEFAULT_EPOCHS = RunConfig.from_options({}).baseline_epochs


def standalone_config(run_dir: str | Path, widths: tuple[int, ...] | None = None, epochs: int | None = None,
                      batch_size: int | None = None) -> RunConfig:
    """The plain model's recipe: the run's data options and split, the supernet's backbone, dimension, seed and
    learning rate, ``ihas run``'s other defaults (L2 on the tables), DNN ``widths`` (default: the supernet's),
    ``epochs`` (default :data:`DEFAULT_EPOCHS`), ``batch_size`` (default: the run's)."""
    stage = Path(run_dir) / "supernet"
    data, meta = read_json(stage / "data.json"), read_json(stage / "supernet.json")
    lr = _supernet_lr(stage)
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    options = {**{k: v for k, v in data.items() if k != "seed"}, "split_seed": data["seed"], "seed": meta["seed"],
               "backbone": meta["backbone"], "dim": meta["dim"], "dnn": tuple(widths or meta["dnn"]), "lr": lr,
               "epochs": epochs, "baseline_epochs": epochs, "quiet": True, "threads": 1, "out": str(run_dir)}
    if batch_size is not None:
        options["batch_size"] = batch_size
    return RunConfig.from_options(options)


def _supernet_lr(stage: Path) -> float:
    """The supernet's learning rate (its checkpoint's), or the commands' default where it has none."""
    lr = trained_lr(stage)
    return RunConfig.from_options({}).model.lr if lr is None else lr


def train_standalone(run_dir: str | Path, subarch: SubArchitecture | None = None, stage: str = "pim_baseline",
                     epochs: int | None = None, batch_size: int | None = None,
                     precision: str = "fp32") -> dict[str, Any]:
    """Train ``subarch`` (default: the supernet's full shape, uniform dims) as a plain model on the run's split;
    its metrics: ``val_auc`` (best epoch) and ``test_auc`` of the best epoch, in fp32. With a ``precision``
    other than fp32, ``val_auc_at_precision`` and ``test_auc_at_precision`` score the same weights with the
    tables rounded to it, as the study scores a point of that precision."""
    run = RunDirectory(run_dir)
    widths = None if subarch is None else tuple(int(w) for w in subarch.widths)
    config = standalone_config(run_dir, widths, epochs, batch_size)
    field_dims = None
    if subarch is not None:
        if min(subarch.dims) < 1:
            raise ValueError(f"a stand-alone model needs every field at dim >= 1, got {list(subarch.dims)}")
        field_dims = dict(zip(subarch.fields, (int(d) for d in subarch.dims)))
        if len(set(field_dims.values())) == 1:  # uniform: a plain table width, no narrowing
            field_dims = None
    dim = config.model.dim if subarch is None else int(max(subarch.dims))
    extra = {"dnn": list(config.model.dnn_hidden_units), "epochs": config.baseline_epochs,
             "batch_size": config.data.batch_size, "precision": precision}
    metrics = stage_baseline(run, config, dim, stage=stage, field_dims=field_dims, extra=extra)
    if precision != "fp32" and "test_auc_at_precision" not in metrics:
        metrics = {**metrics, **_scores_at_precision(run, config, stage, dim, field_dims, precision)}
        write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics


def _scores_at_precision(run: RunDirectory, config: RunConfig, stage: str, dim: int, field_dims: dict | None,
                         precision: str) -> dict[str, float]:
    """Validation and test AUC of the stage's best checkpoint with its tables rounded to ``precision``."""
    dm = datamodule_from_config(config.data, config.trainer.threads)
    module = BackboneModule(dm.schema, dm.vocab_sizes, config=replace(config.model, dim=dim), field_dims=field_dims)
    module.load_state_dict(load_checkpoint_state(run.stage(stage) / "checkpoints" / "best.ckpt",
                                                 "the stand-alone model's best checkpoint"))
    module.eval()
    scores = {}
    with quantized_tables(module, precision), torch.no_grad():
        for split in ("val", "test"):
            logits, labels = [], []
            for batch in dm.stream(split, shuffle=False):
                logits.append(module(batch))
                labels.append(batch["label"])
            scores[f"{split}_auc_at_precision"] = float(binary_auroc(torch.cat(logits), torch.cat(labels).long()))
    return scores

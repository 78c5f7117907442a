"""``ihas train``: one DeepCTR-Torch backbone at a uniform embedding dimension."""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from ..modules import BackboneModule
from .common import (ThroughputMeter, add_data_arguments, add_trainer_arguments, datamodule_from_args, make_trainer,
                     parse_widths, print_table, write_json)

__all__ = ["register", "run_train", "fit_and_test", "checkpoint_start"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one backbone at a uniform embedding dimension",
                                   description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser)
    parser.set_defaults(handler=run_train)


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
            module.load_state_dict(torch.load(best, map_location=module.device, weights_only=False)["state_dict"])
        return val
    return {**val, **{k: float(v) for k, v in results[0].items()}}


def checkpoint_start(module: pl.LightningModule, dm: pl.LightningDataModule, trainer: pl.Trainer) -> float | None:
    """Validate ``module`` as it is and make it the trainer's best checkpoint so far; return its score.

    An epoch must then beat the starting weights to replace them: early stopping that can stop at step 0.
    In the quality benchmark no retraining epoch beat its starting point on 4 of 10 Criteo 10k and 7 of 10
    Avazu runs (Criteo DCN seed 2: validation AUC 0.7825 at the start, 0.7751 after one epoch). The score
    lives in the checkpoint callback's state, so a resumed fit keeps it. Returns None when the trainer
    monitors no metric.
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


def run_train(args: argparse.Namespace) -> dict:
    pl.seed_everything(args.seed, workers=True)
    out = Path(args.out)
    dm = datamodule_from_args(args)
    module = BackboneModule(dm.schema, dm.vocab_sizes, backbone=args.backbone, dim=args.dim,
                            dnn_hidden_units=parse_widths(args.dnn), lr=args.lr, seed=args.seed)
    meter = ThroughputMeter()
    trainer = make_trainer(args, out, callbacks=[meter])
    last = out / "checkpoints" / "last.ckpt"
    scores = fit_and_test(module, dm, trainer, ckpt_path=str(last) if last.exists() else None)
    metrics = {
        "test_auc": scores["test_auc"], "test_logloss": scores["test_logloss"], "val_auc": scores.get("val_auc"),
        "val_logloss": scores.get("val_logloss"), "embedding_params": module.backbone.embedding_params,
        "train_samples_per_s": meter.samples_per_s, "backbone": args.backbone, "dim": args.dim,
        "rows_train": len(dm.split("train")), "rows_val": len(dm.split("val")), "rows_test": len(dm.split("test")),
        "data": args.data, "format": dm.format, "epochs": args.epochs, "seed": args.seed,
    }
    write_json(out / "metrics.json", metrics)
    print_table(f"ihas train: {args.backbone} dim {args.dim} on {args.data}", ["metric", "value"], [
        ["test AUC", metrics["test_auc"]], ["test logloss", metrics["test_logloss"]],
        ["val AUC (best)", metrics["val_auc"]], ["embedding parameters", metrics["embedding_params"]],
        ["train samples/s", round(metrics["train_samples_per_s"])], ["train rows", metrics["rows_train"]],
    ])
    print(f"metrics: {out / 'metrics.json'}   TensorBoard: tensorboard --logdir {out}")
    return metrics

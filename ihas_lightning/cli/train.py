"""``ihas train``: one DeepCTR-Torch backbone at a uniform embedding dimension."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytorch_lightning as pl
import torch

from ..modules import BackboneModule
from .common import (ThroughputMeter, add_data_arguments, add_trainer_arguments, datamodule_from_args, make_trainer,
                     parse_widths, print_table, write_json)

__all__ = ["register", "run_train", "fit_and_test"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one backbone at a uniform embedding dimension",
                                   description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser)
    parser.set_defaults(handler=run_train)


def fit_and_test(module: pl.LightningModule, dm: pl.LightningDataModule, trainer: pl.Trainer,
                 ckpt_path: str | None = None) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path`` if given), then test the best checkpoint by validation AUC."""
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

"""``ihas train``: one DeepCTR-Torch backbone at a uniform embedding dimension."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..training import train_backbone
from .common import add_data_arguments, add_trainer_arguments, print_table, run_config_from_args

__all__ = ["register", "run_train"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="train one backbone at a uniform embedding dimension",
                                   description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser)
    parser.set_defaults(handler=run_train)


def run_train(args: argparse.Namespace) -> dict:
    config = run_config_from_args(args)
    metrics = train_backbone(config.data, config.model, config.trainer, config.out)
    print_table(f"ihas train: {config.model.backbone} dim {config.model.dim} on {config.data.data}",
                ["metric", "value"], [
                    ["test AUC", metrics["test_auc"]], ["test logloss", metrics["test_logloss"]],
                    ["val AUC (best)", metrics["val_auc"]], ["embedding parameters", metrics["embedding_params"]],
                    ["train samples/s", round(metrics["train_samples_per_s"])], ["train rows", metrics["rows_train"]],
                ])
    out = Path(config.out)
    print(f"metrics: {out / 'metrics.json'}   TensorBoard: tensorboard --logdir {out}")
    return metrics

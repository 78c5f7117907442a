"""``ihas search``: the iHAS search stage; writes ``OUT/search/`` (checkpoint, TensorBoard, metrics.json)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..callbacks import preset_names
from ..pipeline import RunDirectory, stage_search
from ..run_config import RunConfig
from .common import add_data_arguments, add_trainer_arguments, print_table, run_config_from_args


__all__ = ["register", "add_search_arguments", "print_search", "run_search"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("search", help="iHAS search stage: instance-wise gates on a backbone",
                                   description=__doc__)
    add_data_arguments(parser)
    add_trainer_arguments(parser, epochs=5)
    add_search_arguments(parser)
    parser.set_defaults(handler=run_search)


def add_search_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("search")
    group.add_argument("--budget", type=float, default=0.5,
                       help="target share of the uniform model's embedding parameters (default 0.5)")
    group.add_argument("--sparsity-weight", type=float, default=None,
                       help="a fixed sparsity multiplier instead of a budget")
    group.add_argument("--relaxation", choices=["hard_concrete", "gaussian"], default="hard_concrete")
    group.add_argument("--prefix", action=argparse.BooleanOptionalAction, default=False,
                       help="nested gates: a field's mask is a dimension size (default for `ihas run`, whose "
                            "groups keep each table's first columns)")
    group.add_argument("--min-dim", type=int, default=2, help="dimensions every field keeps (0 drops fields)")
    group.add_argument("--polarization", type=float, default=0.1, help="bi-polarization weight")
    group.add_argument("--gate-lr", type=float, default=3e-3)
    group.add_argument("--warmup-epochs", type=int, default=1, help="plain-backbone epochs before the gates")
    group.add_argument("--init-from", default=None,
                       help="start the backbone from a checkpoint, e.g. a trained supernet's last.ckpt")
    group.add_argument("--search-checkpoint", choices=["best", "last"], default="best",
                       help="which searched epoch the later stages read: 'best' validation AUC among the gated "
                            "epochs (default; CTR models overfit after an epoch or two) or the 'last'")
    group.add_argument("--callbacks", default=None,
                       help=f"a packaged callbacks preset ({', '.join(preset_names())}) or a YAML file of "
                            "class_path/init_args entries; default: annealing, warm-up, statistics")


def run_search(args: argparse.Namespace) -> dict:
    config = run_config_from_args(args)
    metrics = stage_search(RunDirectory(config.out), config)
    print_search(metrics, config)
    return metrics


def print_search(metrics: dict, config: RunConfig) -> None:
    """The search stage's summary table and where its checkpoint and logs are."""
    stage_dir = Path(config.out) / "search"
    per_field = metrics["mean_active_dims"]["per_field"]
    print_table(f"ihas search: {config.model.backbone} on {config.data.data}", ["metric", "value"], [
        ["val AUC", metrics["val_auc"]], ["mean active dims", metrics["mean_active_dims"]["overall"]],
        ["expected parameter share", metrics["expected_param_share"]], ["distinct masks", metrics["distinct_masks"]],
        ["decided share", metrics["decided_share"]],
        *[[f"  active dims {name}", value] for name, value in per_field.items()],
    ])
    print(f"checkpoint: {stage_dir / 'checkpoints' / metrics['checkpoint']}   "
          f"TensorBoard: tensorboard --logdir {stage_dir}")

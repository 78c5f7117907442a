"""Pieces every ``ihas`` subcommand shares: the data and training options, their config, the summary table."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from ..data.readers import FORMATS
from ..run_config import RunConfig, with_fields

__all__ = ["add_data_arguments", "add_scoring_arguments", "add_trainer_arguments", "print_table",
           "run_config_from_args"]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="synthetic",
                       help="data file or folder, or 'synthetic' for the bundled generator (default)")
    group.add_argument("--format", choices=[*FORMATS, "synthetic"], default=None,
                       help="reader; guessed from --data when omitted")
    group.add_argument("--schema", default=None, help="schema file (JSON/YAML) for csv/tsv/parquet")
    group.add_argument("--test", default=None, help="separate test file; validation then comes from --data")
    group.add_argument("--rows", type=int, default=None,
                       help="rows of synthetic data (default 60000); a data file is read whole: --rows with one "
                            "is refused")
    group.add_argument("--min-count", type=int, default=1, help="rarer categories map to the OOV id")
    group.add_argument("--batch-size", type=int, default=1024)
    group.add_argument("--seed", type=int, default=0, help="seeds the split and every model's initialization")
    group.add_argument("--split-seed", type=int, default=None,
                       help="seeds the train/val/test split instead (default: --seed), so that several --seed "
                            "values train on one fixed split")
    group.add_argument("--cache-dir", default=None, help="encoded-data cache (default ~/.cache/ihas_lightning)")


def add_trainer_arguments(parser: argparse.ArgumentParser, epochs: int = 3) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--backbone", default="DeepFM", help="DeepCTR-Torch model (DeepFM, DCN, xDeepFM, ...)")
    group.add_argument("--dim", type=int, default=16, help="embedding dimension of every field")
    group.add_argument("--dnn", default="256,128", help="DNN hidden widths, comma-separated")
    group.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default %(default)s)")
    group.add_argument("--embedding-updates", choices=("rowwise", "dense"), default="rowwise",
                       help="rowwise (default): a step updates the table rows its batch looks up (lazy Adam, L2 as "
                            "weight decay on those rows); dense: every row of every table at every step")
    group.add_argument("--epochs", type=int, default=epochs)
    group.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    group.add_argument("--devices", type=int, default=1, help="devices per machine (more than 1: DDP)")
    group.add_argument("--num-nodes", type=int, default=1, help="machines (Lightning's launchers: torchrun, SLURM)")
    group.add_argument("--strategy", default="auto", help="Lightning strategy (default: DDP when --devices > 1)")
    group.add_argument("--out", default="runs/default", help="run directory")
    group.add_argument("--quiet", action="store_true", help="no progress bar")
    group.add_argument("--threads", type=int, default=1,
                       help="CPU threads for torch (default 1: CTR models this small gain little from more; see "
                            "docs/design.md#9-engineering-measurements); 0 = torch's default")


def add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    """How a supernet's sub-architecture is scored (``ihas subnet``, ``ihas pim``): first-order refit, then a short
    fine-tune of its whole sub-network; the defaults are what ranked candidates best in the ranking benchmark."""
    from ..modules.supernet_module import REFIT_PRIOR, REFIT_ROWS, REFIT_SWEEPS

    parser.add_argument("--finetune-steps", type=int, default=10,
                        help="train the sub-network this many steps before scoring it (default 10; 0 with "
                             "--refit-sweeps 0: inherited weights as they are)")
    parser.add_argument("--finetune-lr", type=float, default=None,
                        help="the fine-tune's Adam learning rate (default: the supernet's)")
    parser.add_argument("--refit-sweeps", type=int, default=REFIT_SWEEPS,
                        help="before the fine-tune, refit the first-order weights with this many Newton sweeps, the "
                             f"rest frozen (0: none; default {REFIT_SWEEPS})")
    parser.add_argument("--refit-prior", type=float, default=REFIT_PRIOR,
                        help="the first-order refit's prior precision around the inherited weights (default "
                             f"{REFIT_PRIOR:g})")
    parser.add_argument("--refit-rows", type=int, default=REFIT_ROWS,
                        help="training rows the first-order refit fits, the first batches that hold them (default "
                             f"{REFIT_ROWS:,}; more fit the first-order weights better on large data and cost a "
                             "forward pass over them per candidate)")
    parser.add_argument("--device", default="cpu",
                        help="where the candidates are scored: cpu (default), cuda, cuda:N or auto (cuda where "
                             "available)")


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    """The :class:`RunConfig` of a command's options (those it lacks keep ``ihas run``'s defaults) and of the
    fields its ``--config`` file sets that no option sets."""
    from .config_file import CONFIG_DESTS

    config = RunConfig.from_options({k: v for k, v in vars(args).items()
                                     if k not in ("handler", "command", *CONFIG_DESTS)})
    config = with_fields(config, getattr(args, "config_fields", None) or {})   # a --config file's other fields
    if getattr(args, "rows", None) is not None and not config.data.synthetic:
        raise ValueError(f"--rows sets the size of synthetic data, and '{config.data.data}' is a file read whole: "
                         "drop --rows (or take a sample of the file)")
    return config


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A one-screen summary with rich (plain text when output is not a terminal)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in header:
        table.add_column(column, justify="right" if column != header[0] else "left")
    for row in rows:
        table.add_row(*(f"{v:.4f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)
                        for v in row))
    Console().print(table)

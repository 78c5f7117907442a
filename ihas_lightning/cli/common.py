"""Pieces every ``ihas`` subcommand shares: data options, the Trainer, metrics files, the summary table."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from typing_extensions import override

from ..checkpoint_io import AtomicCheckpointIO
from ..data.datamodule import CTRDataModule
from ..data.readers import FORMATS

__all__ = ["add_data_arguments", "add_trainer_arguments", "datamodule_from_args", "make_trainer", "write_json",
           "ThroughputMeter", "print_table"]


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--data", default="synthetic",
                       help="data file or folder, or 'synthetic' for the bundled generator (default)")
    group.add_argument("--format", choices=[*FORMATS, "synthetic"], default=None,
                       help="reader; guessed from --data when omitted")
    group.add_argument("--schema", default=None, help="schema file (JSON/YAML) for csv/tsv/parquet")
    group.add_argument("--test", default=None, help="separate test file; validation then comes from --data")
    group.add_argument("--rows", type=int, default=60_000, help="rows of synthetic data (default 60000)")
    group.add_argument("--min-count", type=int, default=1, help="rarer categories map to the OOV id")
    group.add_argument("--batch-size", type=int, default=1024)
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--cache-dir", default=None, help="encoded-data cache (default ~/.cache/ihas_lightning)")


def add_trainer_arguments(parser: argparse.ArgumentParser, epochs: int = 3) -> None:
    group = parser.add_argument_group("training")
    group.add_argument("--backbone", default="DeepFM", help="DeepCTR-Torch model (DeepFM, DCN, xDeepFM, ...)")
    group.add_argument("--dim", type=int, default=16, help="embedding dimension of every field")
    group.add_argument("--dnn", default="256,128", help="DNN hidden widths, comma-separated")
    group.add_argument("--lr", type=float, default=1e-3)
    group.add_argument("--epochs", type=int, default=epochs)
    group.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    group.add_argument("--devices", type=int, default=1, help="devices per machine (more than 1: DDP)")
    group.add_argument("--num-nodes", type=int, default=1, help="machines (Lightning's launchers: torchrun, SLURM)")
    group.add_argument("--strategy", default="auto", help="Lightning strategy (default: DDP when --devices > 1)")
    group.add_argument("--out", default="runs/default", help="run directory")
    group.add_argument("--quiet", action="store_true", help="no progress bar")
    group.add_argument("--threads", type=int, default=1,
                       help="CPU threads for torch (default 1: CTR models this small gain little from more, and "
                            "two threads on a busy 2-core machine ran 6x slower here); 0 = torch's default")


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise SystemExit(f"--dnn must be comma-separated integers, got '{text}'") from None
    if not widths or min(widths) < 1:
        raise SystemExit(f"--dnn needs at least one positive width, got '{text}'")
    return widths


def apply_threads(args: argparse.Namespace) -> None:
    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)


def datamodule_from_args(args: argparse.Namespace) -> CTRDataModule:
    apply_threads(args)
    dm = CTRDataModule(args.data, format=args.format, schema=args.schema, test=args.test, rows=args.rows,
                       seed=args.seed, min_count=args.min_count, batch_size=args.batch_size, cache_dir=args.cache_dir)
    dm.prepare_data()
    dm.setup("fit")
    return dm


class ThroughputMeter(Callback):
    """Training samples per second, over the training batches only (validation excluded)."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._start = 0.0

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._start = time.perf_counter()

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seconds += time.perf_counter() - self._start
        self.samples += int(batch["label"].shape[0])

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds else 0.0


def make_trainer(args: argparse.Namespace, stage_dir: Path, callbacks: Sequence[Callback] = (),
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
    all_callbacks = [*best, last, *callbacks]
    if not args.quiet:
        all_callbacks.append(TQDMProgressBar(refresh_rate=10))
    devices = getattr(args, "devices", 1)
    strategy = getattr(args, "strategy", "auto")
    if devices != 1 and strategy == "auto":
        # The search's gates take no part in its warm-up epochs: DDP must allow unused parameters.
        strategy = "ddp_find_unused_parameters_true"
    return pl.Trainer(max_epochs=max_epochs or args.epochs, accelerator=args.accelerator, devices=devices,
                      strategy=strategy, num_nodes=getattr(args, "num_nodes", 1),
                      logger=TensorBoardLogger(str(stage_dir), name="tensorboard", version=""),
                      callbacks=all_callbacks, enable_progress_bar=not args.quiet, enable_model_summary=False,
                      deterministic=False, log_every_n_steps=10, plugins=[AtomicCheckpointIO()],
                      # no_grad, not inference mode, outside fit: tensors made by ``checkpoint_start``'s validate
                      # (the metrics' states) are updated in place again during the fit that follows
                      inference_mode=False)


def write_json(path: Path, data: dict) -> None:
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

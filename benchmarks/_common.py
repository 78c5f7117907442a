"""Helpers shared by the benchmark scripts: timing, machine description, JSON and Markdown results."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import gc
import io
import json
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"

__all__ = ["RESULTS_DIR", "LightningEpochClock", "Timer", "add_speed_arguments", "best_of", "machine_info", "now_iso",
           "provenance",
           "setup_speed_run", "silenced_stdout", "speed_notes", "sync", "time_one_epoch", "write_json",
           "write_markdown_table"]


class Timer:
    """``with Timer() as t: ...``; then ``t.seconds`` (perf_counter wall time)."""

    def __enter__(self) -> Timer:
        self.start = time.perf_counter()
        self.seconds = float("nan")
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def best_of(values: Sequence[float]) -> float:
    """The largest throughput of repeated runs (the least disturbed one on a noisy machine)."""
    return max(values)


@contextlib.contextmanager
def silenced_stdout() -> Iterator[io.StringIO]:
    """Swallow what a library prints (DeepCTR-Torch's ``fit`` prints the device and a summary line)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        yield buffer


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """Where the numbers came from: CPU, cores, memory, library versions, GPU when used."""
    import numpy as np
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
    }
    for name in ("pytorch_lightning", "deepctr_torch"):
        try:
            module = sys.modules.get(name) or __import__(name)
            info[name] = getattr(module, "__version__", "unknown")
        except ImportError:
            info[name] = None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def provenance() -> dict[str, Any]:
    """The commit the measured code is at (``dirty`` when the tree has uncommitted changes) and the command."""
    import subprocess

    root = Path(__file__).resolve().parent.parent

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {"commit": git("rev-parse", "HEAD") or None,
            "dirty": bool(git("status", "--porcelain", "--", "ihas_lightning")),
            "command": " ".join(["python", *sys.argv])}


def write_json(path: str | Path, payload: dict[str, Any]) -> Path:
    """``payload`` as JSON, with its :func:`provenance` (commit and command) unless it records one already."""
    payload = {**payload, "provenance": payload.get("provenance") or provenance()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    return path


def write_markdown_table(path: str | Path, title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                         notes: Sequence[str] = ()) -> Path:
    """A Markdown file: ``# title``, a table, then one bullet per note."""
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.2f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = [f"# {title}", "", "| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    if notes:
        lines += [""] + [f"- {note}" for note in notes]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def add_speed_arguments(parser: argparse.ArgumentParser, *, rows: int, json_name: str,
                        models: Sequence[str]) -> None:
    """The options every side-by-side speed benchmark takes (throughput, search overhead)."""
    parser.add_argument("--rows", type=int, default=rows, help=f"training rows (default {rows:,})")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / json_name,
                        help="result file; a Markdown table goes next to it with the suffix .md")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per side, alternating; the best counts")
    parser.add_argument("--models", nargs="+", default=list(models), choices=models)
    parser.add_argument("--hidden", type=int, nargs="+", default=[400, 400], help="DNN widths (both sides)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:0]")


def setup_speed_run(args: argparse.Namespace) -> tuple[int, str]:
    """Threads and device for a speed benchmark, with Lightning's per-run chatter silenced."""
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    from ihas_lightning.cli.quiet import BENIGN_WARNINGS, CHATTY_LOGGERS

    for message in (".*does not have many workers.*", *BENIGN_WARNINGS):
        warnings.filterwarnings("ignore", message=message)
    for logger_name in CHATTY_LOGGERS:
        logging.getLogger(logger_name).setLevel(logging.WARNING)
    return threads, "cuda:0" if args.device == "cuda" else args.device


def sync(device: str) -> None:
    """Wait for queued GPU work before reading the clock."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class LightningEpochClock(pl.Callback):
    """Times one training epoch of a Lightning fit, from epoch start to epoch end (setup excluded)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.start = self.end = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sync(self.device)
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sync(self.device)
        self.end = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.end - self.start


def time_one_epoch(module: pl.LightningModule, splits: dict, encoder: Any, batch_size: int, device: str,
                   callbacks: Sequence[pl.Callback] = (), batches: int | None = None) -> dict[str, float]:
    """Fit ``module`` for one epoch on encoded ``splits`` (no validation, logger, checkpoints or progress bar):
    the training epoch's seconds (``LightningEpochClock``), the whole ``fit`` call's, and samples/s.
    ``batches`` stops the epoch after that many batches."""
    from ihas_lightning import CTRDataModule

    gc.collect()  # the previous run's module <-> trainer cycle goes before this run's clock starts
    clock = LightningEpochClock(device)
    datamodule = CTRDataModule.from_encoded(splits, encoder, batch_size=batch_size)
    trainer = pl.Trainer(accelerator="gpu" if device.startswith("cuda") else "cpu", devices=1, max_epochs=1,
                         limit_val_batches=0, num_sanity_val_steps=0, enable_progress_bar=False, logger=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[clock, *callbacks],
                         limit_train_batches=batches)
    begin = time.perf_counter()
    trainer.fit(module, datamodule)
    fit_seconds = time.perf_counter() - begin
    rows = len(splits["train"]) if batches is None else min(len(splits["train"]), batches * batch_size)
    return {"seconds": clock.seconds, "fit_seconds": fit_seconds, "samples_per_s": rows / clock.seconds}


def speed_notes(payload: dict[str, Any], repeats: int) -> list[str]:
    """The notes every side-by-side speed result ends with: where it ran, how it was timed, the command."""
    return [f"device {payload['device']}, {payload['threads']} torch threads, {payload['machine']['cpu']}",
            f"best of {repeats} alternating runs per side; one training epoch timed from epoch start to "
            "epoch end (data generation and setup excluded)",
            f"command: `{payload['command']}`; {payload['date']}"]

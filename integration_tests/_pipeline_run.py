"""The tiny ``ihas run`` the pipeline tests share, and the harness that kills and resumes its stages.

Tiny settings (3200 training rows, batches of 256: 13 steps per epoch), one torch thread, fixed seeds. Crashes are
simulated by wrapping the Trainer factory the stages use (``make_trainer``): the wrapper adds a callback that records
the step each fit starts from and, in the stage to kill, one that raises after a chosen step, i.e. the process dies
during the next one. The stages checkpoint ``last.ckpt`` at every epoch end; the retrain and baseline stages here
last one epoch, so their killer first writes ``last.ckpt`` itself (as a ``ModelCheckpoint(every_n_train_steps=...)``
would). The fixtures ``run_cache`` and ``finished`` are in conftest.py.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

import ihas_lightning.training as training

ROWS, BATCH = 4000, 256
STEPS_PER_EPOCH = math.ceil(int(ROWS * 0.8) / BATCH)  # 13
STAGES = ("search", "cluster", "retrain", "baseline", "baseline_matched")
FIELDS = [f"C{i}" for i in range(1, 9)]


def tiny_run(out: Path, cache: Path) -> list[str]:
    """The arguments of the tiny ``ihas run`` into ``out`` (DeepFM dim 8, 2 search epochs, 1 of the rest)."""
    return ["run", "--rows", str(ROWS), "--epochs", "2", "--warmup-epochs", "1", "--retrain-epochs", "1",
            "--baseline-epochs", "1", "--dnn", "32,16", "--dim", "8", "--batch-size", str(BATCH), "--quiet",
            "--cache-dir", str(cache), "--candidate-dims", "0,2,4,8", "--seed", "0", "--no-fieldwise",
            "--out", str(out)]


class Crash(RuntimeError):
    """The simulated kill."""


class CrashAfter(Callback):
    """Dies after step ``step``; with ``last``, checkpoints there first (a mid-epoch checkpoint)."""

    def __init__(self, step: int, last: Path | None) -> None:
        self.step, self.last = step, last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.last is not None:
                trainer.save_checkpoint(self.last)
            raise Crash(f"killed after step {self.step}")


class StartRecorder(Callback):
    def __init__(self, starts: list, stage: str) -> None:
        self.starts, self.stage = starts, stage

    def on_train_start(self, trainer, pl_module) -> None:
        self.starts.append((self.stage, trainer.global_step))


class Harness:
    """Wraps ``make_trainer``: records (stage, start step) of every fit; crashes ``crash_stage`` once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.starts: list[tuple[str, int]] = []
        self.crash_stage: str | None = None
        self.crash_step = 0
        self.crash_saves = False
        original = training.make_trainer

        def make_trainer(config, stage_dir, callbacks=(), **kwargs):
            stage = Path(stage_dir).name
            extra: list[Callback] = [StartRecorder(self.starts, stage)]
            if stage == self.crash_stage:
                last = Path(stage_dir) / "checkpoints" / "last.ckpt"
                extra.append(CrashAfter(self.crash_step, last if self.crash_saves else None))
                self.crash_stage = None
            return original(config, stage_dir, [*callbacks, *extra], **kwargs)

        monkeypatch.setattr(training, "make_trainer", make_trainer)

    def crash(self, stage: str, step: int, checkpoint_first: bool = False) -> None:
        self.crash_stage, self.crash_step, self.crash_saves = stage, step, checkpoint_first


def global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def stamps(run: Path) -> dict[str, int]:
    """mtime (ns) of every stage's metrics and checkpoints."""
    files = [p for s in STAGES for p in (run / s).rglob("*") if p.suffix in (".json", ".ckpt", ".pt")]
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in files}


class EvalModeRecorder(Callback):
    """Records, per stage, the modules in eval mode when training starts (Lightning keeps the modes it finds)."""

    def __init__(self, record: dict, stage: str) -> None:
        self.record, self.stage = record, stage

    def on_train_start(self, trainer, pl_module) -> None:
        self.record[self.stage] = [name for name, m in pl_module.named_modules() if not m.training]


TRAIN_START_EVAL_MODULES: dict[str, list[str]] = {}
"""Filled by the ``finished`` run: stage -> the modules in eval mode at the start of its training."""


def copy_until(finished: Path, tmp_path: Path, first_redone: str) -> Path:
    """A copy of the finished run without ``first_redone`` and the stages after it."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for stage in STAGES[STAGES.index(first_redone):]:
        shutil.rmtree(run / stage)
    (run / "metrics.json").unlink()
    return run

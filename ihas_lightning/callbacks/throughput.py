"""``ThroughputMeter``: training samples per second, for ``ihas train``'s summary and the benchmarks."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

__all__ = ["ThroughputMeter"]


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

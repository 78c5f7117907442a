"""Keep the searched epoch with the best validation AUC, so that clustering reads gates of a model that
has not overfitted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint
from typing_extensions import override

__all__ = ["BestSearchedCheckpoint"]


class BestSearchedCheckpoint(ModelCheckpoint):
    """``best.ckpt`` of the search: the gated epoch with the highest ``val_auc``.

    CTR models often peak after one or two epochs and then overfit (the "one-epoch phenomenon", Zhang et
    al. 2022), so clustering reads the best gated epoch, not the last. Warm-up epochs train the plain
    backbone: their gates are untrained, so they do not compete. See docs/design.md#23-search-schedule.

    Args:
        dirpath: folder of the checkpoint.
        filename: its name without ``.ckpt``.
        monitor: the validation metric to maximize.
    """

    def __init__(self, dirpath: str | Path, filename: str = "best", monitor: str = "val_auc") -> None:
        if not monitor:
            raise ValueError("monitor must name a logged validation metric, e.g. 'val_auc'")
        super().__init__(dirpath=dirpath, filename=filename, monitor=monitor, mode="max", save_top_k=1,
                         enable_version_counter=False)

    @staticmethod
    def _searching(pl_module: pl.LightningModule) -> bool:
        return bool(getattr(pl_module, "gates_active", True))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._searching(pl_module):
            super().on_validation_end(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._searching(pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._searching(pl_module):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

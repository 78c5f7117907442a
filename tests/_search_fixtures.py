"""Shared by the search-stage test files: tiny synthetic data, a tiny SearchModule, a quiet Trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from ihas_lightning.callbacks import RegularizerWarmup, TemperatureAnnealing
from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.modules import SearchModule
TINY_ROWS = 4000          # 3200 training rows: 13 batches of 256 per epoch
TINY_BATCH = 256
STEPS_PER_EPOCH = math.ceil(int(TINY_ROWS * 0.8) / TINY_BATCH)


def tiny_datamodule(cache_dir: Path, rows: int = TINY_ROWS, batch_size: int = TINY_BATCH) -> CTRDataModule:
    """A fresh data module (one per Trainer) over a cache shared by the whole session."""
    dm = CTRDataModule("synthetic", rows=rows, batch_size=batch_size, seed=0, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def tiny_search(dm: CTRDataModule, backbone: str = "DeepFM", dim: int = 8, hidden=(16,), warmup_epochs: int = 1,
            gate: dict | None = None, gate_lr: float = 1e-2, lr: float = 1e-3, seed: int = 3) -> SearchModule:
    return SearchModule(dm.schema, dm.vocab_sizes, backbone=backbone, dim=dim, dnn_hidden_units=hidden,
                        warmup_epochs=warmup_epochs, gate=gate if gate is not None else {"budget": 0.5},
                        gate_lr=gate_lr, lr=lr, seed=seed)


def tiny_trainer(root: Path, callbacks=(), max_epochs: int = 2, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("enable_checkpointing", any(isinstance(c, ModelCheckpoint) for c in callbacks))
    return pl.Trainer(max_epochs=max_epochs, callbacks=list(callbacks), enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(root), accelerator="cpu", devices=1,
                      **kwargs)


def weights_of(module: SearchModule) -> dict[str, torch.Tensor]:
    """Parameters and buffers (gates, BatchNorm statistics, lambda, temperature), without the metrics."""
    return {k: v for k, v in module.state_dict().items() if "auroc" not in k and "logloss" not in k}



def schedule_callbacks() -> list[Callback]:
    return [TemperatureAnnealing(steps=30), RegularizerWarmup(steps=10)]


"""Tiny, seeded building blocks for the integration tests of issue 8 (resume, callbacks, bad input, DDP).

Everything runs on CPU with one torch thread; a synthetic data set of 3000 rows (2400 training rows, 12
batches of 200 per epoch), DeepFM at dimension 4 with one 8-unit hidden layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ihas_lightning.callbacks import RegularizerWarmup, SupernetSampler, TemperatureAnnealing
from ihas_lightning.checkpoint_io import AtomicCheckpointIO
from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.modules import RetrainModule, SearchModule, SupernetModule

ROWS = 3000
BATCH = 200
STEPS_PER_EPOCH = 12          # ceil(2400 / 200)
DIM = 4
HIDDEN = (8,)


def tiny_dm(cache_dir: Path, seed: int = 0, rows: int = ROWS, batch_size: int = BATCH) -> CTRDataModule:
    dm = CTRDataModule("synthetic", rows=rows, batch_size=batch_size, seed=seed, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def search_stage(dm: CTRDataModule, seed: int = 3) -> tuple[SearchModule, list[Callback]]:
    module = SearchModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=DIM, dnn_hidden_units=HIDDEN,
                          warmup_epochs=1, gate={"budget": 0.5}, gate_lr=1e-2, seed=seed)
    return module, [TemperatureAnnealing(start=1.0, end=0.2, steps=15), RegularizerWarmup(steps=10)]


def supernet_stage(dm: CTRDataModule, seed: int = 3) -> tuple[SupernetModule, list[Callback]]:
    module = SupernetModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=DIM, dnn_hidden_units=HIDDEN,
                            seed=seed)
    return module, [SupernetSampler(dim_choices=(1, 2, 4), warmup_steps=6, seed=seed, record=True)]


def retrain_stage(dm: CTRDataModule, seed: int = 3) -> tuple[RetrainModule, list[Callback]]:
    fields = len(dm.schema.embedded_fields)
    group_dims = [[DIM] * fields, [2] * (fields - 2) + [0, 1]]
    generator = torch.Generator().manual_seed(seed)
    centroids = torch.rand(2, fields * DIM, generator=generator).round().tolist()
    module = RetrainModule(dm.schema, dm.vocab_sizes, group_dims=group_dims, centroids=centroids,
                           gate={"budget": 0.5}, backbone="DeepFM", dim=DIM, dnn_hidden_units=HIDDEN, seed=seed)
    return module, []


STAGES = {"search": search_stage, "supernet": supernet_stage, "retrain": retrain_stage}


def trainer(root: Path, callbacks: list[Callback], max_epochs: int = 3, **kwargs: Any) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    kwargs.setdefault("plugins", [AtomicCheckpointIO()])
    kwargs.setdefault("enable_checkpointing", any(isinstance(c, pl.callbacks.ModelCheckpoint) for c in callbacks))
    kwargs.setdefault("accelerator", "cpu")
    kwargs.setdefault("devices", 1)
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=str(root), num_sanity_val_steps=0,
                      deterministic=True, **kwargs)


def fit_stage(stage: str, root: Path, cache_dir: Path, *, epochs: int, every: int = 4, crash: int | None = None,
              ckpt_path: str | None = None, watch: tuple[Callback, ...] = (), accelerator: str = "cpu"):
    """One seeded stage fit with ``last.ckpt`` every ``every`` steps, optionally crashing at step ``crash`` or
    resuming from ``ckpt_path``; ``watch`` adds observing callbacks. Returns the trainer, module, the stage's
    callbacks and the data module."""
    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, callbacks = STAGES[stage](dm)
    checkpoint = pl.callbacks.ModelCheckpoint(dirpath=root / "checkpoints", save_last=True, every_n_train_steps=every)
    extra = [CrashAt(crash)] if crash is not None else []
    tr = trainer(root, [*extra, *callbacks, checkpoint, *watch], max_epochs=epochs, accelerator=accelerator)
    tr.fit(module, dm, ckpt_path=ckpt_path)
    return tr, module, callbacks, dm


def model_state(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Parameters and buffers (gates, BatchNorm statistics, lambda, temperature), without metric states."""
    return {k: v for k, v in module.state_dict().items() if "auroc" not in k and "logloss" not in k}


def flat_tensors(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists (an optimizer's or callback's state) -> {dotted key: leaf}."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flat_tensors(item, f"{prefix}{key}."))
        return out
    if isinstance(value, (list, tuple)) and value and not all(isinstance(v, (int, float)) for v in value):
        out = {}
        for index, item in enumerate(value):
            out.update(flat_tensors(item, f"{prefix}{index}."))
        return out
    return {prefix.rstrip("."): value}


def assert_same(actual: dict[str, Any], expected: dict[str, Any], atol: float = 1e-6, what: str = "") -> None:
    assert sorted(actual) == sorted(expected), f"{what}: keys differ"
    for key, value in expected.items():
        got = actual[key]
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(got, value, rtol=0, atol=atol, msg=lambda m: f"{what} {key}: {m}")
        elif isinstance(value, float):
            assert abs(got - value) <= atol, f"{what} {key}: {got} != {value}"
        else:
            assert got == value, f"{what} {key}: {got!r} != {value!r}"


class CrashAt(Callback):
    """Raises in ``on_train_batch_end`` once ``global_step`` reaches ``step`` (a simulated crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise SimulatedCrash(f"simulated crash at step {trainer.global_step}")


class SimulatedCrash(RuntimeError):
    pass

"""``training``: ``fit_and_test`` and the starting weights that compete for a fine-tuning's best checkpoint
(``fit_and_test(start_competes=True)``, ``checkpoint_start``).

Real data (Criteo 10k), a tiny DeepFM, one torch thread, fixed seeds. A fine-tuning at a destructive learning
rate must end with the weights it started from; a useful one must replace them; a resumed fine-tuning keeps
the starting score it saw before the interruption. A fit whose test split is empty still ends with its best
weights (tiny synthetic data).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.modules import BackboneModule
from ihas_lightning.run_config import TrainerConfig
from ihas_lightning.training import checkpoint_start, fit_and_test, make_trainer

from _retrain_fixtures import GROUP_DIMS, routed_module


@pytest.fixture(scope="module")
def criteo(data_dir: Path, tmp_path_factory) -> CTRDataModule:
    dm = CTRDataModule(str(data_dir / "criteo" / "train-10k.txt"), format="criteo", batch_size=512, seed=0,
                       cache_dir=str(tmp_path_factory.mktemp("criteo-start")))
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def pretrained(criteo: CTRDataModule, tmp_path_factory) -> dict[str, torch.Tensor]:
    """One epoch at a sensible learning rate: the starting point of the fine-tunings below."""
    pl.seed_everything(0)
    module = _module(criteo, lr=3e-3)
    trainer = make_trainer(_args(), tmp_path_factory.mktemp("pretrain"), max_epochs=1)
    trainer.fit(module, criteo)
    return copy.deepcopy(module.state_dict())


def _module(dm: CTRDataModule, lr: float) -> BackboneModule:
    return BackboneModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=4, dnn_hidden_units=(16,), lr=lr, seed=0)


def _args() -> TrainerConfig:
    return TrainerConfig(quiet=True, epochs=2, accelerator="cpu")


def _finetune(dm, state, lr: float, out: Path, epochs: int = 2, start_competes: bool = True,
              resume: str | None = None) -> tuple[BackboneModule, dict[str, float], pl.Trainer]:
    pl.seed_everything(1)
    module = _module(dm, lr)
    module.load_state_dict(state)
    trainer = make_trainer(_args(), out, max_epochs=epochs)
    scores = fit_and_test(module, dm, trainer, ckpt_path=resume, start_competes=start_competes)
    return module, scores, trainer


def _validate(dm: CTRDataModule, state, out: Path) -> float:
    module = _module(dm, 1e-3)
    module.load_state_dict(state)
    trainer = make_trainer(_args(), out)
    return trainer.validate(module, dm, verbose=False)[0]["val_auc"]


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_destructive_finetuning_keeps_the_starting_weights(criteo, pretrained, tmp_path: Path) -> None:
    start_auc = _validate(criteo, pretrained, tmp_path / "val")
    module, scores, trainer = _finetune(criteo, pretrained, lr=1.0, out=tmp_path / "ft")
    assert _equal(module.state_dict(), pretrained)          # tested with the weights it started from
    assert scores["val_auc"] == pytest.approx(start_auc, abs=1e-6)
    assert trainer.checkpoint_callback.best_model_path.endswith("best.ckpt")
    assert trainer.current_epoch == 2 and (tmp_path / "ft" / "checkpoints" / "last.ckpt").exists()
    # the control: without competing, the same fine-tuning ends at one of its (worse) epochs
    control, control_scores, _ = _finetune(criteo, pretrained, lr=1.0, out=tmp_path / "ctl", start_competes=False)
    assert not _equal(control.state_dict(), pretrained)
    assert control_scores["val_auc"] < start_auc - 0.01


def test_a_useful_finetuning_replaces_the_start(criteo, pretrained, tmp_path: Path) -> None:
    """From random weights (AUC about 0.5) one epoch at a sensible rate must win."""
    pl.seed_everything(0)
    fresh = _module(criteo, 3e-3).state_dict()
    start_auc = _validate(criteo, fresh, tmp_path / "val")
    module, scores, trainer = _finetune(criteo, fresh, lr=3e-3, out=tmp_path / "ft", epochs=1)
    assert scores["val_auc"] > start_auc + 0.05
    assert not _equal(module.state_dict(), fresh)
    saved = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    assert saved["epoch"] == 0 and saved["global_step"] > 0   # an epoch's checkpoint, not the starting one


def test_a_resumed_finetuning_remembers_the_starting_score(criteo, pretrained, tmp_path: Path) -> None:
    start_auc = _validate(criteo, pretrained, tmp_path / "val")
    out = tmp_path / "ft"
    _finetune(criteo, pretrained, lr=1.0, out=out, epochs=1)              # interrupted after one epoch
    last = str(out / "checkpoints" / "last.ckpt")
    module, scores, trainer = _finetune(criteo, pretrained, lr=1.0, out=out, epochs=2, resume=last)
    assert trainer.current_epoch == 2
    assert scores["val_auc"] == pytest.approx(start_auc, abs=1e-6)
    assert _equal(module.state_dict(), pretrained)


def test_checkpoint_start_needs_a_monitored_metric(criteo, pretrained, tmp_path: Path) -> None:
    module = _module(criteo, 1e-3)
    trainer = make_trainer(_args(), tmp_path, monitor=None)
    assert checkpoint_start(module, criteo, trainer) is None
    assert not (tmp_path / "checkpoints").exists()


def test_fit_and_test_with_an_empty_test_split_keeps_the_best_weights(retrain_dm, tmp_path: Path) -> None:
    """A small group of the separate-models variant may have no test rows (Criteo 10k: 11 training rows):
    no test figures then, but the model still ends with its best validation epoch's weights."""
    splits = {"train": retrain_dm.split("train").take(np.arange(600)),
              "val": retrain_dm.split("val").take(np.arange(150)),
              "test": retrain_dm.split("test").take(np.arange(0))}
    sub = CTRDataModule.from_encoded(splits, retrain_dm.encoder, batch_size=128)
    module = routed_module(retrain_dm, group_dims=GROUP_DIMS[:1]).train()
    trainer = make_trainer(TrainerConfig(quiet=True, epochs=3, accelerator="cpu"), tmp_path, max_epochs=3)
    scores = fit_and_test(module, sub, trainer)
    assert "test_auc" not in scores and 0.0 < scores["val_auc"] < 1.0
    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, best[k]) for k, v in module.state_dict().items())


def test_the_logging_interval_fits_a_short_epoch_and_logs_every_epoch(criteo, tmp_path: Path) -> None:
    # Criteo 10k at batches of 512: 8,000 training rows are 16 steps an epoch, more than the interval (10), which
    # stays; at batches of 2048 an epoch is 4 steps, and the interval falls to 4: a TensorBoard point per epoch,
    # and no Lightning warning about the interval.
    import warnings

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ihas_lightning.training import LOG_EVERY_N_STEPS
    for batch_size, interval in ((512, LOG_EVERY_N_STEPS), (2048, 4)):
        dm = CTRDataModule(criteo.data, format="criteo", batch_size=batch_size, seed=0, cache_dir=criteo.cache_dir)
        dm.prepare_data()
        dm.setup("fit")
        out = tmp_path / str(batch_size)
        trainer = make_trainer(_args(), out, max_epochs=2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(_module(dm, 1e-3), dm)
        assert trainer.log_every_n_steps == interval
        assert not [w for w in caught if "log_every_n_steps" in str(w.message)]
        events = EventAccumulator(str(out / "tensorboard")).Reload()
        steps = [e.step for e in events.Scalars("train_loss")] if "train_loss" in events.Tags()["scalars"] else []
        assert len(steps) == trainer.global_step // interval

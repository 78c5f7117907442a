"""Crash-and-resume parity (issue 8): a run killed mid-epoch and resumed from ``last.ckpt`` ends exactly where an
uninterrupted run ends, for the search stage, the supernet and the retraining stage; and a checkpoint write
that fails midway leaves the previous checkpoint loadable.

Mid-epoch parity needs the data stream to resume at the next unseen batch: ``StreamLoader`` hands Lightning
``BatchStream``'s state (epoch, batches yielded), which Lightning stores under ``loops.fit_loop.state_dict.
combined_loader`` and restores before the resumed epoch starts.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from _tiny import (STAGES, STEPS_PER_EPOCH, SimulatedCrash, assert_same, fit_stage, flat_tensors,
                   model_state, tiny_dm, trainer)

EVERY = 4          # checkpoint every 4 training steps
CRASH = 19         # crash after step 19: last.ckpt is from step 16, i.e. 4 batches into epoch 1
EPOCHS = 3


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ihas_cache")


def _fit(stage: str, root: Path, cache_dir: Path, crash: int | None = None, ckpt_path: str | None = None):
    return fit_stage(stage, root, cache_dir, epochs=EPOCHS, every=EVERY, crash=crash, ckpt_path=ckpt_path)


def _callback_state(callbacks) -> dict:
    return flat_tensors({type(c).__name__: c.state_dict() for c in callbacks})


@pytest.mark.parametrize("stage", ["search", "supernet", "retrain"])
def test_crash_mid_epoch_and_resume_matches_uninterrupted_run(stage: str, tmp_path: Path, cache_dir: Path) -> None:
    whole_trainer, whole, whole_callbacks, dm = _fit(stage, tmp_path / "whole", cache_dir)
    assert whole_trainer.global_step == EPOCHS * STEPS_PER_EPOCH

    with pytest.raises(SimulatedCrash):
        _fit(stage, tmp_path / "crashed", cache_dir, crash=CRASH)
    last = tmp_path / "crashed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == 16 and saved["epoch"] == 1                       # mid-epoch 1
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "yielded": 16 - 12}]

    resumed_trainer, resumed, resumed_callbacks, _ = _fit(stage, tmp_path / "resumed", cache_dir,
                                                          ckpt_path=str(last))
    assert resumed_trainer.global_step == whole_trainer.global_step

    # weights, gates (temperature, lambda, BatchNorm statistics are buffers), router, optimizer
    assert_same(model_state(resumed), model_state(whole), what="model state")
    assert_same(flat_tensors(resumed_trainer.optimizers[0].state_dict()),
                flat_tensors(whole_trainer.optimizers[0].state_dict()), what="optimizer state")
    # callbacks: schedule step counters, sampler generator and step
    assert_same(_callback_state(resumed_callbacks), _callback_state(whole_callbacks), what="callback state")
    # validation metrics of the last epoch, and a fresh validation pass
    metrics = {k: float(v) for k, v in whole_trainer.callback_metrics.items() if k.startswith("val_")}
    assert "val_auc" in metrics and "val_logloss" in metrics
    assert_same({k: float(resumed_trainer.callback_metrics[k]) for k in metrics}, metrics, what="val metrics")
    assert all(map(math.isfinite, metrics.values()))

    if stage == "search":
        assert whole.gates.temperature.item() < 1.0                                   # annealing really ran
        assert_same({"noise": resumed._noise.get_state()}, {"noise": whole._noise.get_state()}, what="noise")
        assert resumed.regularizer_scale == whole.regularizer_scale == 1.0
    if stage == "supernet":
        whole_sampler, resumed_sampler = whole_callbacks[0], resumed_callbacks[0]
        assert len(whole_sampler.history) == EPOCHS * STEPS_PER_EPOCH
        # the resumed run drew exactly the sub-architectures the uninterrupted one drew after step 16
        assert resumed_sampler.history == whole_sampler.history[16:]
        assert len(set(whole_sampler.history)) > 5


def test_loader_state_skips_consumed_batches(tmp_path: Path, cache_dir: Path) -> None:
    """The batches a resumed epoch yields are the uninterrupted epoch's remaining ones, in order."""
    dm = tiny_dm(cache_dir)
    loader = dm.train_dataloader()
    full = [b["sparse"].clone() for b in loader]
    assert len(full) == STEPS_PER_EPOCH
    iterator = iter(loader)
    head = [next(iterator)["sparse"].clone() for _ in range(5)]
    state = loader.state_dict()
    assert state == {"epoch": 0, "yielded": 5}
    fresh = tiny_dm(cache_dir).train_dataloader()
    fresh.load_state_dict(state)
    tail = [b["sparse"] for b in fresh]
    assert len(head) + len(tail) == len(full)
    for got, expected in zip(head + tail, full):
        assert torch.equal(got, expected)
    assert len(list(fresh)) == STEPS_PER_EPOCH                                        # the skip applies once


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path: Path, cache_dir: Path, monkeypatch) -> None:
    """``torch.save`` writes half of the file and then fails (disk full): ``last.ckpt`` is still the previous,
    complete checkpoint, no partial file is left behind, and training resumes from it."""
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] < 3:
            return real_save(obj, f, *args, **kwargs)
        import io
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(torch, "save", failing_save)
    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, callbacks = STAGES["search"](dm)
    folder = tmp_path / "checkpoints"
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=EVERY, save_top_k=0)
    with pytest.raises(OSError, match="No space left"):
        trainer(tmp_path, [*callbacks, checkpoint], max_epochs=EPOCHS).fit(module, dm)
    monkeypatch.setattr(torch, "save", real_save)

    assert sorted(p.name for p in folder.iterdir()) == ["last.ckpt"]                # no .partial left over
    previous = torch.load(folder / "last.ckpt", weights_only=True)
    assert previous["global_step"] == 2 * EVERY                                       # the second save
    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, callbacks = STAGES["search"](dm)
    resumed = trainer(tmp_path / "resumed", callbacks, max_epochs=1)
    resumed.fit(module, dm, ckpt_path=str(folder / "last.ckpt"))
    assert resumed.global_step == STEPS_PER_EPOCH


def test_lightning_default_io_can_leave_a_truncated_checkpoint(tmp_path: Path, cache_dir: Path,
                                                               monkeypatch) -> None:
    """Why ``AtomicCheckpointIO`` exists: Lightning's default writes to the system temp folder and moves the file
    into place; across filesystems that move is a copy, and a copy cut short truncates ``last.ckpt``."""
    import shutil

    from fsspec.implementations import local

    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, _ = STAGES["retrain"](dm)
    folder = tmp_path / "checkpoints"
    calls = {"n": 0}

    def interrupted_move(src, dst, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            return shutil.move(src, dst)
        data = Path(src).read_bytes()
        Path(dst).write_bytes(data[: len(data) // 2])                                 # cross-device copy, cut short
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(local.shutil, "move", interrupted_move)
    checkpoint = ModelCheckpoint(dirpath=folder, save_last=True, every_n_train_steps=EVERY, save_top_k=0)
    default_io = trainer(tmp_path, [checkpoint], max_epochs=1, plugins=None)
    with pytest.raises(OSError):
        default_io.fit(module, dm)
    with pytest.raises(Exception):
        torch.load(folder / "last.ckpt", weights_only=True)

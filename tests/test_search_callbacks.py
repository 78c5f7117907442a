"""The search stage's callbacks: state keys, validation, schedule values, checkpointed state and
the TensorBoard views of ``GateStatisticsLogger``."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from ihas_lightning.callbacks import GateStatisticsLogger, RegularizerWarmup, TemperatureAnnealing
from ihas_lightning.modules import SearchModule
from _search_fixtures import (  # tests/ is on sys.path: pytest's rootdir-relative import
    STEPS_PER_EPOCH, schedule_callbacks, tiny_datamodule, tiny_search, tiny_trainer,
)


def test_callback_state_keys_differ_with_their_args() -> None:
    assert TemperatureAnnealing(steps=100).state_key != TemperatureAnnealing(steps=200).state_key
    assert TemperatureAnnealing(end=0.1).state_key != TemperatureAnnealing(end=0.2).state_key
    assert TemperatureAnnealing(steps=100).state_key == TemperatureAnnealing(steps=100).state_key
    assert RegularizerWarmup(steps=10).state_key != RegularizerWarmup(steps=20).state_key
    assert RegularizerWarmup(start=0.0).state_key != RegularizerWarmup(start=0.5).state_key
    assert GateStatisticsLogger(every_n_epochs=1).state_key != GateStatisticsLogger(every_n_epochs=2).state_key
    # TemperatureAnnealing(steps=100) and RegularizerWarmup(steps=100) must not collide either
    assert TemperatureAnnealing(steps=100).state_key != RegularizerWarmup(steps=100).state_key


@pytest.mark.parametrize(("make", "bad"), [
    (lambda: TemperatureAnnealing(start=-0.5), "-0.5"),
    (lambda: TemperatureAnnealing(end=0.0), "end=0.0"),
    (lambda: TemperatureAnnealing(start=float("nan")), "nan"),
    (lambda: TemperatureAnnealing(steps=0), "got 0"),
    (lambda: RegularizerWarmup(steps=-3), "-3"),
    (lambda: RegularizerWarmup(start=1.5), "1.5"),
    (lambda: GateStatisticsLogger(every_n_epochs=0), "got 0"),
])
def test_callback_validation_errors_show_the_bad_value(make, bad: str) -> None:
    with pytest.raises(ValueError, match=bad.replace(".", r"\.")):
        make()


def test_schedule_values_at_given_steps() -> None:
    anneal = TemperatureAnnealing(start=2 / 3, end=0.1, steps=100)
    assert anneal.value(0) == pytest.approx(2 / 3)
    assert anneal.value(50) == pytest.approx(math.sqrt(2 / 3 * 0.1))        # geometric mean halfway: 0.2582
    assert anneal.value(25) == pytest.approx((2 / 3) * (0.15 ** 0.25))      # 0.4148
    assert anneal.value(100) == pytest.approx(0.1)
    assert anneal.value(10_000) == pytest.approx(0.1)
    warm = RegularizerWarmup(steps=10, start=0.2)
    assert [round(warm.value(s), 6) for s in (0, 5, 10, 50)] == [0.2, 0.6, 1.0, 1.0]


def test_schedules_count_gated_steps_only_and_drive_the_module(tmp_path, cache_dir) -> None:
    """One warm-up epoch (13 steps) leaves temperature and scale alone; after 13 gated steps each counter
    is 13 and the module holds ``value(12)`` (the value applied before the last step)."""
    pl.seed_everything(0)
    anneal, warm = TemperatureAnnealing(start=0.5, end=0.05, steps=20), RegularizerWarmup(steps=10, start=0.1)
    module = tiny_search(tiny_datamodule(cache_dir), gate={"budget": 0.5, "temperature": 0.5})

    class Watch(Callback):
        def __init__(self) -> None:
            self.values: list[tuple[float, float]] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.values.append((float(pl_module.gates.temperature), pl_module.regularizer_scale))

    watch = Watch()
    trainer = tiny_trainer(tmp_path, [anneal, warm, watch], max_epochs=2, limit_val_batches=0)
    trainer.fit(module, tiny_datamodule(cache_dir))
    assert anneal.step == warm.step == STEPS_PER_EPOCH
    assert watch.values[:STEPS_PER_EPOCH] == [(0.5, 1.0)] * STEPS_PER_EPOCH
    gated = watch.values[STEPS_PER_EPOCH:]
    assert [t for t, _ in gated] == pytest.approx([anneal.value(s) for s in range(STEPS_PER_EPOCH)], rel=1e-6)
    assert [s for _, s in gated] == pytest.approx([warm.value(s) for s in range(STEPS_PER_EPOCH)])
    assert float(module.gates.temperature) == pytest.approx(anneal.value(STEPS_PER_EPOCH - 1), rel=1e-6)


def test_schedules_refuse_a_module_without_gates(tmp_path, cache_dir) -> None:
    from ihas_lightning.modules import BackboneModule

    dm = tiny_datamodule(cache_dir)
    module = BackboneModule(dm.schema, dm.vocab_sizes, dim=8, dnn_hidden_units=(16,))
    with pytest.raises(TypeError, match="BackboneModule"):
        tiny_trainer(tmp_path, [TemperatureAnnealing()], max_epochs=1, limit_val_batches=0).fit(module, dm)


def test_callback_state_round_trips_through_state_dict_and_a_weights_only_checkpoint(tmp_path, cache_dir) -> None:
    anneal = TemperatureAnnealing(start=0.6, end=0.2, steps=7)
    anneal.step = 17
    copy = TemperatureAnnealing(start=0.6, end=0.2, steps=7)
    copy.load_state_dict(anneal.state_dict())
    assert copy.step == 17 and copy.value(copy.step) == anneal.value(17)
    stats = GateStatisticsLogger()
    stats.logged = 4
    other = GateStatisticsLogger()
    other.load_state_dict(stats.state_dict())
    assert other.logged == 4

    pl.seed_everything(0)
    callbacks = [TemperatureAnnealing(steps=9), RegularizerWarmup(steps=5), GateStatisticsLogger()]
    checkpointer = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    module = tiny_search(tiny_datamodule(cache_dir))
    tiny_trainer(tmp_path, [*callbacks, checkpointer], max_epochs=2).fit(module, tiny_datamodule(cache_dir))
    checkpoint = torch.load(tmp_path / "last.ckpt", weights_only=True)    # plain tensors and containers only
    for callback in callbacks:
        assert checkpoint["callbacks"][callback.state_key] == callback.state_dict()
    assert checkpoint["callbacks"][callbacks[0].state_key] == {"step": STEPS_PER_EPOCH}
    assert checkpoint["callbacks"][callbacks[2].state_key] == {"logged": 0}   # no TensorBoard logger here
    fresh = [TemperatureAnnealing(steps=9), RegularizerWarmup(steps=5), GateStatisticsLogger()]
    for callback in fresh:
        callback.load_state_dict(checkpoint["callbacks"][callback.state_key])
    assert [c.state_dict() for c in fresh] == [c.state_dict() for c in callbacks]
    assert isinstance(checkpoint["ihas_search"]["noise_state"], torch.Tensor)
    assert torch.equal(checkpoint["state_dict"]["gates.controller.lam"], module.gates.controller.lam)
    # the module comes back from the checkpoint with its gates
    loaded = SearchModule.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert torch.equal(loaded.gates.out.weight, module.gates.out.weight)
    assert loaded.gate_config == module.gate_config


def test_gate_statistics_logger_writes_heatmap_and_histograms(tmp_path, cache_dir) -> None:
    from pytorch_lightning.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        IMAGES,
        SCALARS,
        EventAccumulator,
    )

    pl.seed_everything(0)
    stats = GateStatisticsLogger()
    module = tiny_search(tiny_datamodule(cache_dir))
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="")
    trainer = tiny_trainer(tmp_path, [stats], max_epochs=3, logger=logger, log_every_n_steps=5)
    trainer.fit(module, tiny_datamodule(cache_dir))
    assert stats.logged == 2                       # epochs 1 and 2 (epoch 0 is warm-up: no gate statistics)
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={IMAGES: 0, HISTOGRAMS: 0, SCALARS: 0})
    events.Reload()
    tags = events.Tags()
    assert "gates/open_probability" in tags["images"]
    assert {"gates/mean_prob", "gates/active_dims_per_field"} <= set(tags["histograms"])
    images = events.Images("gates/open_probability")
    assert len(images) == 2 and images[0].width > 100 and images[0].height > 50
    assert images[0].encoded_image_string.startswith(b"\x89PNG")
    (first, _) = events.Histograms("gates/mean_prob")
    fields, dim = len(module.schema.embedded_fields), 8
    assert first.histogram_value.num == fields * dim
    assert 0.0 <= first.histogram_value.min <= first.histogram_value.max <= 1.0
    active = events.Histograms("gates/active_dims_per_field")[-1].histogram_value
    assert active.num == fields and 2.0 <= active.min <= active.max <= dim
    # the module's own scalars are there too
    assert {"val_decided_share", "val_mean_active_dims", "gates/lambda"} <= set(tags["scalars"])


# -- CLI ---------------------------------------------------------------------------------------------



class _ValAucPerEpoch(Callback):
    def __init__(self) -> None:
        self.auc: list[float] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.auc.append(float(trainer.callback_metrics["val_auc"]))


def test_best_searched_checkpoint_keeps_the_best_gated_epoch(tmp_path, cache_dir) -> None:
    """Among the gated epochs (never a warm-up epoch, whose gates are untrained) the kept one has the best
    validation AUC; a warm-up epoch with a higher AUC does not count."""
    from ihas_lightning.callbacks import BestSearchedCheckpoint

    dm = tiny_datamodule(cache_dir)
    module = tiny_search(dm, warmup_epochs=2, lr=3e-2)             # a large lr: AUC moves from epoch to epoch
    record, best = _ValAucPerEpoch(), BestSearchedCheckpoint(tmp_path)
    tiny_trainer(tmp_path, [best, record, *schedule_callbacks()], max_epochs=5).fit(module, dm)
    assert len(record.auc) == 5
    gated = record.auc[2:]
    kept = torch.load(tmp_path / "best.ckpt", weights_only=True)
    assert kept["epoch"] == 2 + int(np.argmax(gated))
    assert float(best.best_model_score) == pytest.approx(max(gated))
    assert kept["epoch"] >= 2
    with pytest.raises(ValueError, match="monitor"):
        BestSearchedCheckpoint(tmp_path, monitor="")

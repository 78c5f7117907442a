"""Every stateful callback of ``ihas_lightning.callbacks`` survives a checkpoint (issue 8).

* its ``state_dict()`` lands in the checkpoint under its ``state_key``, readable with
  ``torch.load(weights_only=True)`` (plain values only), and a resumed run's instance gets exactly it back;
* two instances with different arguments have different state keys;
* resuming a fit with a callback whose state the checkpoint lacks raises ``MissingCallbackStateError``
  naming the key (Lightning itself only warns); fresh runs and ``validate(ckpt_path=...)`` are unaffected.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import TensorBoardLogger

import ihas_lightning.callbacks as callbacks_package
from ihas_lightning.callbacks import (GateStatisticsLogger, MissingCallbackStateError, RegularizerWarmup,
                                      StatefulCallback, SupernetSampler, TemperatureAnnealing)

from _tiny import STAGES, STEPS_PER_EPOCH, tiny_dm, trainer

# callback class -> (stage it runs in, two argument sets that must give different state keys)
CASES = {
    TemperatureAnnealing: ("search", {"start": 1.0, "end": 0.2, "steps": 15}, {"start": 1.0, "end": 0.3, "steps": 15}),
    RegularizerWarmup: ("search", {"steps": 10}, {"steps": 10, "start": 0.5}),
    GateStatisticsLogger: ("search", {"every_n_epochs": 1}, {"every_n_epochs": 2}),
    SupernetSampler: ("supernet", {"dim_choices": (1, 2, 4), "seed": 3}, {"dim_choices": (1, 2, 4), "seed": 4}),
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ihas_cache")


def test_every_stateful_callback_is_covered() -> None:
    """Any callback in the package with its own state must be a StatefulCallback and listed in CASES."""
    stateful = {cls for _, cls in inspect.getmembers(callbacks_package, inspect.isclass)
                if issubclass(cls, Callback) and cls is not StatefulCallback
                and cls.state_dict is not Callback.state_dict}
    # OptunaPruning (PIM/Optuna work, tested with its study) needs a live trial; its state is per trial.
    # BestSearchedCheckpoint is a ModelCheckpoint: Lightning's own checkpointed state (best path and score).
    # DimensionSearch runs inside a user's DeepCTR-Torch module, not the tiny stages here; its resume is checked
    # in tests/test_dimension_search.py::test_resume_continues_the_search_exactly.
    not_here = {"OptunaPruning", "BestSearchedCheckpoint", "DimensionSearch"}
    assert all(issubclass(cls, StatefulCallback) for cls in stateful if cls.__name__ == "DimensionSearch")
    stateful = {cls for cls in stateful if cls.__name__ not in not_here}
    assert stateful == set(CASES)
    assert all(issubclass(cls, StatefulCallback) for cls in stateful)


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_state_round_trips_through_a_weights_only_checkpoint(cls, tmp_path: Path, cache_dir: Path) -> None:
    stage, args, _ = CASES[cls]
    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, _ = STAGES[stage](dm)
    callback = cls(**args)
    logger = TensorBoardLogger(str(tmp_path), name="tb") if cls is GateStatisticsLogger else False
    first = trainer(tmp_path, [callback], max_epochs=2, logger=logger)
    first.fit(module, dm)
    state = callback.state_dict()
    # the state really moved: 12 gated steps (warm-up epoch 0), 24 sampled steps, 1 logged validation
    # (gates on in epoch 1)
    expected = {TemperatureAnnealing: {"step": STEPS_PER_EPOCH}, RegularizerWarmup: {"step": STEPS_PER_EPOCH},
                GateStatisticsLogger: {"logged": 1}}.get(cls)
    if expected is not None:
        assert state == expected
    else:
        assert state["step"] == 2 * STEPS_PER_EPOCH and state["seed"] == 3
        assert isinstance(state["generator_state"], list)

    path = tmp_path / "run.ckpt"
    first.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)                      # plain values: no pickle needed
    assert checkpoint["callbacks"][callback.state_key] == state

    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, _ = STAGES[stage](dm)
    restored = cls(**args)
    assert restored.state_dict() != state
    trainer(tmp_path / "resumed", [restored], max_epochs=2, logger=False).fit(module, dm, ckpt_path=str(path))
    assert restored.state_dict() == state                                 # max_epochs reached: nothing ran


@pytest.mark.parametrize("cls", list(CASES), ids=lambda c: c.__name__)
def test_different_arguments_give_different_state_keys(cls) -> None:
    _, args, other = CASES[cls]
    assert cls(**args).state_key == cls(**args).state_key
    assert cls(**args).state_key != cls(**other).state_key
    assert cls.__name__ in cls(**args).state_key


def test_resuming_without_a_callbacks_state_is_an_error(tmp_path: Path, cache_dir: Path) -> None:
    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, _ = STAGES["search"](dm)
    saved = TemperatureAnnealing(start=1.0, end=0.2, steps=15)
    first = trainer(tmp_path, [saved], max_epochs=1)                     # a fresh run: no error
    first.fit(module, dm)
    path = tmp_path / "run.ckpt"
    first.save_checkpoint(path)

    missing = RegularizerWarmup(steps=10)                                   # not in the saved run
    with pytest.raises(MissingCallbackStateError) as error:
        trainer(tmp_path / "b", [TemperatureAnnealing(start=1.0, end=0.2, steps=15), missing],
                max_epochs=2).fit(STAGES["search"](dm)[0], dm, ckpt_path=str(path))
    message = str(error.value)
    assert missing.state_key in message and saved.state_key in message and "same callback arguments" in message

    changed = TemperatureAnnealing(start=1.0, end=0.2, steps=30)            # same class, other arguments
    with pytest.raises(MissingCallbackStateError, match="steps.: 30"):
        trainer(tmp_path / "c", [changed], max_epochs=2).fit(STAGES["search"](dm)[0], dm, ckpt_path=str(path))

    # evaluating from the checkpoint is not resuming: no error
    results = trainer(tmp_path / "d", [missing], max_epochs=2).validate(STAGES["search"](dm)[0], dm,
                                                                         ckpt_path=str(path))
    assert 0.0 <= results[0]["val_auc"] <= 1.0

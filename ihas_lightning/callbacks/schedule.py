"""What the schedule callbacks share: a step counter that survives checkpoints under a unique state key."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from .stateful import StatefulCallback

__all__ = ["GatedStepSchedule"]


class GatedStepSchedule(StatefulCallback):
    """Counts training steps taken with the gates on; subclasses turn the count into a value.

    The counter (not the value) is the state: a resumed run recomputes the same value at the same step.
    """

    def __init__(self) -> None:
        self.step = 0

    def _identity(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(**self._identity())

    def value(self, step: int) -> float:
        raise NotImplementedError

    def apply(self, pl_module: pl.LightningModule, value: float) -> None:
        raise NotImplementedError

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not hasattr(pl_module, "gates"):
            raise TypeError(f"{type(self).__name__} needs a module with gates (SearchModule), "
                            f"got {type(pl_module).__name__}")
        if not pl_module.gates_active:
            return
        self.apply(pl_module, self.value(self.step))
        self.step += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict["step"])

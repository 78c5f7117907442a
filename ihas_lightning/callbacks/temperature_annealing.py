"""Anneal the hard-concrete temperature of the gates from soft to nearly binary."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from .schedule import GatedStepSchedule

__all__ = ["TemperatureAnnealing"]


class TemperatureAnnealing(GatedStepSchedule):
    """Exponential decay ``tau = start * (end / start) ** min(step / steps, 1)`` over gated steps.

    A high temperature keeps gate samples soft while the gate network learns; a low one makes training
    samples close to the deterministic masks used after the search (Louizos et al. 2018 use 2/3 fixed;
    annealing is the usual Gumbel/concrete practice, Jang et al. 2017). See docs/design.md#23-search-schedule.

    Args:
        start: temperature when the gates switch on.
        end: final temperature.
        steps: gated training steps over which to decay.
    """

    def __init__(self, start: float = 2 / 3, end: float = 0.1, steps: int = 1000) -> None:
        super().__init__()
        if not (math.isfinite(start) and start > 0 and math.isfinite(end) and end > 0):
            raise ValueError(f"temperatures must be finite and > 0, got start={start}, end={end}")
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.start, self.end, self.steps = float(start), float(end), int(steps)

    def _identity(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "steps": self.steps}

    def value(self, step: int) -> float:
        return self.start * (self.end / self.start) ** min(step / self.steps, 1.0)

    @override
    def apply(self, pl_module: pl.LightningModule, value: float) -> None:
        pl_module.gates.set_temperature(value)

"""Warm the gate regularizers up linearly after the gates switch on."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from .schedule import GatedStepSchedule

__all__ = ["RegularizerWarmup"]


class RegularizerWarmup(GatedStepSchedule):
    """Scale the sparsity and bi-polarization terms from ``start`` to 1 over ``steps`` gated steps.

    Full regularization from the first gated step closes gates before the gate network has learned which
    samples need which dimensions. See docs/design.md#23-search-schedule.

    Args:
        steps: gated training steps to reach full weight.
        start: initial scale in [0, 1].
    """

    def __init__(self, steps: int = 200, start: float = 0.0) -> None:
        super().__init__()
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if not 0.0 <= start <= 1.0:
            raise ValueError(f"start must be in [0, 1], got {start}")
        self.steps, self.start = int(steps), float(start)

    def _identity(self) -> dict[str, Any]:
        return {"steps": self.steps, "start": self.start}

    def value(self, step: int) -> float:
        return self.start + (1.0 - self.start) * min(step / self.steps, 1.0)

    @override
    def apply(self, pl_module: pl.LightningModule, value: float) -> None:
        pl_module.regularizer_scale = value

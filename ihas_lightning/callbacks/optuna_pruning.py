"""Prune an Optuna trial from inside a ``pytorch_lightning`` Trainer (fine-tuning trials of a single objective).

``optuna_integration.PyTorchLightningPruningCallback`` imports ``lightning.pytorch``, and a callback of that
package breaks a ``pytorch_lightning`` Trainer (the two packages' classes differ): this is the same idea
on ``pytorch_lightning.Callback``. Multi-objective studies cannot prune (``Trial.report`` raises for them),
so such a trial is refused when the callback is built. See docs/design.md#6-pim-co-design.
"""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from typing_extensions import override

__all__ = ["OptunaPruning"]


class OptunaPruning(Callback):
    """At every validation end, report ``monitor`` to the trial and stop it if the study's pruner says so.

    The value is reported at step = the epoch (or the global step with ``report_every="step"``, for runs of one
    long epoch with ``val_check_interval``). When the pruner decides to prune, ``optuna.TrialPruned`` is raised
    out of ``trainer.fit``; ``study.optimize`` records the trial as PRUNED. The decision is made on rank 0 and
    broadcast, so every DDP rank stops together.

    Args:
        trial: the running trial (``optuna.Trial``) of a single-objective study.
        monitor: the logged metric to report, e.g. ``"val_auc"``.
        report_every: ``"epoch"`` or ``"step"``: what the reported step counts.
        strict: raise if ``monitor`` was not logged (otherwise that validation is skipped).

    Example:
        >>> def objective(trial):
        ...     module = SupernetModule(dm.schema, dm.vocab_sizes, lr=trial.suggest_float("lr", 1e-4, 1e-2, log=True))
        ...     trainer = pl.Trainer(max_epochs=5, callbacks=[OptunaPruning(trial, monitor="val_auc")])
        ...     trainer.fit(module, dm)
        ...     return trainer.callback_metrics["val_auc"].item()
        >>> optuna.create_study(direction="maximize", pruner=optuna.pruners.MedianPruner()).optimize(objective, 20)
    """

    def __init__(self, trial: optuna.trial.BaseTrial, monitor: str = "val_auc", report_every: str = "epoch",
                 strict: bool = True) -> None:
        if not isinstance(trial, optuna.trial.BaseTrial):
            raise TypeError(f"trial must be an optuna Trial, got {type(trial).__name__}")
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"monitor must be a metric name, got {monitor!r}")
        if report_every not in ("epoch", "step"):
            raise ValueError(f"report_every must be 'epoch' or 'step', got {report_every!r}")
        study = getattr(trial, "study", None)
        directions = getattr(study, "directions", ())
        if len(directions) > 1:
            raise ValueError(f"OptunaPruning needs a single-objective study; study {study.study_name!r} has "
                             f"{len(directions)} objectives, and Optuna cannot prune multi-objective trials")
        self.trial, self.monitor, self.report_every, self.strict = trial, monitor, report_every, strict
        self.reported: dict[int, float] = {}
        self.pruned_at: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(monitor=self.monitor, trial=getattr(self.trial, "number", None))

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            if self.strict:
                raise RuntimeError(f"OptunaPruning: metric {self.monitor!r} was not logged; logged metrics: "
                                   f"{sorted(trainer.callback_metrics)}")
            return
        step = trainer.current_epoch if self.report_every == "epoch" else trainer.global_step
        prune = False
        if trainer.is_global_zero:
            score = float(value)
            if math.isfinite(score) and step not in self.reported:  # Optuna keeps the first value of a step
                self.trial.report(score, step=step)
                self.reported[step] = score
            prune = self.trial.should_prune()
        prune = trainer.strategy.broadcast(prune, src=0)
        if prune:
            self.pruned_at = step
            raise optuna.TrialPruned(f"trial {getattr(self.trial, 'number', '?')} pruned at "
                                     f"{self.report_every} {step}: {self.monitor}={float(value):.6f}")

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "reported": {str(k): v for k, v in self.reported.items()},
                "pruned_at": self.pruned_at}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reported = {int(k): float(v) for k, v in state_dict.get("reported", {}).items()}
        self.pruned_at = state_dict.get("pruned_at")

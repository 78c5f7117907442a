"""TensorBoard views of the gates: probability histograms and a field x dimension heatmap."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from typing_extensions import override

from .stateful import StatefulCallback

__all__ = ["GateStatisticsLogger"]


class GateStatisticsLogger(StatefulCallback):
    """After each validation, logs the mean open-probability of every (field, dimension) as a heatmap
    image and a histogram, and the active dimensions per field as a histogram.

    Scalars (distinct masks, decided share, active dimensions) are logged by ``SearchModule`` itself; this
    callback adds the views that need the TensorBoard writer.

    Args:
        every_n_epochs: log every n-th validation.
    """

    def __init__(self, every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        self.every_n_epochs = every_n_epochs
        self.logged = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_epochs=self.every_n_epochs)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        summary = getattr(pl_module, "last_val_summary", None)
        if summary is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        experiments = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not experiments or not trainer.is_global_zero:
            return
        mean_prob = summary["mean_prob"].float().cpu()                                          # (F, D)
        figure = gate_heatmap(mean_prob, list(pl_module.schema.embedded_fields))
        for writer in experiments:
            writer.add_figure("gates/open_probability", figure, global_step=trainer.global_step)
            writer.add_histogram("gates/mean_prob", mean_prob, global_step=trainer.global_step)
            active = list(summary["mean_active_dims_per_field"].values())
            writer.add_histogram("gates/active_dims_per_field", torch.tensor(active),
                                 global_step=trainer.global_step)
        self.logged += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"logged": self.logged}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logged = int(state_dict["logged"])


def gate_heatmap(mean_prob: Any, field_names: list[str]) -> Any:
    """A matplotlib figure of open-probabilities, fields on rows and dimensions on columns."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields, dims = mean_prob.shape
    figure, axis = plt.subplots(figsize=(1.0 + 0.35 * dims, 1.0 + 0.3 * fields))
    image = axis.imshow(mean_prob.numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axis.set_yticks(range(fields), field_names, fontsize=7)
    axis.set_xticks(range(dims), [str(k + 1) for k in range(dims)], fontsize=7)
    axis.set_xlabel("dimension")
    axis.set_title("gate open-probability")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    return figure

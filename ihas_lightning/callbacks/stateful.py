"""What our stateful callbacks share: resuming without their saved state is an error, not a warning."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.trainer.states import TrainerFn
from typing_extensions import override

__all__ = ["MissingCallbackStateError", "StatefulCallback"]


class MissingCallbackStateError(KeyError):
    """A run resumed from a checkpoint that holds no state for one of its stateful callbacks."""

    def __str__(self) -> str:  # KeyError would print the message with quotes around it
        return str(self.args[0])


class StatefulCallback(Callback):
    """A callback whose ``state_dict()`` must come back when training resumes.

    Lightning only warns when a checkpoint lacks a callback's state and then goes on with the callback
    fresh: a resumed search would restart its temperature schedule, a resumed supernet would replay the
    sub-architectures already trained. Resuming a fit therefore raises :class:`MissingCallbackStateError`,
    naming the missing key and the keys the checkpoint has (usually the callback's arguments differ from
    the saved run's: they are part of ``state_key``). Fresh runs and ``validate``/``test``/``predict``
    from a checkpoint are not affected.
    """

    @override
    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != TrainerFn.FITTING:
            return
        states = checkpoint.get("callbacks") or {}
        if self.state_key in states or self._legacy_state_key in states:
            return
        saved = sorted(str(k) for k in states)
        raise MissingCallbackStateError(
            f"cannot resume: the checkpoint has no state for callback {self.state_key}; it holds states for "
            f"{saved or 'no callbacks'}. Use the same callback arguments as the run that wrote it, or start a "
            f"fresh run (no ckpt_path)")

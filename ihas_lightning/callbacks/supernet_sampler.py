"""Sample one supernet sub-architecture per training step (NASRec-style weight sharing)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from ..backbones import CTRBackbone
from ..subarchitecture import SandwichPlan, SubArchitecture, SubArchitectureBatch, SupernetConfig
from ..supernet import SupernetMasks
from .stateful import StatefulCallback

__all__ = ["SupernetSampler"]


class SupernetSampler(StatefulCallback):
    """Before every training batch, draw a sub-architecture and apply it; evaluation sees the full network.

    The masks are the module's ``supernet_masks`` (:class:`~ihas_lightning.modules.SupernetModule`), or, for
    any other module with a ``backbone`` (:class:`CTRBackbone`), masks this callback installs at ``setup``.
    The search space and the schedule are this callback's (:class:`~ihas_lightning.subarchitecture.SupernetConfig`).

    Reproducible and DDP-safe: the sub-architectures come from a ``torch.Generator`` seeded with ``seed``
    (broadcast from rank 0 at ``setup``), and every draw consumes the same amount of randomness whatever its
    outcome, so all ranks apply the same sub-architecture at every step without a collective per step. The
    generator state and the step counter live in the checkpoint: a resumed run continues the same sequence.
    See docs/design.md#5-supernet-sampling.

    With ``sandwich >= 1`` (BigNAS's sandwich rule) the callback does not apply one sub-architecture: it hands
    the module (which must be a :class:`~ihas_lightning.modules.SupernetModule`) a
    :class:`~ihas_lightning.subarchitecture.SandwichPlan` in ``sandwich_plan`` (the largest, the smallest and
    ``sandwich`` sampled sub-architectures), and the module's training step trains them all on the batch.

    Args:
        dim_choices, width_choices, per_sample, warmup_steps, sample_widths, sandwich, distill, sampling: see
            :class:`SupernetConfig`.
        seed: seed of the sampling generator.
        record: keep every applied sub-architecture in ``history`` (tests, analysis; grows with the steps).

    Example:
        >>> module = SupernetModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=16)
        >>> pl.Trainer(callbacks=[SupernetSampler(dim_choices=(2, 4, 8, 16), warmup_steps=500)]).fit(module, dm)
    """

    def __init__(self, dim_choices: Sequence[int] = (2, 4, 8, 16),
                 width_choices: Sequence[float] = (0.25, 0.5, 0.75, 1.0), per_sample: bool = False,
                 warmup_steps: int = 0, sample_widths: bool = True, seed: int = 0, record: bool = False,
                 sandwich: int = 0, distill: float = 0.0, sampling: str = "uniform") -> None:
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.config = SupernetConfig(dim_choices=tuple(dim_choices), width_choices=tuple(width_choices),
                                     per_sample=bool(per_sample), warmup_steps=warmup_steps,
                                     sample_widths=bool(sample_widths), sandwich=sandwich, distill=distill,
                                     sampling=sampling)
        self.seed = seed
        self.record = record
        self.step = 0
        self.history: list[SubArchitecture | SubArchitectureBatch | SandwichPlan] = []
        self.masks: SupernetMasks | None = None
        self.generator: torch.Generator | None = None
        self._installed = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(seed=self.seed, **self.config.to_dict())

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        masks = getattr(pl_module, "supernet_masks", None)
        if masks is None:
            backbone = getattr(pl_module, "backbone", None)
            if not isinstance(backbone, CTRBackbone):
                raise TypeError(f"SupernetSampler needs a module with `supernet_masks` (SupernetModule) or a "
                                f"CTRBackbone `backbone`, got {type(pl_module).__name__}")
            masks = SupernetMasks(backbone, self.config)
            pl_module.supernet_masks = masks
            self._installed = True
        masks.check_config(self.config)
        if self.config.sandwich and not hasattr(pl_module, "sandwich_plan"):
            raise TypeError(f"the sandwich rule needs a SupernetModule (it trains several sub-architectures per "
                            f"step), got {type(pl_module).__name__}")
        self.masks = masks
        if self.generator is None:  # a fresh run; load_state_dict (after setup when resuming) overrides it
            seed = trainer.strategy.broadcast(self.seed, src=0)
            self.generator = torch.Generator().manual_seed(int(seed))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.masks is not None:
            self.masks.clear()
            if self._installed:
                self.masks.remove()
                del pl_module.supernet_masks
                self._installed = False

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.config.sandwich:
            plan = self.masks.sandwich(self.generator, step=self.step, config=self.config)
            pl_module.sandwich_plan = plan
            self.step += 1
            if self.record:
                self.history.append(plan)
            return
        batch_size = int(batch["label"].shape[0]) if self.config.per_sample else None
        subarch = self.masks.sample(self.generator, step=self.step, batch_size=batch_size, config=self.config)
        self.masks.apply(subarch)
        self.step += 1
        if self.record:
            self.history.append(subarch)
        if isinstance(subarch, SubArchitecture) and pl_module._trainer is trainer:
            share = sum(subarch.dims) / (len(subarch.dims) * self.masks.dim)
            pl_module.log("supernet/dim_share", share, on_step=True, on_epoch=False, batch_size=1)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.masks.clear()
        if self.config.sandwich:
            pl_module.sandwich_plan = None

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.masks.clear()

    @override
    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.masks is not None:
            self.masks.clear()

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.masks is not None:
            self.masks.clear()

    @override
    def state_dict(self) -> dict[str, Any]:
        state = self.generator.get_state().tolist() if self.generator is not None else None
        return {"step": self.step, "generator_state": state, "seed": self.seed}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.step = int(state_dict["step"])
        if state_dict.get("generator_state") is not None:
            self.generator = torch.Generator()
            self.generator.set_state(torch.tensor(state_dict["generator_state"], dtype=torch.uint8))

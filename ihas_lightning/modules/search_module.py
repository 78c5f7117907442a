"""``SearchModule``: the iHAS search stage, a DeepCTR-Torch backbone whose embeddings pass through gates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields
from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from ..backbones import build_backbone
from ..data.loader import Batch
from ..data.schema import Schema
from ..gates import GateConfig, GateOutput, InstanceGates
from ..noise import generator_on, generator_state
from ..regularizers import decided_share, expected_param_share
from .base import CTRModule, fused_adam
from .config import BackboneConfig

__all__ = ["SearchModule"]

_GATE_KEYS = tuple(f.name for f in fields(GateConfig))


class SearchModule(CTRModule):
    """Backbone + instance-wise Bernoulli gates (iHAS search stage).

    For ``warmup_epochs`` the plain backbone trains; then every sample's (B, F, D) embeddings are multiplied
    by its gate mask before any branch of the backbone sees them. The loss adds the gates' sparsity (towards
    ``budget``) and bi-polarization terms, scaled by ``regularizer_scale`` (set by
    :class:`~ihas_lightning.callbacks.RegularizerWarmup`). See docs/design.md#21-search-gates and
    docs/design.md#23-search-schedule.

    Args:
        schema, vocab_sizes, backbone, dim, dnn_hidden_units, lr, seed, options, dnn_dropout, l2_reg_embedding,
            config: as for ``BackboneModule``.
        gate_lr: learning rate of the gate network (its own Adam parameter group).
        warmup_epochs: epochs of the plain backbone before the gates switch on.
        gate: a :class:`GateConfig` or its dict (budget, relaxation, prefix, min_dim, ...).

    Example:
        >>> search = SearchModule(dm.schema, dm.vocab_sizes, backbone="DCN", gate={"budget": 0.5})
        >>> pl.Trainer(max_epochs=6, callbacks=[TemperatureAnnealing(), RegularizerWarmup()]).fit(search, dm)
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], backbone: str = "DeepFM", dim: int = 16,
                 dnn_hidden_units: Sequence[int] = (256, 128), lr: float = 1e-3, gate_lr: float = 1e-3,
                 warmup_epochs: int = 2, gate: GateConfig | dict | None = None, seed: int = 1024,
                 options: dict | None = None, dnn_dropout: float = 0.0, l2_reg_embedding: float = 1e-5, *,
                 config: BackboneConfig | None = None,
                 embedding_updates: str = "rowwise") -> None:
        super().__init__()
        schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        gate = gate if isinstance(gate, GateConfig) else GateConfig(**(gate or {}))
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        if gate_lr <= 0:
            raise ValueError(f"gate_lr must be > 0, got {gate_lr}")
        config = config or BackboneConfig(backbone, dim, tuple(dnn_hidden_units), lr, dnn_dropout, l2_reg_embedding,
                                          seed, options or {}, embedding_updates)
        self.save_hyperparameters({"schema": schema.to_dict(), "vocab_sizes": dict(vocab_sizes), **config.hparams(),
                                   "gate_lr": gate_lr, "warmup_epochs": warmup_epochs, "gate": asdict(gate)})
        self.backbone = build_backbone(config.backbone, schema, vocab_sizes, config.dim, **config.build_kwargs())
        dim = config.dim
        costs = [float(vocab_sizes[f]) for f in schema.embedded_fields]
        self.gates = InstanceGates(len(schema.embedded_fields), dim, gate, field_costs=costs)
        self.gate_config = gate
        self.regularizer_scale = 1.0
        # The gates' noise has its own generator, checkpointed, so a resumed search draws what an
        # uninterrupted one would have drawn.
        self._noise: torch.Generator | None = None
        self._noise_state: Tensor | None = None
        self._noise_device: str | None = None                  # the device type _noise_state belongs to
        self.last_gates: GateOutput | None = None
        self.backbone.embedding_transform = self._gate_embeddings
        self._val_masks: set[bytes] = set()
        self._val_stats: list[dict[str, Tensor]] = []
        self.last_val_summary: dict[str, Any] | None = None
        self._step_share: Tensor | None = None

    @property
    def gates_active(self) -> bool:
        return self.current_epoch >= self.hparams.warmup_epochs if self._trainer is not None else True

    def _gate_embeddings(self, embeddings: Tensor) -> Tensor:
        if not self.gates_active:
            self.last_gates = None
            return embeddings
        out = self.gates(embeddings, generator=self._generator(embeddings.device))
        self.last_gates = out
        return embeddings * out.mask                                                            # (B, F, D)

    def _generator(self, device: torch.device) -> torch.Generator:
        """The noise generator on the embeddings' device, created at first use (seeded) or from a checkpoint."""
        if self._noise is None or self._noise.device != device:
            self._noise = generator_on(device, self.hparams.seed, self._noise_state, self._noise_device)
        return self._noise

    @override
    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        if self.last_gates is None:
            return None
        terms = self.gates.loss_terms(self.last_gates.prob)
        self._step_share = terms["share"].detach()
        if self._logs_this_step():
            # The statistics pass over the whole (B, F, D) mask: only on the steps the logger writes.
            stats = self.gates.stats(self.last_gates)
            self.log_dict({"gates/share": stats["share"], "gates/active_dims": stats["active_dims"],
                           "gates/lambda": stats["lambda"], "gates/temperature": stats["temperature"],
                           "gates/sparsity_term": terms["sparsity"].detach(),
                           "gates/polarization_term": terms["polarization"].detach(),
                           "gates/regularizer_scale": float(self.regularizer_scale)},
                          batch_size=logits.shape[0])
        return self.regularizer_scale * terms["total"]

    def _logs_this_step(self) -> bool:
        """Whether the loggers write this training step (``log_every_n_steps``); True outside a Trainer."""
        if self._trainer is None:
            return True
        return (self.trainer.global_step + 1) % max(1, self.trainer.log_every_n_steps) == 0

    @override
    def on_after_backward(self) -> None:
        # The dual step changes lambda in place, so it waits until backward has used it. It must not wait
        # for on_train_batch_end: Lightning calls the callbacks' hook (ModelCheckpoint's every_n_train_steps
        # save) before the module's, so a checkpoint taken there would miss this step's update.
        if self._step_share is not None:
            self.gates.update_budget(self._step_share)
            self._step_share = None

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        if self.last_gates is None:
            return
        mask = self.last_gates.mask                                                             # (B, F, D)
        flat = mask.reshape(mask.shape[0], -1).to(torch.uint8)
        self._val_masks.update(bytes(row) for row in torch.unique(flat, dim=0).cpu().numpy())
        self._val_stats.append({"prob": self.last_gates.prob.detach(), "mask": mask.detach()})

    @override
    def on_validation_epoch_end(self) -> None:
        if not self._val_stats:
            return
        summary = self.last_val_summary = self.validation_summary()
        self.log_dict({"val_distinct_masks": float(summary["distinct_masks"]),
                       "val_decided_share": summary["decided_share"],
                       "val_expected_param_share": summary["expected_param_share"],
                       "val_mean_active_dims": summary["mean_active_dims"]})
        for name, value in summary["mean_active_dims_per_field"].items():
            self.log(f"val_active_dims/{name}", value)
        self._val_masks.clear()
        self._val_stats.clear()

    def validation_summary(self) -> dict[str, Any]:
        """Gate statistics over the validation batches seen since the last epoch end."""
        prob = torch.cat([s["prob"] for s in self._val_stats])                                  # (N, F, D)
        mask = torch.cat([s["mask"] for s in self._val_stats])
        per_field = mask.sum(-1).mean(0)                                                        # (F,)
        return {
            "distinct_masks": len(self._val_masks),
            "decided_share": float(decided_share(prob, self.gate_config.min_dim)),
            "expected_param_share": float(expected_param_share(mask, self.gates.controller.field_costs)),
            "mean_active_dims": float(per_field.mean()),
            "mean_active_dims_per_field": {f: float(v) for f, v in zip(self.schema.embedded_fields, per_field)},
            "mean_prob": prob.mean(0),                                                          # (F, D)
        }

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return fused_adam([
            {"params": self.backbone.parameters(), "lr": self.hparams.lr},
            {"params": self.gates.parameters(), "lr": self.hparams.gate_lr},
        ], row_l2=self.backbone.row_l2())

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        noise, device = generator_state(self._noise, self._noise_state, self._noise_device)
        checkpoint["ihas_search"] = {"noise_state": noise, "noise_device": device,
                                     "regularizer_scale": float(self.regularizer_scale)}

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("ihas_search")
        if state is not None:
            self._noise_state, self._noise_device = state["noise_state"], state.get("noise_device")
            self._noise = None
            self.regularizer_scale = state["regularizer_scale"]

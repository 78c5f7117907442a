"""iHAS's dimension search in the user's own LightningModule: one callback, no change to their code."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from torch import Tensor, nn
from typing_extensions import override

from ..gates import GateConfig, GateOutput, InstanceGates
from ..noise import generator_on, generator_state
from ..regularizers import decided_share, expected_param_share
from .deepctr_model import embedded_columns, find_deepctr_model, searched_module_from
from .gate_statistics import gate_heatmap
from .regularizer_warmup import RegularizerWarmup
from .stateful import StatefulCallback
from .temperature_annealing import TemperatureAnnealing

__all__ = ["DimensionSearch"]


class DimensionSearch(StatefulCallback):
    """Instance-wise gates on the embeddings of a DeepCTR-Torch model inside any LightningModule.

    For a module that holds one ``deepctr_torch`` model and feeds it DeepCTR's concatenated input ``X``,
    this callback does what :class:`~ihas_lightning.modules.SearchModule` does, from the outside:

    * **gates**: the model's ``input_from_feature_columns`` is wrapped on the instance (the adapter's
      mechanism, no fork) so that its (B, F, D) field embeddings are multiplied by the gates' mask before
      the FM, cross or DNN branch sees them. Training forwards draw a relaxed sample; others use ``1[p >= 0.5]``.
    * **optimizer**: the gates are the callback's own module (the user's ``state_dict`` keeps its keys); at
      ``on_fit_start`` they join the user's optimizer as a param group with ``gate_lr`` and no weight decay.
    * **regularizer**: ``training_step`` is wrapped on the instance and adds
      ``regularizer_scale * (sparsity + polarization)`` to the loss it returns, so the user's precision
      plugin, gradient accumulation and clipping treat it like the rest of the loss (a separate
      ``backward`` in ``on_before_backward`` would skip AMP's loss scaling). After each backward the
      sparsity multiplier takes its dual-ascent step towards ``budget``.
    * **schedules**: after ``warmup_epochs`` plain epochs, the temperature anneals as
      :class:`TemperatureAnnealing` and the regularizer warms up as :class:`RegularizerWarmup` (over 80 % and
      20 % of the gated steps unless given).
    * **statistics**: ``gates/*`` scalars on logging steps; after each validation ``val_expected_param_share``,
      ``val_decided_share``, ``val_mean_active_dims``, ``val_distinct_masks`` and the heatmap in TensorBoard;
      :attr:`last_val_summary`.
    * **state**: gate weights, multiplier, temperature, noise and schedule steps are in :meth:`state_dict`;
      the gate param group is in the optimizer's, so ``ckpt_path=`` resumes exactly.
    * **clustering**: :meth:`export_search_checkpoint` writes a ``SearchModule`` checkpoint of the model's
      weights and the gates, which ``SearchModule.load_from_checkpoint`` and the clustering stage read.

    Patches are undone at ``teardown``. Automatic optimization on one device only (gate gradients are not
    all-reduced); a learning-rate scheduler of the user's acts on the gate group too.

    Args:
        budget: target expected share of the embedding parameters, in (0, 1].
        gate_lr: learning rate of the gates' param group.
        warmup_epochs: epochs of the plain model before the gates switch on.
        temperature_end: final hard-concrete temperature.
        anneal_steps, regularizer_steps: gated steps of the two schedules (default 80 % / 20 % of them).
        gate: more :class:`GateConfig` settings (its ``budget`` is this ``budget``).
        model: attribute of the module holding the DeepCTR model, when it holds more than one.
        seed: seed of the gates' initialization and noise.

    Example:
        >>> trainer = pl.Trainer(max_epochs=3, callbacks=[DimensionSearch(budget=0.5)])
        >>> trainer.fit(MyDeepFMModule(...), train_loader, val_loader)
        >>> trainer.callbacks[0].export_search_checkpoint("searched.ckpt")
    """

    def __init__(self, budget: float = 0.5, gate_lr: float = 1e-2, warmup_epochs: int = 1,
                 temperature_end: float = 0.1, anneal_steps: int | None = None, regularizer_steps: int | None = None,
                 gate: GateConfig | dict | None = None, model: str | None = None, seed: int = 1024) -> None:
        config = gate if isinstance(gate, GateConfig) else GateConfig(**(gate or {}))
        self.gate_config = replace(config, budget=budget)                     # validates budget
        if not (math.isfinite(gate_lr) and gate_lr > 0):
            raise ValueError(f"gate_lr must be > 0, got {gate_lr!r}")
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be an int >= 0, got {warmup_epochs!r}")
        for name, steps in (("anneal_steps", anneal_steps), ("regularizer_steps", regularizer_steps)):
            if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {steps!r}")
        TemperatureAnnealing(self.gate_config.temperature, temperature_end)  # validates temperature_end
        self.budget, self.gate_lr, self.warmup_epochs = budget, float(gate_lr), warmup_epochs
        self.temperature_end, self.model_attribute, self.seed = float(temperature_end), model, int(seed)
        self.anneal_steps, self.regularizer_steps = anneal_steps, regularizer_steps
        self.gates: InstanceGates | None = None
        self.fields: tuple[str, ...] = ()
        self.step = 0
        self.regularizer_scale = 1.0
        self.last_val_summary: dict[str, Any] | None = None
        self._model: nn.Module | None = None
        self._trainer: pl.Trainer | None = None
        self._progress = (0, 0)                               # (epoch, global step) when last torn down
        self._saved_attributes: list[tuple[Any, str, Any]] = []
        self._pending_state: dict[str, Any] | None = None
        self._noise: torch.Generator | None = None
        self._noise_state: Tensor | None = None
        self._noise_device: str | None = None                  # the device type _noise_state belongs to
        self._train_probs: list[Tensor] = []
        self._step_share: Tensor | None = None
        self._val: list[GateOutput] | None = None
        self._val_masks: set[bytes] = set()

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(budget=self.budget, model=self.model_attribute)

    # -- attaching to the user's module -------------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not pl_module.automatic_optimization:
            raise ValueError("DimensionSearch adds its regularizer to the loss training_step returns, which manual "
                             "optimization does not backpropagate; use automatic optimization")
        if trainer.world_size > 1:
            raise ValueError(f"DimensionSearch runs on one device; this Trainer has world_size={trainer.world_size}")
        model = find_deepctr_model(pl_module, self.model_attribute)
        if self.gates is None:
            self._build_gates(model)
        elif self._model is not model and self._fields_of(model) != self.fields:
            raise ValueError(f"DimensionSearch was set up for fields {self.fields}; this module's model embeds "
                             f"{self._fields_of(model)}")
        self._unpatch()                                       # a run that raised leaves its patches: undo them
        self._model, self._trainer = model, trainer
        self._patch(model, "input_from_feature_columns", self._gated_input(model.input_from_feature_columns))
        if stage == "fit":
            self._patch(pl_module, "training_step", self._regularized_step(pl_module.training_step))

    @staticmethod
    def _fields_of(model: nn.Module) -> tuple[str, ...]:
        return tuple(c.name for c in embedded_columns(model.dnn_feature_columns))

    def _build_gates(self, model: nn.Module) -> None:
        columns = embedded_columns(model.dnn_feature_columns)
        if not columns:
            raise ValueError(f"{type(model).__name__} embeds no field: nothing to search")
        dims = {c.name: int(c.embedding_dim) for c in columns}
        if len(set(dims.values())) != 1:
            raise ValueError(f"the gates need one embedding_dim for every field, got {dims}")
        costs = [float(c.vocabulary_size) for c in columns]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.gates = InstanceGates(len(columns), next(iter(dims.values())), self.gate_config, field_costs=costs)
        self.fields = tuple(dims)
        if self._pending_state is not None:
            self._load_state(self._pending_state)

    def _patch(self, owner: Any, name: str, replacement: Any) -> None:
        self._saved_attributes.append((owner, name, owner.__dict__.get(name)))
        setattr(owner, name, replacement)

    def _unpatch(self) -> None:
        for owner, name, previous in reversed(self._saved_attributes):
            if previous is None:
                delattr(owner, name)
            else:
                setattr(owner, name, previous)
        self._saved_attributes = []

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unpatch()
        self._progress = (trainer.current_epoch, trainer.global_step)
        self._trainer = None

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.gates.to(pl_module.device)
        if len(trainer.optimizers) != 1:
            raise ValueError(f"DimensionSearch adds the gates to the module's one optimizer; it has "
                             f"{len(trainer.optimizers)}")
        optimizer = trainer.optimizers[0]
        group: dict[str, Any] = {"params": list(self.gates.parameters()), "lr": self.gate_lr}
        if "weight_decay" in optimizer.defaults:
            group["weight_decay"] = 0.0
        optimizer.add_param_group(group)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        per_epoch = max(1, math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches))
        gated = max(1, int(trainer.estimated_stepping_batches) - self.warmup_epochs * per_epoch)
        self.anneal_steps = self.anneal_steps or max(1, int(0.8 * gated))
        self.regularizer_steps = self.regularizer_steps or max(1, gated // 5)

    @property
    def gates_active(self) -> bool:
        """Off during the warm-up epochs of a fit; on otherwise (validate, test, predict, outside a Trainer)."""
        trainer = self._trainer
        if trainer is None or trainer.state.fn != TrainerFn.FITTING:
            return True
        return trainer.current_epoch >= self.warmup_epochs

    # -- the forward ----------------------------------------------------------------------------------
    def _gated_input(self, original: Any) -> Any:
        model = self._model

        def input_from_feature_columns(X: Tensor, feature_columns: list, embedding_dict: nn.ModuleDict,
                                       support_dense: bool = True) -> tuple[list[Tensor], list[Tensor]]:
            sparse, dense = original(X, feature_columns, embedding_dict, support_dense)
            if not sparse or not self.gates_active:
                return sparse, dense
            names = tuple(c.name for c in embedded_columns(feature_columns))
            if embedding_dict is not model.embedding_dict or names != self.fields:
                raise RuntimeError(f"{type(model).__name__} looked up fields {names} (or another table dict); "
                                   f"DimensionSearch gates the DNN columns' fields {self.fields} only")
            embeddings = torch.cat(sparse, dim=1)                                                # (B, F, D)
            out = self._gate(embeddings, model.training)
            gated = embeddings * out.mask                                                        # (B, F, D)
            return list(gated.split(1, dim=1)), dense

        return input_from_feature_columns

    def _gate(self, embeddings: Tensor, training: bool) -> GateOutput:
        gates = self.gates
        if gates.out.weight.device != embeddings.device:
            gates.to(embeddings.device)
        gates.train(training)
        out = gates(embeddings, generator=self._generator(embeddings.device) if training else None)
        if training and torch.is_grad_enabled():
            self._train_probs.append(out.prob)
        elif self._val is not None:
            self._val.append(GateOutput(out.mask.detach(), out.prob.detach(), out.logits.detach()))
            flat = out.mask.reshape(out.mask.shape[0], -1).to(torch.uint8)
            self._val_masks.update(bytes(row) for row in torch.unique(flat, dim=0).cpu().numpy())
        return out

    def _generator(self, device: torch.device) -> torch.Generator:
        if self._noise is None or self._noise.device != device:
            self._noise = generator_on(device, self.seed, self._noise_state, self._noise_device)
        return self._noise

    @torch.no_grad()
    def masks(self, X: Tensor) -> Tensor:
        """The deterministic masks ``1[p >= 0.5]`` (B, F, D) of DeepCTR input ``X``: what the clustering groups."""
        model = self._model
        if model is None or self.gates is None:
            raise RuntimeError("DimensionSearch is not attached to a model yet: fit or validate with it first")
        lookup = type(model).input_from_feature_columns
        sparse, _ = lookup(model, X, model.dnn_feature_columns, model.embedding_dict)
        embeddings = torch.cat(sparse, dim=1)                                                    # (B, F, D)
        return self.gates.to(embeddings.device).deterministic_mask(embeddings)

    # -- the loss ---------------------------------------------------------------------------------------
    def _regularized_step(self, original: Any) -> Any:
        def training_step(*args: Any, **kwargs: Any) -> Any:
            self._train_probs = []
            output = original(*args, **kwargs)
            probs, self._train_probs = self._train_probs, []
            loss = output["loss"] if isinstance(output, dict) else output
            if not probs or loss is None:
                return output
            terms = self.gates.loss_terms(torch.cat(probs))
            self._step_share = terms["share"].detach()
            self._log_step(terms, torch.cat(probs))
            regularized = loss + self.regularizer_scale * terms["total"].to(loss.dtype)
            return {**output, "loss": regularized} if isinstance(output, dict) else regularized

        return training_step

    def _log_step(self, terms: dict[str, Tensor], prob: Tensor) -> None:
        trainer = self._trainer
        if trainer is None or (trainer.global_step + 1) % max(1, trainer.log_every_n_steps):
            return
        gates = self.gates
        trainer.lightning_module.log_dict({
            "gates/share": terms["share"].detach(), "gates/lambda": gates.controller.lam.clone(),
            "gates/temperature": gates.temperature.clone(), "gates/sparsity_term": terms["sparsity"].detach(),
            "gates/polarization_term": terms["polarization"].detach(),
            "gates/decided_share": decided_share(prob, self.gate_config.min_dim),
            "gates/regularizer_scale": float(self.regularizer_scale)}, batch_size=prob.shape[0])

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if not self.gates_active:
            return
        start = self.gate_config.temperature
        anneal = TemperatureAnnealing(start, self.temperature_end, self.anneal_steps)
        self.gates.set_temperature(anneal.value(self.step))
        self.regularizer_scale = RegularizerWarmup(self.regularizer_steps).value(self.step)
        self.step += 1

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After backward has used lambda (the dual step changes it in place), as SearchModule does.
        if self._step_share is not None:
            self.gates.update_budget(self._step_share)
            self._step_share = None

    # -- statistics ---------------------------------------------------------------------------------
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val, self._val_masks = [], set()

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        outputs, self._val = self._val, None
        if not outputs:
            return
        prob = torch.cat([o.prob for o in outputs])                                              # (N, F, D)
        mask = torch.cat([o.mask for o in outputs])
        per_field = mask.sum(-1).mean(0)                                                         # (F,)
        summary = self.last_val_summary = {
            "distinct_masks": len(self._val_masks),
            "decided_share": float(decided_share(prob, self.gate_config.min_dim)),
            "expected_param_share": float(expected_param_share(mask, self.gates.controller.field_costs)),
            "mean_active_dims": float(per_field.mean()),
            "mean_active_dims_per_field": {f: float(v) for f, v in zip(self.fields, per_field)},
            "mean_prob": prob.mean(0).cpu()}                                                     # (F, D)
        pl_module.log_dict({"val_distinct_masks": float(summary["distinct_masks"]),
                            "val_decided_share": summary["decided_share"],
                            "val_expected_param_share": summary["expected_param_share"],
                            "val_mean_active_dims": summary["mean_active_dims"]})
        writers = [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if writers and trainer.is_global_zero and not trainer.sanity_checking:
            figure = gate_heatmap(summary["mean_prob"].float(), list(self.fields))
            for writer in writers:
                writer.add_figure("gates/open_probability", figure, global_step=trainer.global_step)

    # -- state and export -------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        noise, device = generator_state(self._noise, self._noise_state, self._noise_device)
        gates = None if self.gates is None else {k: v.detach().cpu() for k, v in self.gates.state_dict().items()}
        return {"gates": gates,
                "fields": list(self.fields), "step": self.step, "regularizer_scale": self.regularizer_scale,
                "anneal_steps": self.anneal_steps, "regularizer_steps": self.regularizer_steps, "noise_state": noise,
                "noise_device": device}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.gates is None:
            self._pending_state = state_dict                  # applied when setup builds the gates
        else:
            self._load_state(state_dict)

    def _load_state(self, state: dict[str, Any]) -> None:
        if tuple(state["fields"]) != self.fields:
            raise ValueError(f"the saved DimensionSearch gated fields {state['fields']}, "
                             f"this model's are {self.fields}")
        self.gates.load_state_dict(state["gates"])
        self.step, self.regularizer_scale = int(state["step"]), float(state["regularizer_scale"])
        self.anneal_steps, self.regularizer_steps = state["anneal_steps"], state["regularizer_steps"]
        self._noise_state, self._noise, self._pending_state = state["noise_state"], None, None
        self._noise_device = state.get("noise_device")

    def export_search_checkpoint(self, path: str | Path, options: dict[str, Any] | None = None) -> Path:
        """Write a :class:`~ihas_lightning.modules.SearchModule` checkpoint of the model's weights and the gates.

        ``SearchModule.load_from_checkpoint`` loads it, and ``pipeline.search.searched_masks`` on its batches
        (:func:`~ihas_lightning.callbacks.deepctr_model.batch_from_deepctr_input` converts ``X``) gives the
        masks :meth:`masks` gives, which ``ihas_lightning.clustering.cluster`` groups. ``options``: constructor
        arguments of the model the rebuild cannot read from it (e.g. ``{"cross_num": 3}``, ``dnn_use_bn``).
        """
        if self._model is None or self.gates is None:
            raise RuntimeError("DimensionSearch is not attached to a model yet: fit with it first")
        search = searched_module_from(self._model, self.gates, warmup_epochs=self.warmup_epochs,
                                      gate_lr=self.gate_lr, seed=self.seed, options=options)
        epoch, step = (self._trainer.current_epoch, self._trainer.global_step) if self._trainer else self._progress
        checkpoint = {
            "state_dict": {k: v.detach().cpu() for k, v in search.state_dict().items()},
            "hyper_parameters": dict(search.hparams), "pytorch-lightning_version": pl.__version__,
            "epoch": epoch, "global_step": step,
            "ihas_search": {"noise_state": self.state_dict()["noise_state"],
                            "regularizer_scale": float(self.regularizer_scale)}}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, path)
        return path

"""``SupernetModule``: a backbone at the largest dimension with supernet masks, and sub-architecture scoring."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pytorch_lightning.utilities import move_data_to_device
from torchmetrics.functional.classification import binary_auroc
from typing_extensions import override

from ..data.loader import Batch
from ..data.schema import Schema
from ..flops import backbone_flops, flops_or_none
from ..subarchitecture import SandwichPlan, SubArchitecture
from ..supernet import SupernetMasks
from .backbone_module import BackboneModule
from .base import NonFiniteLossError, check_labels, eval_mode
from .config import BackboneConfig
from .first_order_refit import FirstOrderRefit
from .rowwise import RowwiseAdam

__all__ = ["FINETUNE_SCOPES", "REFIT_FIELDS", "REFIT_PRIOR", "REFIT_ROWS", "REFIT_SWEEPS", "FinetuneScope",
           "RefitFields", "SupernetModule", "SubnetScore", "first_batches"]

FinetuneScope = Literal["last_layer", "all"]
FINETUNE_SCOPES: tuple[str, ...] = ("last_layer", "all")
"""What a pre-scoring fine-tune trains: NASRec's last layer, or every parameter the sub-architecture uses."""
RefitFields = Literal["all", "narrowed", "scaled"]
REFIT_FIELDS: tuple[str, ...] = ("all", "narrowed", "scaled")
"""Which first-order weights the refit moves: every table's and the dense weights (``all``), or only the tables of
the fields the candidate narrows or drops (below the supernet's dim), the others keeping what the supernet learned
(``narrowed``; ``scaled``: each of them with the prior times ``dim / (dim - d)``, firmer the less it narrows)."""
REFIT_PRIOR = 1.0
"""The first-order refit's Gaussian prior around the inherited weights (its precision; chosen on the development
sets, docs/design.md#5-supernet-sampling)."""
REFIT_ROWS = 40_000
"""Training rows the first-order refit fits (the first batches that hold them)."""
REFIT_SWEEPS = 5
"""The first-order refit's Newton sweeps where the commands refit (``ihas subnet``, ``ihas pim``, the benchmarks); 2
and 3 ranked the development sets as well, 1 worse (docs/supernet_ranking.md)."""


def first_batches(batches: Iterable[Batch], count: int = 0, rows: int = 0) -> list[Batch]:
    """The first batches: at least ``count`` of them, holding at least ``rows`` rows (fewer where they end); what
    a fine-tune of ``count`` steps and a first-order refit on ``rows`` rows read."""
    out, seen = [], 0
    for batch in batches:
        if len(out) >= count and seen >= rows:
            break
        out.append(batch)
        seen += len(batch["label"])
    return out


@dataclass(frozen=True)
class SubnetScore:
    """A sub-architecture scored with the supernet's (inherited) weights on validation data."""

    subarch: dict[str, Any]
    auc: float
    logloss: float
    embedding_params: int
    embedding_share: float  # of the full supernet's embedding parameters
    flops_per_sample: float | None  # None: a backbone ihas_lightning.flops does not count
    finetune_steps: int
    seconds: float
    finetune_scope: str | None = None  # what the fine-tune trained (None: no fine-tune)
    refit_sweeps: int = 0  # first-order refit sweeps before the fine-tune (0: none, or no first-order part)
    refit_rows: int = 0  # training rows the refit fitted (0: no refit)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _refit_scales(subarch: SubArchitecture, dim: int, refit_fields: RefitFields) -> dict[str, float] | None:
    """The fields a refit moves, each with its prior's factor (None: every first-order weight, factor 1)."""
    if refit_fields == "all":
        return None
    narrowed = {f: d for f, d in zip(subarch.fields, subarch.dims) if d < dim}
    if refit_fields == "narrowed":
        return dict.fromkeys(narrowed, 1.0)
    return {f: dim / (dim - d) for f, d in narrowed.items()}     # "scaled": prior / (1 - the share it keeps)


def _same_values(old: torch.Tensor, new: torch.Tensor) -> bool:
    return old is new or (old.shape == new.shape and old.dtype == new.dtype and old.device == new.device
                          and torch.equal(old, new))


class _FinetuneUndo:
    """What a pre-scoring fine-tune changed, to put back: a dense parameter whole, a table with sparse (row-wise)
    gradients only in the rows the steps touched, since copying a table of millions of rows for every candidate
    would cost far more than scoring it. Values are saved just before each optimiser step, so each is saved before
    its first change (``RowwiseAdam`` leaves untouched rows and gradient-less parameters as they are)."""

    def __init__(self) -> None:
        self.whole: dict[torch.nn.Parameter, torch.Tensor] = {}
        self.rows: list[tuple[torch.nn.Parameter, torch.Tensor, torch.Tensor]] = []

    @torch.no_grad()
    def save_before_step(self, params: Iterable[torch.nn.Parameter]) -> None:
        for p in params:
            if p.grad is None:
                continue
            if p.grad.is_sparse:       # the looked-up ids, repeats included: a repeat saves the same value
                rows = p.grad._indices()[0]                                               # (R,)
                self.rows.append((p, rows, p[rows].clone()))
            elif p not in self.whole:
                self.whole[p] = p.detach().clone()

    @torch.no_grad()
    def restore(self) -> None:
        for p, rows, values in reversed(self.rows):          # the earliest save of a row is written last
            p.index_copy_(0, rows, values)
        for p, value in self.whole.items():
            p.copy_(value)
        self.whole, self.rows = {}, []


class SupernetModule(BackboneModule):
    """The supernet of NASRec-style weight sharing: train it with :class:`~ihas_lightning.callbacks.SupernetSampler`.

    Without the sampler (or with every field at ``dim`` and full widths) it is exactly the plain backbone.

    Args:
        schema, vocab_sizes, backbone, dnn_hidden_units, lr, dnn_dropout, seed, options: as in
            :class:`~ihas_lightning.modules.BackboneModule`.
        dim: the supernet's (largest) embedding dimension.
        l2_reg_embedding: DeepCTR-Torch's L2 on the embedding tables. 0 by default: the penalty covers whole
            tables, so it would move the coordinates a step's sub-architecture masks (they should get exactly
            zero gradient) and shrink the rarely-sampled high coordinates towards 0
            (see docs/design.md#5-supernet-sampling).
        config: all of the above in one :class:`BackboneConfig` (whose own ``l2_reg_embedding`` default is
            1e-5: give 0.0 for the reason above); when given, it replaces them.
        freeze_masked: the optimiser leaves what a step's sub-architecture masks (exactly-zero gradients) where it
            is, value and Adam moments (:class:`~ihas_lightning.modules.rowwise.RowwiseAdam`'s
            ``freeze_zero_grad``); otherwise Adam moves it by its stale momentum. Matters with one
            sub-architecture a step; under the sandwich rule the largest trains everything every step.

    Example:
        >>> module = SupernetModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=16)
        >>> pl.Trainer(max_epochs=3, callbacks=[SupernetSampler()]).fit(module, dm)
        >>> sub = SubArchitecture.parse("C1=4,C2=2", module.supernet_masks.fields, 16, (256, 128), "0.5")
        >>> module.evaluate_subnet(sub, dm, finetune_steps=100).auc
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], backbone: str = "DeepFM", dim: int = 16,
                 dnn_hidden_units: Sequence[int] = (256, 128), lr: float = 1e-3, dnn_dropout: float = 0.0,
                 l2_reg_embedding: float = 0.0, seed: int = 1024, options: dict | None = None, *,
                 config: BackboneConfig | None = None,
                 embedding_updates: str = "rowwise", freeze_masked: bool = True) -> None:
        if not isinstance(freeze_masked, bool):
            raise TypeError(f"freeze_masked must be a bool, got {freeze_masked!r}")
        config = config or BackboneConfig(backbone, dim, tuple(dnn_hidden_units), lr, dnn_dropout, l2_reg_embedding,
                                          seed, options or {}, embedding_updates)
        super().__init__(schema, vocab_sizes, config=config)
        self.hparams["freeze_masked"] = freeze_masked
        self.supernet_masks = SupernetMasks(self.backbone)
        self.sandwich_plan: SandwichPlan | None = None   # set per step by SupernetSampler(sandwich=...)
        self._last_refit: FirstOrderRefit | None = None     # reused while candidates are refit on the same batches

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        """One sub-architecture (the sampler applied it), or every one of the step's :class:`SandwichPlan`.

        Under the sandwich rule the losses of the plan's sub-architectures are summed (BigNAS); the first, the
        largest, is the teacher of in-place distillation: the others' loss is
        ``(1 - distill) * BCE(labels) + distill * BCE(teacher's probabilities, detached)``.
        """
        plan = self.sandwich_plan
        if plan is None:
            return super().training_step(batch, batch_idx)
        labels = batch["label"]
        check_labels(labels, "training")
        self.backbone.forget_trained_rows()
        self._step_batch_size = labels.shape[0]
        total, teacher, first = None, None, None
        for subarch in plan.subarchs:
            self.supernet_masks.apply(subarch)
            logits = self(batch)
            bce = F.binary_cross_entropy_with_logits(logits, labels)
            if teacher is None:
                loss, teacher, first = bce, torch.sigmoid(logits.detach()), bce
            elif plan.distill:
                soft = F.binary_cross_entropy_with_logits(logits, teacher)
                loss = (1.0 - plan.distill) * bce + plan.distill * soft
            else:
                loss = bce
            total = loss if total is None else total + loss
        total = total + self.regularization_loss() / labels.shape[0]
        if not torch.isfinite(total):
            raise NonFiniteLossError(f"non-finite sandwich loss {total.item()} at epoch {self.current_epoch}, step "
                                     f"{self.global_step} (batch {batch_idx}): lower the learning rate")
        self.log("train_loss", first, prog_bar=True, batch_size=labels.shape[0])
        return total

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        optimizer = super().configure_optimizers()
        for group in optimizer.param_groups:
            group["freeze_zero_grad"] = self.hparams.freeze_masked
        return optimizer

    def parse_subarch(self, dims: str, widths: str | None = None) -> SubArchitecture:
        """A sub-architecture from the CLI's ``FIELD=D,...`` and ``0.5,0.5`` strings."""
        masks = self.supernet_masks
        return SubArchitecture.parse(dims, masks.fields, masks.dim, masks.hidden_units, widths)

    def final_layer_parameters(self) -> list[torch.nn.Parameter]:
        """The last layer (NASRec's post-training fine-tune trains only this): ``dnn_linear`` and the output bias."""
        model = self.backbone.model
        if not hasattr(model, "dnn_linear"):
            raise NotImplementedError(f"{type(model).__name__} has no dnn_linear: no final layer to fine-tune")
        params = list(model.dnn_linear.parameters())
        bias = getattr(model.out, "bias", None)
        return params + ([bias] if isinstance(bias, torch.nn.Parameter) else [])

    @torch.no_grad()
    def _score(self, batches: Sequence[Batch]) -> tuple[float, float]:
        logits, labels = [], []
        for batch in batches:
            logits.append(self(batch))
            labels.append(batch["label"])
        logit, label = torch.cat(logits), torch.cat(labels)                                    # (N,)
        auc = float(binary_auroc(logit, label.long()))
        return auc, float(F.binary_cross_entropy_with_logits(logit, label))

    def finetune_parameters(self, scope: FinetuneScope) -> list[torch.nn.Parameter]:
        """What a fine-tune of ``scope`` trains (under a sub-architecture its masked parts get zero gradient)."""
        if scope not in FINETUNE_SCOPES:
            raise ValueError(f"finetune_scope must be one of {', '.join(FINETUNE_SCOPES)}, got '{scope}'")
        return self.final_layer_parameters() if scope == "last_layer" else list(self.parameters())

    def _finetune(self, batches: Iterable[Batch], steps: int, lr: float, scope: FinetuneScope,
                  undo: _FinetuneUndo) -> None:
        params = self.finetune_parameters(scope)
        flags = {p: p.requires_grad for p in self.parameters()}
        try:
            for p in self.parameters():
                p.requires_grad_(False)
            for p in params:
                p.requires_grad_(True)
            # fresh moments: rows and coordinates the steps do not reach get zero gradient and stay where they are
            optimizer = RowwiseAdam(params, lr=lr)
            for batch in itertools.islice(itertools.cycle(batches), steps):
                batch = move_data_to_device(batch, self.device)
                loss = F.binary_cross_entropy_with_logits(self(batch), batch["label"])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                undo.save_before_step(params)
                optimizer.step()
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
                p.grad = None

    def evaluate_subnet(self, subarch: SubArchitecture, data: Any, finetune_steps: int = 0, *,
                        finetune_data: Iterable[Batch] | None = None, finetune_lr: float = 1e-3,
                        finetune_scope: FinetuneScope = "last_layer", refit_sweeps: int = 0,
                        refit_prior: float = REFIT_PRIOR, refit_rows: int = REFIT_ROWS,
                        refit_fields: RefitFields = "all", narrow: bool = True,
                        score_context: Callable[[], contextlib.AbstractContextManager] | None = None) -> SubnetScore:
        """Score ``subarch`` with inherited weights: validation AUC and logloss, parameters, wall seconds.

        ``data`` is a ``CTRDataModule`` (validation split; fine-tuning on its training split) or an iterable of
        batches (then ``finetune_data`` supplies the fine-tuning batches). With ``finetune_steps > 0`` the
        sub-architecture is first trained for that many steps with Adam at ``finetune_lr``: its final layer alone
        (``finetune_scope="last_layer"``, NASRec's post-training fine-tune) or every parameter it uses
        (``"all"``: embedding rows, DNN units, FM and linear parts; it ranked candidates of similar size better
        in ``benchmarks/results/supernet_rank.md``). The weights are restored afterwards, so the supernet is
        unchanged. The module is in eval mode throughout (no dropout, batch-norm statistics untouched).
        With ``refit_sweeps > 0`` the first-order weights are refit first (:class:`FirstOrderRefit`: a maximum a
        posteriori fit, prior precision ``refit_prior`` around the inherited weights, ``refit_sweeps`` Newton sweeps
        over the tables, on the first ``refit_rows`` training rows; the rest of the network frozen), so a field the
        candidate drops or narrows gets back in its first-order weight what its embedding carried in the
        supernet; skipped (``SubnetScore.refit_sweeps`` 0) for backbones without such weights (PNN).
        ``refit_fields`` (:data:`REFIT_FIELDS`): ``"all"`` refits every first-order weight; ``"narrowed"`` only the
        tables of the fields the candidate narrows, ``"scaled"`` those with the prior times ``dim / (dim - d)``.
        Both ranked the development sets worse than ``"all"`` (docs/supernet_ranking.md), which stays the default.
        With ``narrow`` (the default) the DNN computes at the candidate's own widths and input columns
        (:meth:`SupernetMasks.narrowed`, where the backbone allows): the masked network's scores up to float
        rounding (1.2e-7 AUC) at 0.69-0.77 of its CPU time (``benchmarks/results/narrow_scoring.md``);
        ``narrow=False`` runs the masked full-width network.
        ``score_context``, if given, is entered around the scoring alone, after the fine-tune (the PIM study rounds
        the tables to a storage precision there).
        """
        if refit_fields not in REFIT_FIELDS:
            raise ValueError(f"refit_fields must be one of {', '.join(REFIT_FIELDS)}, got '{refit_fields}'")
        if finetune_steps < 0 or refit_sweeps < 0 or refit_rows < 1 or not refit_prior > 0:
            raise ValueError(f"finetune_steps and refit_sweeps must be >= 0, refit_rows >= 1 and refit_prior > 0, got "
                             f"{finetune_steps}, {refit_sweeps}, {refit_rows} and {refit_prior}")
        self.finetune_parameters(finetune_scope)                                 # a bad scope fails first
        start = time.perf_counter()
        val_batches, train_batches = self._evaluation_data(data, finetune_data, finetune_steps,
                                                           refit_rows if refit_sweeps else 0)
        masks, previous = self.supernet_masks, self.supernet_masks.active
        undo, refit, first_order = _FinetuneUndo(), None, None
        with eval_mode(self):
            try:
                if not narrow:
                    masks.apply(subarch)
                with masks.narrowed(subarch) if narrow else contextlib.nullcontext():
                    if refit_sweeps:
                        refit = self._refit_on(first_batches(train_batches, rows=refit_rows))
                        fitted = refit.fit(refit_sweeps, refit_prior, _refit_scales(subarch, masks.dim, refit_fields))
                        if fitted is not None:
                            first_order = refit.read()
                            refit.write(fitted)
                    if finetune_steps:
                        self._finetune(train_batches, finetune_steps, finetune_lr, finetune_scope, undo)
                    with score_context() if score_context is not None else contextlib.nullcontext():
                        auc, logloss = self._score(val_batches)
            finally:
                undo.restore()                                    # the fine-tune's saves hold the refit weights
                if first_order is not None:
                    refit.write(first_order)
                masks.apply(previous) if previous is not None else masks.clear()
        vocab = {f: self.backbone.model.embedding_dict[f].num_embeddings for f in masks.fields}
        params = subarch.embedding_params(vocab)
        flops = flops_or_none(lambda: backbone_flops(self.backbone, subarch.dims, subarch.widths))
        return SubnetScore(subarch.to_dict(), auc, logloss, params, params / self.backbone.embedding_params, flops,
                           finetune_steps, time.perf_counter() - start, finetune_scope if finetune_steps else None,
                           refit_sweeps if first_order is not None else 0,
                           sum(len(b["label"]) for b in refit.batches) if first_order is not None else 0)

    def _refit_on(self, batches: list[Batch]) -> FirstOrderRefit:
        """A first-order refit on ``batches``: the last one where they hold the same rows (its design, a sizeable
        share of a candidate's scoring, depends on the rows alone; comparing them costs far less than building
        it, and a loop of ``evaluate_subnet(sub, datamodule)`` reads the same rows afresh for every candidate), a
        new one otherwise."""
        last = self._last_refit
        same = last is not None and len(last.source) == len(batches) and all(
            old.keys() == new.keys() and all(_same_values(old[k], new[k]) for k in old)
            for old, new in zip(last.source, batches))
        if not same:
            last = self._last_refit = FirstOrderRefit(self.backbone, batches)
        return last

    def evaluate_many(self, subarchs: Sequence[SubArchitecture], data: Any, finetune_steps: int = 0, *,
                      finetune_data: Iterable[Batch] | None = None, finetune_lr: float = 1e-3,
                      finetune_scope: FinetuneScope = "last_layer", refit_sweeps: int = 0,
                      refit_prior: float = REFIT_PRIOR, refit_rows: int = REFIT_ROWS,
                      narrow: bool = True) -> list[SubnetScore]:
        """:meth:`evaluate_subnet` for each sub-architecture, reading the data once."""
        val_batches, train_batches = self._evaluation_data(data, finetune_data, finetune_steps,
                                                           refit_rows if refit_sweeps else 0)
        return [self.evaluate_subnet(s, val_batches, finetune_steps, finetune_data=train_batches,
                                     finetune_lr=finetune_lr, finetune_scope=finetune_scope, refit_sweeps=refit_sweeps,
                                     refit_prior=refit_prior, refit_rows=refit_rows, narrow=narrow) for s in subarchs]

    def _evaluation_data(self, data: Any, finetune_data: Iterable[Batch] | None, batches: int,
                         rows: int) -> tuple[list[Batch], list[Batch]]:
        """The validation batches and the first training batches: at least ``batches`` of them (the fine-tune's
        steps) and ``rows`` rows (the refit's), fewer where the data ends."""
        needed = batches > 0 or rows > 0
        if hasattr(data, "stream"):
            val = data.stream("val")
            if finetune_data is None and needed:
                finetune_data = data.stream("train")
        else:
            val = data
        if needed and finetune_data is None:
            raise ValueError("finetune_steps or refit_sweeps > 0 needs training batches: pass a CTRDataModule or "
                             "finetune_data")
        val_batches = [move_data_to_device(b, self.device) for b in val]
        if not val_batches:
            raise ValueError("no validation batches to score the sub-architecture on")
        train_batches = [move_data_to_device(b, self.device)
                         for b in first_batches(finetune_data, batches, rows)] if needed else []
        if needed and not train_batches:
            raise ValueError("finetune_data gave no training batches")
        return val_batches, train_batches

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint["ihas_supernet"] = {"fields": list(self.supernet_masks.fields), "dim": self.supernet_masks.dim,
                                       "hidden_units": list(self.supernet_masks.hidden_units)}

"""What every CTR LightningModule of ours shares: the loss, AUC/logloss per stage, encoders in checkpoints."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.strategies import DDPStrategy
from pytorch_lightning.utilities import rank_zero_warn
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAUROC
from typing_extensions import override

from ..backbones import CTRBackbone
from ..data.encoders import EncodedColumns, FeatureEncoder
from ..data.loader import Batch, to_batch
from ..data.schema import RawColumns, Schema
from ..safe_load import load_checkpoint_state
from .rowwise import RowwiseAdam, clip_gradients, has_sparse_grad
from .sparse_ddp import all_reduce_sparse_gradients, broadcast_from_rank0, row_wise_tables

__all__ = ["CTRModule", "NonFiniteLossError", "backbone_weights", "eval_mode", "fused_adam", "predict_encoded"]

_STAGES = ("train", "val", "test")
log = logging.getLogger(__name__)


def check_labels(labels: Tensor, stage: str) -> None:
    """Labels must be 0 or 1: BCE would quietly train on 2 or NaN (or fail inside torch on GPU)."""
    bad = (labels != 0) & (labels != 1)                                                      # NaN is bad too
    if bad.any():
        row = int(bad.nonzero()[0, 0])
        raise ValueError(f"column 'label': label must be 0 or 1, got {labels[row].item()} ({stage} batch row {row})")


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN/inf loss; the message says at which epoch and step."""


class CTRModule(pl.LightningModule):
    """Base class: subclasses build ``self.backbone`` and may add terms in :meth:`extra_loss`.

    The loss is BCE on logits plus DeepCTR-Torch's regularization loss divided by the batch size (its
    own ``fit`` sums the BCE over the batch and adds the regularizer once; dividing both by B keeps the
    same balance with a mean loss).
    """

    backbone: CTRBackbone

    def __init__(self) -> None:
        super().__init__()
        self.encoder: FeatureEncoder | None = None
        self.last_oov_rate: float | None = None
        self._step_batch_size = 1         # the training step's rows: the scale of the row-wise tables' L2
        self._row_l2_checked = False
        self._ddp_row_wise: list[Tensor] = []   # row-wise tables DDP ignores this fit (averaged here instead)
        for stage in _STAGES:
            setattr(self, f"{stage}_auroc", BinaryAUROC())
            setattr(self, f"{stage}_logloss", MeanMetric())

    @property
    def schema(self) -> Schema:
        return self.backbone.schema

    @override
    def forward(self, batch: Batch) -> Tensor:
        """Logits, (B,)."""
        return self.backbone(batch)

    def extra_loss(self, batch: Batch, logits: Tensor) -> Tensor | None:
        """Further terms of the training loss (gate regularizers, ...); logged by the subclass."""
        return None

    def regularization_loss(self) -> Tensor:
        """DeepCTR-Torch's L1/L2 terms on the weights the last forward used (the backbone's own by default)."""
        return self.backbone.regularization_loss()

    @override
    def setup(self, stage: str) -> None:
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if self.encoder is None and getattr(datamodule, "encoder", None) is not None:
            self.encoder = datamodule.encoder
        if stage == "fit":
            # gloo's sparse all-reduce can corrupt the heap: under DDP the row-wise tables are kept out of it and
            # averaged over the ranks with dense collectives in on_before_optimizer_step (modules/sparse_ddp.py)
            trainer = self._trainer
            ddp = trainer is not None and trainer.world_size > 1 and isinstance(trainer.strategy, DDPStrategy)
            tables = row_wise_tables(self, self.backbone.tables()) if ddp else {}
            self._ddp_row_wise = list(tables.values())
            if tables:
                self._ddp_params_and_buffers_to_ignore = list(tables)

    @override
    def on_fit_start(self) -> None:
        if self._ddp_row_wise:                                  # DDP broadcasts only the parameters it wraps
            broadcast_from_rank0(self._ddp_row_wise)

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> Tensor:
        check_labels(batch["label"], "training")
        self.backbone.forget_trained_rows()          # a row-wise L1 covers this step's rows only
        logits = self(batch)
        self._step_batch_size = logits.shape[0]
        bce = F.binary_cross_entropy_with_logits(logits, batch["label"])
        loss = bce + self.regularization_loss() / logits.shape[0]
        extra = self.extra_loss(batch, logits)
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"non-finite training loss {loss.item()} at epoch {self.current_epoch}, step {self.global_step} "
                f"(batch {batch_idx}); BCE was {bce.item()}: lower the learning rate or check the dense inputs")
        self.log("train_loss", bce, prog_bar=True, batch_size=logits.shape[0])
        return loss

    def _evaluate(self, stage: str, batch: Batch) -> None:
        labels = batch["label"]
        check_labels(labels, stage)
        logits = self(batch)
        auroc, logloss = getattr(self, f"{stage}_auroc"), getattr(self, f"{stage}_logloss")
        auroc.update(logits.detach(), labels.long())
        logloss.update(F.binary_cross_entropy_with_logits(logits.detach(), labels, reduction="none"))
        self.log(f"{stage}_auc", auroc, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=len(labels))
        self.log(f"{stage}_logloss", logloss, on_step=False, on_epoch=True, batch_size=len(labels))

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("val", batch)

    @override
    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._evaluate("test", batch)

    @override
    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return torch.sigmoid(self(batch))

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        # Frozen parameters (a retraining's router, the dense layers its groups' copies replace) stay out.
        return fused_adam([p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr,
                          row_l2=self.backbone.row_l2())

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._ddp_row_wise:
            all_reduce_sparse_gradients(self._ddp_row_wise)
        # The L2 of row-wise tables, d/dw (l2 * ||w||^2 / B) = 2 * l2 / B * w, is the optimiser's weight decay
        # on the rows this step updates (B: the step's batch, all its accumulated micro-batches).
        accumulated = getattr(self._trainer, "accumulate_grad_batches", 1) if self._trainer is not None else 1
        decayed = False
        for group in optimizer.param_groups:
            if "row_l2" in group:
                group["weight_decay"] = 2.0 * group["row_l2"] / (self._step_batch_size * accumulated)
                decayed = True
        if not decayed and not self._row_l2_checked and self.backbone.row_l2():
            rank_zero_warn("the row-wise tables' L2 (l2_reg_embedding) is applied by the optimiser that "
                           "configure_optimizers builds with fused_adam(..., row_l2=self.backbone.row_l2()); this "
                           "optimiser has no 'row_l2' groups, so those tables get no L2")
        self._row_l2_checked = True

    @override
    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # torch's clip_grad_norm_ has no sparse kernel: with row-wise tables the clipping is ours.
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if not gradient_clip_val or not has_sparse_grad(params):
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        algorithm = getattr(gradient_clip_algorithm, "value", gradient_clip_algorithm) or "norm"
        clip_gradients(params, float(gradient_clip_val), str(algorithm))

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.encoder is not None:
            checkpoint["ihas_encoder"] = self.encoder.to_dict()

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "ihas_encoder" in checkpoint:
            encoder = FeatureEncoder.from_dict(checkpoint["ihas_encoder"])
            check_same_schema(encoder, self)
            self.encoder = encoder

    def init_backbone_from(self, checkpoint_path: str) -> int:
        """Copy the backbone's weights from another module's checkpoint (a trained supernet, a plain backbone)
        of the same backbone, schema and dimension; returns the number of tensors copied."""
        state = load_checkpoint_state(checkpoint_path, "a checkpoint to initialize the backbone from")
        wanted = backbone_weights(state, self.state_dict(), f"checkpoint '{checkpoint_path}'")
        self.load_state_dict(wanted, strict=False)
        return len(wanted)

    @torch.no_grad()
    def predict_raw(self, raw: RawColumns, batch_size: int = 8192) -> np.ndarray:
        """Click probabilities for raw rows, encoded with the encoders saved in the checkpoint."""
        if self.encoder is None:
            raise RuntimeError("this module has no encoder: train it with a CTRDataModule or load a checkpoint")
        encoded = self.encoder.transform(raw)
        self.last_oov_rate = self.encoder.oov_rate(encoded)
        log.info("predict_raw: %d rows, OOV rate %.4f (categories unseen in training map to the OOV id)",
                 len(encoded), self.last_oov_rate)
        return predict_encoded(self, encoded, batch_size)


def fused_adam(params: Iterable[Tensor] | Iterable[dict[str, Any]], lr: float = 1e-3,
               row_l2: Mapping[Tensor, float] | None = None) -> RowwiseAdam:
    """Adam over ``params`` (tensors or param-group dicts), fused when every tensor is on the CPU or a CUDA
    device: one kernel per step instead of ~10 passes over every dense-gradient tensor. Tables with sparse
    gradients (row-wise updates) get :class:`RowwiseAdam`'s step over the rows the batch touched.

    ``row_l2`` (:meth:`CTRBackbone.row_l2`) moves each such table into a group of its own, keyed
    ``"row_l2"``, whose ``weight_decay`` :meth:`CTRModule.on_before_optimizer_step` sets for every step."""
    items = list(params)
    groups = [{**g, "params": list(g["params"])} for g in items] if items and isinstance(items[0], dict) else (
        [{"params": items}] if items else [])
    tensors = [t for g in groups for t in g["params"]]
    fused = all(t.device.type in ("cpu", "cuda") for t in tensors)
    row_l2 = row_l2 or {}
    split: list[dict[str, Any]] = []
    for group in groups:
        decayed: dict[float, list[Tensor]] = {}
        rest: list[Tensor] = []
        for p in group["params"]:
            if p in row_l2:
                decayed.setdefault(row_l2[p], []).append(p)
            else:
                rest.append(p)
        split += [{**group, "params": rest}] if rest else []
        split += [{**group, "params": ps, "row_l2": c, "weight_decay": 0.0} for c, ps in decayed.items()]
    return RowwiseAdam(split, lr=lr, fused=fused)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block and every submodule back in its own mode after it.

    Lightning (2.2 on) starts ``fit`` in the modes it finds and only warns about modules left in eval mode, so a
    scoring or routing pass before training (fitting a router, measuring agreement) must not leave its eval mode
    behind: dropout would stay off and batch-norm statistics frozen for the whole training.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training


@torch.no_grad()
def predict_encoded(model: nn.Module, encoded: EncodedColumns, batch_size: int = 8192) -> np.ndarray:
    """Click probabilities ``sigmoid(model(batch))`` ``(n,)`` for encoded rows, ``batch_size`` rows at a time.

    Runs in eval mode on the device of the model's parameters and puts the model back in the mode it was in.
    """
    device = next(model.parameters()).device
    out = []
    with eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            batch = to_batch(encoded.take(np.arange(start, min(start + batch_size, len(encoded)))))
            out.append(torch.sigmoid(model({k: v.to(device) for k, v in batch.items()})).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def check_same_schema(encoder: FeatureEncoder, module: CTRModule) -> None:
    """A checkpoint's encoder must describe the module's columns and tables; the error names what differs."""
    saved, mine = encoder.schema, module.schema
    saved_cols = [*saved.embedded_fields, *saved.dense]
    my_cols = [*mine.embedded_fields, *mine.dense]
    only_saved = [c for c in saved_cols if c not in my_cols]
    only_mine = [c for c in my_cols if c not in saved_cols]
    if only_saved or only_mine or saved.embedded_fields != mine.embedded_fields or saved.dense != mine.dense:
        raise ValueError(f"checkpoint schema (columns only in the checkpoint: {only_saved}, only in this module: "
                         f"{only_mine}) does not match the module's; checkpoint columns {saved_cols}, module "
                         f"columns {my_cols}")
    tables = module.backbone.model.embedding_dict
    for name, size in encoder.vocab_sizes.items():
        if tables[name].num_embeddings != size:
            raise ValueError(f"column '{name}': the checkpoint's vocabulary size is {size}, this module's table "
                             f"has {tables[name].num_embeddings} rows (built from other data)")


def backbone_weights(state: dict[str, Tensor], own: dict[str, Tensor], source: str,
                     adapt: Callable[[str, Tensor, Tensor], Tensor] | None = None) -> dict[str, Tensor]:
    """The ``backbone.*`` tensors of ``state`` that ``own`` (a module's state_dict) holds, passed through
    ``adapt(key, value, own_value)`` (e.g. tables cut to their stored width); an error naming ``source`` when
    there are none or their shapes differ from ``own``'s."""
    wanted = {k: adapt(k, v, own[k]) if adapt else v for k, v in state.items()
              if k.startswith("backbone.") and k in own}
    mismatched = [k for k, v in wanted.items() if own[k].shape != v.shape]
    if not wanted or mismatched:
        raise ValueError(f"{source} does not hold this backbone's weights (shape mismatch in {mismatched[:3]})"
                         if mismatched else f"{source} holds no backbone weights")
    return wanted

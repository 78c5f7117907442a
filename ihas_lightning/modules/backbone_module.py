"""``BackboneModule``: any supported DeepCTR-Torch model at one uniform embedding dimension."""

from __future__ import annotations

from collections.abc import Sequence

from ..backbones import build_backbone
from ..data.schema import Schema
from .base import CTRModule

__all__ = ["BackboneModule"]


class BackboneModule(CTRModule):
    """A DeepCTR-Torch model trained in a Lightning ``Trainer``.

    Args:
        schema: the data's schema (a :class:`Schema` or its dict), e.g. ``datamodule.schema``.
        vocab_sizes: embedding rows per field, e.g. ``datamodule.vocab_sizes``.
        backbone: DeepCTR-Torch model name (see ``ihas_lightning.backbones.BACKBONES``).
        dim: embedding dimension of every field.
        dnn_hidden_units: DNN widths.
        lr: Adam learning rate (DeepCTR-Torch's default 1e-3).
        seed: the model's initialisation seed.
        options: more constructor arguments of the model (e.g. ``{"cross_num": 3}``).

    Example:
        >>> dm = CTRDataModule("synthetic"); dm.prepare_data(); dm.setup()
        >>> module = BackboneModule(dm.schema, dm.vocab_sizes, backbone="DCN")
        >>> pl.Trainer(max_epochs=2).fit(module, dm)
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], backbone: str = "DeepFM", dim: int = 16,
                 dnn_hidden_units: Sequence[int] = (256, 128), lr: float = 1e-3, dnn_dropout: float = 0.0,
                 l2_reg_embedding: float = 1e-5, seed: int = 1024, options: dict | None = None) -> None:
        super().__init__()
        schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.save_hyperparameters({"schema": schema.to_dict(), "vocab_sizes": dict(vocab_sizes), "backbone": backbone,
                                   "dim": dim, "dnn_hidden_units": list(dnn_hidden_units), "lr": lr,
                                   "dnn_dropout": dnn_dropout, "l2_reg_embedding": l2_reg_embedding, "seed": seed,
                                   "options": options or {}})
        self.backbone = build_backbone(backbone, schema, vocab_sizes, dim, dnn_hidden_units=dnn_hidden_units,
                                       seed=seed, dnn_dropout=dnn_dropout, l2_reg_embedding=l2_reg_embedding,
                                       options=options)

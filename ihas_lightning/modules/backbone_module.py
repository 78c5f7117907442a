"""``BackboneModule``: any supported DeepCTR-Torch model at one uniform embedding dimension."""

from __future__ import annotations

from collections.abc import Sequence

from ..backbones import build_backbone
from ..data.schema import Schema
from .base import CTRModule
from .config import BackboneConfig

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
        embedding_updates: ``"rowwise"`` (default) or ``"dense"`` table updates (see :class:`BackboneConfig`).
        config: all of the above in one :class:`BackboneConfig`; when given, it replaces them.

    Example:
        >>> dm = CTRDataModule("synthetic"); dm.prepare_data(); dm.setup()
        >>> module = BackboneModule(dm.schema, dm.vocab_sizes, backbone="DCN")
        >>> pl.Trainer(max_epochs=2).fit(module, dm)
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], backbone: str = "DeepFM", dim: int = 16,
                 dnn_hidden_units: Sequence[int] = (256, 128), lr: float = 1e-3, dnn_dropout: float = 0.0,
                 l2_reg_embedding: float = 1e-5, seed: int = 1024, options: dict | None = None, *,
                 config: BackboneConfig | None = None,
                 embedding_updates: str = "rowwise") -> None:
        super().__init__()
        schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        config = config or BackboneConfig(backbone, dim, tuple(dnn_hidden_units), lr, dnn_dropout, l2_reg_embedding,
                                          seed, options or {}, embedding_updates)
        self.save_hyperparameters({"schema": schema.to_dict(), "vocab_sizes": dict(vocab_sizes), **config.hparams()})
        self.backbone = build_backbone(config.backbone, schema, vocab_sizes, config.dim, **config.build_kwargs())

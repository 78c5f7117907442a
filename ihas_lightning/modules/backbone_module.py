"""``BackboneModule``: any supported DeepCTR-Torch model at one uniform embedding dimension, or at per-field
widths (``field_dims``: the equal-footprint baselines)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..backbones import build_backbone, narrow_tables, width_multiple
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
        seed: the model's initialization seed.
        options: more constructor arguments of the model (e.g. ``{"cross_num": 3}``).
        embedding_updates: ``"rowwise"`` (default) or ``"dense"`` table updates (see :class:`BackboneConfig`).
        config: all of the above in one :class:`BackboneConfig`; when given, it replaces them.
        field_dims: per-field widths (every embedded field, each >= 1): the backbone is built at
            ``dim = max(field_dims)`` (replacing ``config.dim``; rounded up to a multiple of AutoInt's attention
            heads, see ``width_multiple``) and each table is stored at its own width
            (``narrow_tables``), zero-padded to ``dim`` on the way in, which is exact for FM inner products and
            linear layers. None (default): every table at ``dim``.

    Example:
        >>> dm = CTRDataModule("synthetic"); dm.prepare_data(); dm.setup()
        >>> module = BackboneModule(dm.schema, dm.vocab_sizes, backbone="DCN")
        >>> pl.Trainer(max_epochs=2).fit(module, dm)
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], backbone: str = "DeepFM", dim: int = 16,
                 dnn_hidden_units: Sequence[int] = (256, 128), lr: float = 1e-3, dnn_dropout: float = 0.0,
                 l2_reg_embedding: float = 1e-5, seed: int = 1024, options: dict | None = None, *,
                 config: BackboneConfig | None = None, field_dims: Mapping[str, int] | None = None,
                 embedding_updates: str = "rowwise") -> None:
        super().__init__()
        schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        config = config or BackboneConfig(backbone, dim, tuple(dnn_hidden_units), lr, dnn_dropout, l2_reg_embedding,
                                          seed, options or {}, embedding_updates)
        hparams = {"schema": schema.to_dict(), "vocab_sizes": dict(vocab_sizes)}
        if field_dims is not None:
            field_dims = _checked_field_dims(field_dims, schema.embedded_fields)
            multiple = width_multiple(config.backbone, config.options)
            widest = -(-max(field_dims.values()) // multiple) * multiple
            config = BackboneConfig(**{**config.hparams(), "dim": widest})
            hparams["field_dims"] = field_dims
        self.save_hyperparameters({**hparams, **config.hparams()})
        self.backbone = build_backbone(config.backbone, schema, vocab_sizes, config.dim, **config.build_kwargs())
        if field_dims is not None:
            narrow_tables(self.backbone, field_dims)

    @property
    def field_dims(self) -> dict[str, int]:
        """Each embedded field's stored width (``dim`` for all of them without ``field_dims``)."""
        tables = self.backbone.model.embedding_dict
        return {f: int(tables[f].embedding_dim) for f in self.backbone.fields}


def _checked_field_dims(field_dims: Mapping[str, int], fields: Sequence[str]) -> dict[str, int]:
    """``field_dims`` in schema order; a ValueError names a missing, unknown or non-positive field."""
    missing = [f for f in fields if f not in field_dims]
    unknown = [f for f in field_dims if f not in fields]
    if missing or unknown:
        raise ValueError(f"field_dims must give every embedded field a width: missing {missing}, unknown {unknown}")
    bad = {f: d for f, d in field_dims.items() if isinstance(d, bool) or int(d) != d or d < 1}
    if bad:
        raise ValueError(f"field_dims must be integers >= 1, got {bad}")
    return {f: int(field_dims[f]) for f in fields}

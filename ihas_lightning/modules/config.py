"""``BackboneConfig``: what every LightningModule of ours needs to build its DeepCTR-Torch backbone.

Kept apart from the modules (it imports none of them), as torchrec keeps its embedding configs apart from
its embedding modules. The modules save it flat in their hyperparameters (:meth:`BackboneConfig.hparams`),
so checkpoints written before the config existed still load.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EMBEDDING_UPDATES", "BackboneConfig"]

EMBEDDING_UPDATES = ("rowwise", "dense")


@dataclass(frozen=True)
class BackboneConfig:
    """A DeepCTR-Torch backbone and its optimizer settings.

    Args:
        backbone: DeepCTR-Torch model name (see ``ihas_lightning.backbones.BACKBONES``).
        dim: embedding dimension of every field (the largest one, for the search and the supernet).
        dnn_hidden_units: DNN widths.
        lr: Adam learning rate (DeepCTR-Torch's default 1e-3).
        dnn_dropout: dropout of the DNN layers.
        l2_reg_embedding: DeepCTR-Torch's L2 on the embedding tables.
        seed: the model's initialization seed.
        options: more constructor arguments of the model (e.g. ``{"cross_num": 3}``).
        embedding_updates: ``"rowwise"`` (default): the tables give sparse gradients and a step reads and
            writes only the rows the batch looks up (lazy Adam; the L2 on the tables covers those rows, as the
            optimiser's weight decay on them, see :mod:`~ihas_lightning.modules.rowwise`); ``"dense"``: every
            row of every table at every step.

    Example:
        >>> config = BackboneConfig("DCN", dim=8, dnn_hidden_units=(64, 32))
        >>> BackboneModule(dm.schema, dm.vocab_sizes, config=config)
    """

    backbone: str = "DeepFM"
    dim: int = 16
    dnn_hidden_units: tuple[int, ...] = (256, 128)
    lr: float = 1e-3
    dnn_dropout: float = 0.0
    l2_reg_embedding: float = 1e-5
    seed: int = 1024
    options: dict[str, Any] = field(default_factory=dict)
    embedding_updates: str = "rowwise"

    def __post_init__(self) -> None:
        object.__setattr__(self, "dnn_hidden_units", tuple(int(w) for w in self.dnn_hidden_units))
        object.__setattr__(self, "options", dict(self.options or {}))
        if not isinstance(self.backbone, str) or not self.backbone:
            raise ValueError(f"backbone must be a DeepCTR-Torch model name, got {self.backbone!r}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be an int >= 1, got {self.dim!r}")
        if any(w < 1 for w in self.dnn_hidden_units):
            raise ValueError(f"dnn_hidden_units must be positive widths, got {self.dnn_hidden_units}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.dnn_dropout < 1.0:
            raise ValueError(f"dnn_dropout must be in [0, 1), got {self.dnn_dropout}")
        if not (math.isfinite(self.l2_reg_embedding) and self.l2_reg_embedding >= 0):
            raise ValueError(f"l2_reg_embedding must be finite and >= 0, got {self.l2_reg_embedding}")
        if self.embedding_updates not in EMBEDDING_UPDATES:
            raise ValueError(f"embedding_updates must be one of {EMBEDDING_UPDATES}, got {self.embedding_updates!r}")

    def hparams(self) -> dict[str, Any]:
        """The flat hyperparameters a module saves (lists, not tuples, as the checkpoints have always held)."""
        return {**asdict(self), "dnn_hidden_units": list(self.dnn_hidden_units)}

    def build_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``build_backbone`` after the schema, vocabulary sizes and dimension."""
        return {"dnn_hidden_units": self.dnn_hidden_units, "seed": self.seed, "dnn_dropout": self.dnn_dropout,
                "l2_reg_embedding": self.l2_reg_embedding, "options": self.options,
                "embedding_updates": self.embedding_updates}

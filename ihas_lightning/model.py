"""``IHASModel``: the routed model a user ships: its router (a linear map of every field's first columns, or the
searched gates and nearest centroid) -> that group's dimensions.

One ``nn.Module``, one file: it saves its configuration, weights and the encoders together, loads with
:meth:`IHASModel.load`, and predicts on raw rows. Predictions (:meth:`IHASModel.predict_raw`,
:meth:`IHASModel.predict`) run the compact form (:class:`~ihas_lightning.compact.CompactGroups`: each group at
its own widths), rebuilt whenever the module's weights have changed since the last one; ``forward`` is the
module's zero-padded, differentiable one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from .compact import CompactGroups, compact_or_none
from .data.encoders import FeatureEncoder
from .data.loader import Batch
from .data.schema import RawColumns
from .flops import ModelCounts
from .modules.base import eval_mode, predict_encoded
from .modules.retrain_module import RetrainModule
from .safe_load import load_torch_file

__all__ = ["IHASModel"]


class IHASModel(nn.Module):
    """The retrained groups and their router, with the encoders that turn raw rows into ids.

    Example:
        >>> model = IHASModel(retrain_module, encoder, group_share=[0.4, 0.6])
        >>> model.save("ihas.pt"); model = IHASModel.load("ihas.pt")
        >>> model.predict_raw(rows)                       # click probabilities
    """

    def __init__(self, module: RetrainModule, encoder: FeatureEncoder | None = None,
                 group_share: list[float] | None = None) -> None:
        super().__init__()
        self.module = module
        self.encoder = encoder
        share = group_share or [1.0 / module.num_groups] * module.num_groups
        if len(share) != module.num_groups:
            raise ValueError(f"group_share has {len(share)} entries for {module.num_groups} groups")
        self.group_share = [float(s) for s in share]
        # the compact form and the state it was built from (kept off the module tree: not in state_dict)
        object.__setattr__(self, "_compact", (None, None))

    def forward(self, batch: Batch) -> Tensor:
        """Logits (B,) of the module as trained (every group zero-padded to the full width; differentiable)."""
        return self.module(batch)

    def compact(self) -> CompactGroups | None:
        """The compact form of the current weights (built once per state of the module), or None with a warning
        for a backbone that has none (then predictions run the zero-padded module)."""
        key = tuple((id(t), t._version, t.data_ptr()) for t in (*self.module.parameters(), *self.module.buffers()))
        built_for, compact = self._compact
        if built_for != key:
            compact = compact_or_none(self.module)
            object.__setattr__(self, "_compact", (key, compact))
        return compact

    @torch.no_grad()
    def predict(self, batch: Batch) -> Tensor:
        """(B,) click probabilities of encoded rows, each group at its own widths (:meth:`compact`)."""
        compact = self.compact()
        if compact is None:
            with eval_mode(self.module):
                return torch.sigmoid(self.module(batch))
        return torch.sigmoid(compact(batch))

    @torch.no_grad()
    def predict_groups(self, batch: Batch) -> Tensor:
        """(B,) group of every sample."""
        self.module.eval()
        return self.module.route(self.module.backbone.field_embeddings(batch))

    @property
    def embedding_params(self) -> int:
        """The shared tables, each stored once at its widest group's width."""
        return self.module.embedding_params

    @property
    def router_params(self) -> int:
        """Everything routing reads: the linear router's weights and biases, or the gate network (weights, biases,
        BatchNorm statistics, temperature) and the K*F*D centroids."""
        return self.module.router_params

    @property
    def footprint_params(self) -> int:
        """``embedding_params + router_params``: the figure comparisons with uniform models use."""
        return self.module.footprint_params

    @property
    def dense_params(self) -> int:
        """Non-embedding, non-router parameters: K copies when the groups have their own dense layers."""
        return self.module.dense_params

    @property
    def router_flops_per_sample(self) -> float:
        return self.module.router_flops_per_sample

    @property
    def flops_per_sample(self) -> float | None:
        """What executes per sample: ``sum_c group_share[c] * group_flops[c] + router_flops_per_sample``;
        None for a backbone that is not counted (:mod:`ihas_lightning.flops`)."""
        return self.module.expected_flops(self.group_share)

    @property
    def counts(self) -> ModelCounts:
        """All the counts above in one record (its ``to_dict()`` is what metrics files take)."""
        return self.module.counts(self.group_share)

    @torch.no_grad()
    def predict_raw(self, raw: RawColumns, batch_size: int = 8192) -> np.ndarray:
        """Click probabilities for raw rows, encoded by the saved encoders (unseen categories -> OOV)."""
        if self.encoder is None:
            raise RuntimeError("this IHASModel was saved without encoders; encode rows yourself and call it")
        compact = self.compact()
        return predict_encoded(compact if compact is not None else self.module, self.encoder.transform(raw), batch_size)

    def save(self, path: str | Path) -> None:
        torch.save({"hparams": dict(self.module.hparams), "state_dict": self.module.state_dict(),
                    "encoder": self.encoder.to_dict() if self.encoder else None,
                    "group_share": self.group_share, "format": "ihas-model/1"}, str(path))

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> IHASModel:
        """The model saved at ``path``, on ``map_location``; a file that is not one (or would run code on load) is
        a ValueError."""
        data = load_torch_file(path, "an IHASModel file", "cpu")
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        if found != "ihas-model/1":
            raise ValueError(f"'{path}' is not an IHASModel file (format {found!r}); save one with IHASModel.save")
        module = RetrainModule(**data["hparams"])
        module.load_state_dict(data["state_dict"])
        module.to(map_location)           # built on the CPU, where load_state_dict copied the file's tensors
        encoder = FeatureEncoder.from_dict(data["encoder"]) if data["encoder"] else None
        return cls(module, encoder, data["group_share"])

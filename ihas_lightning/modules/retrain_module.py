"""``RetrainModule``: one compact model per group, sharing each field's table, behind a router.

DESIGN.md section 2.3: group c uses the first ``d[c, f]`` columns of field f's table, stored once at the
width of its widest group; all groups are warm-started from the searched weights and fine-tuned jointly on
all training data, each sample through its own group's dimensions. The prototype measured this at the
uniform model's AUC with half of its embedding parameters; K separate models trained from scratch on their
own groups lost 0.005-0.025 AUC (that literal reading is ``groups_from="batch"`` with one group per module).

Routing: the searched gate network (frozen) gives each sample its deterministic mask, the nearest
centroid its group. It reads the module's own tables, so training and inference route alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
import torch
from torch import Tensor

from ..backbones import build_backbone, narrow_tables
from ..data.loader import Batch
from ..data.schema import Schema
from ..gates import GateConfig, InstanceGates
from .base import CTRModule

__all__ = ["RetrainModule", "prefix_masks"]


def prefix_masks(group_dims: Tensor, dim: int) -> Tensor:
    """(K, F) dimensions -> (K, F, D) 0/1 masks that keep each field's first d[c, f] coordinates."""
    positions = torch.arange(dim, device=group_dims.device)                                   # (D,)
    return (positions < group_dims.unsqueeze(-1)).float()                                     # (K, F, D)


class RetrainModule(CTRModule):
    """Per-group dimensions over shared tables, routed by the searched gates.

    Args:
        schema, vocab_sizes, backbone, dim, dnn_hidden_units, lr, seed, options: as for ``BackboneModule``.
        group_dims: (K, F) dimensions per group and field (0 drops the field for that group).
        centroids: (K, F*D) k-means centroids of the deterministic masks (the router).
        gate: the search's gate configuration (the router's gate network is rebuilt from it).
        groups_from: ``"router"`` (default) routes every sample; ``"batch"`` reads ``batch["group"]``
            (precomputed assignments, for the separate-models variant).
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], group_dims: Sequence[Sequence[int]],
                 centroids: Sequence[Sequence[float]], gate: GateConfig | dict | None = None,
                 backbone: str = "DeepFM", dim: int = 16, dnn_hidden_units: Sequence[int] = (256, 128),
                 lr: float = 1e-3, seed: int = 1024, options: dict | None = None,
                 groups_from: str = "router") -> None:
        super().__init__()
        schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        gate = gate if isinstance(gate, GateConfig) else GateConfig(**(gate or {}))
        dims = torch.as_tensor(group_dims, dtype=torch.long)
        fields = schema.embedded_fields
        if dims.ndim != 2 or dims.shape[1] != len(fields):
            raise ValueError(f"group_dims must be (K, {len(fields)}), got {tuple(dims.shape)}")
        if dims.min() < 0 or dims.max() > dim:
            raise ValueError(f"group_dims must lie in [0, {dim}], got {dims.min().item()}..{dims.max().item()}")
        if groups_from not in ("router", "batch"):
            raise ValueError(f"groups_from must be 'router' or 'batch', got {groups_from!r}")
        self.save_hyperparameters({"schema": schema.to_dict(), "vocab_sizes": dict(vocab_sizes),
                                   "group_dims": dims.tolist(), "centroids": [list(map(float, c)) for c in centroids],
                                   "gate": asdict(gate), "backbone": backbone, "dim": dim,
                                   "dnn_hidden_units": list(dnn_hidden_units), "lr": lr, "seed": seed,
                                   "options": options or {}, "groups_from": groups_from})
        self.backbone = build_backbone(backbone, schema, vocab_sizes, dim, dnn_hidden_units=dnn_hidden_units,
                                       seed=seed, options=options)
        self.gates = InstanceGates(len(fields), dim, gate, field_costs=[float(vocab_sizes[f]) for f in fields])
        self.gates.requires_grad_(False)
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32))     # (K, F*D)
        self.register_buffer("group_dims", dims)                                                 # (K, F)
        self.register_buffer("group_masks", prefix_masks(dims, dim))                             # (K, F, D)
        self.table_widths = {f: int(dims[:, i].max()) for i, f in enumerate(fields)}
        narrow_tables(self.backbone, self.table_widths)
        self.last_groups: Tensor | None = None
        self._batch_groups: Tensor | None = None
        self.backbone.embedding_transform = self._group_embeddings

    @property
    def num_groups(self) -> int:
        return int(self.group_dims.shape[0])

    def warm_start(self, search_state: dict[str, Tensor], tables_only: bool = False) -> None:
        """Start from a search checkpoint's weights: backbone (tables cut to their widths) and gates.

        ``tables_only`` (another backbone than the searched one) takes the embedding and first-order tables
        and the router only: the router reads this module's tables, and on fresh random tables the searched
        gate network sends nearly every sample to one group (measured: 92-100% on MovieLens-100K).
        """
        own = self.state_dict()
        loaded = {}
        shared = ("gates.", "backbone.model.embedding_dict.", "backbone.model.linear_model.embedding_dict.")
        for key, value in search_state.items():
            if key not in own or key.startswith(("train_", "val_", "test_")):
                continue
            if tables_only and not key.startswith(shared):
                continue
            target = own[key]
            loaded[key] = value[:, :target.shape[1]] if value.ndim == 2 and value.shape[1] > target.shape[1] \
                and key.startswith("backbone.model.embedding_dict.") else value
        missing = [k for k in own if k.startswith("gates.") and k not in loaded]
        if missing:
            raise ValueError(f"the search state has no router weights {missing[:3]}...")
        self.load_state_dict(loaded, strict=False)

    @torch.no_grad()
    def route(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) embeddings -> (B,) group ids: deterministic gates, then the nearest centroid."""
        masks = self.gates.deterministic_mask(embeddings).flatten(1)                            # (B, F*D)
        return torch.cdist(masks, self.centroids).argmin(dim=1)                                 # (B,)

    def _group_embeddings(self, embeddings: Tensor) -> Tensor:
        if self.hparams.groups_from == "batch":
            if self._batch_groups is None:
                raise KeyError("groups_from='batch' needs batch['group']")
            groups = self._batch_groups
        else:
            groups = self.route(embeddings.detach())
        self.last_groups = groups
        return embeddings * self.group_masks[groups]                                            # (B, F, D)

    def forward(self, batch: Batch) -> Tensor:
        self._batch_groups = batch.get("group")
        try:
            return self.backbone(batch)
        finally:
            self._batch_groups = None

    def train(self, mode: bool = True) -> RetrainModule:
        super().train(mode)
        self.gates.eval()  # the router is frozen: BatchNorm keeps its searched statistics
        return self

    def group_share(self, groups: Tensor) -> Tensor:
        """(K,) share of samples per group."""
        return torch.bincount(groups, minlength=self.num_groups).float() / max(1, groups.numel())

    @property
    def embedding_params(self) -> int:
        """Each shared table counted once, at its stored width."""
        return self.backbone.embedding_params

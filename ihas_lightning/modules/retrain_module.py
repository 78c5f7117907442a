"""``RetrainModule``: one compact model per group, sharing each field's table, behind a router.

DESIGN.md section 2.3: group c uses the first ``d[c, f]`` columns of field f's table, stored once at the
width of its widest group; all groups are warm-started from the searched weights and fine-tuned jointly on
all training data, each sample through its own group's dimensions. The prototype measured this at the
uniform model's AUC with half of its embedding parameters; K separate models trained from scratch on their
own groups lost 0.005-0.025 AUC (that literal reading is ``groups_from="batch"`` with one group per module).

Routing: the searched gate network (frozen) gives each sample its deterministic mask, the nearest
centroid its group. It reads the module's own tables, so training and inference route alike.

``group_dense=True`` also gives every group its own copy of the dense layers (``group_dense.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import torch
from torch import Tensor
from torch.func import functional_call

from ..backbones import build_backbone, narrow_tables
from ..data.loader import Batch
from ..data.schema import Schema
from ..gates import GateConfig, InstanceGates
from .base import CTRModule, backbone_weights
from .config import BackboneConfig
from .group_dense import GroupDense, dense_parameter_names

__all__ = ["RetrainModule", "prefix_masks"]


def prefix_masks(group_dims: Tensor, dim: int) -> Tensor:
    """(K, F) dimensions -> (K, F, D) 0/1 masks that keep each field's first d[c, f] coordinates."""
    positions = torch.arange(dim, device=group_dims.device)                                   # (D,)
    return (positions < group_dims.unsqueeze(-1)).float()                                     # (K, F, D)


class RetrainModule(CTRModule):
    """Per-group dimensions over shared tables, routed by the searched gates.

    Args:
        schema, vocab_sizes, backbone, dim, dnn_hidden_units, lr, seed, options, dnn_dropout, l2_reg_embedding,
            config: as for ``BackboneModule``.
        group_dims: (K, F) dimensions per group and field (0 drops the field for that group).
        centroids: (K, F*D) k-means centroids of the deterministic masks (the router).
        gate: the search's gate configuration (the router's gate network is rebuilt from it).
        groups_from: ``"router"`` (default) routes every sample; ``"batch"`` reads ``batch["group"]``
            (precomputed assignments, for the separate-models variant).
        group_dense: give every group its own copy of the backbone's non-embedding parameters (DNN, cross
            layers, output layer, the linear part's dense weights) and buffers (BatchNorm statistics),
            started from the shared ones; the tables stay shared. The backbone's own dense parameters are
            then frozen and unused. K times the dense parameters; under DDP it needs
            ``find_unused_parameters`` (a batch may miss a group).
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], group_dims: Sequence[Sequence[int]],
                 centroids: Sequence[Sequence[float]], gate: GateConfig | dict | None = None,
                 backbone: str = "DeepFM", dim: int = 16, dnn_hidden_units: Sequence[int] = (256, 128),
                 lr: float = 1e-3, seed: int = 1024, options: dict | None = None,
                 groups_from: str = "router", group_dense: bool = False, dnn_dropout: float = 0.0,
                 l2_reg_embedding: float = 1e-5, *, config: BackboneConfig | None = None) -> None:
        super().__init__()
        schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        gate = gate if isinstance(gate, GateConfig) else GateConfig(**(gate or {}))
        config = config or BackboneConfig(backbone, dim, tuple(dnn_hidden_units), lr, dnn_dropout, l2_reg_embedding,
                                          seed, options or {})
        dim = config.dim
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
                                   "gate": asdict(gate), **config.hparams(), "groups_from": groups_from,
                                   "group_dense": bool(group_dense)})
        self.backbone = build_backbone(config.backbone, schema, vocab_sizes, dim, **config.build_kwargs())
        self.gates = InstanceGates(len(fields), dim, gate, field_costs=[float(vocab_sizes[f]) for f in fields])
        self.gates.requires_grad_(False)
        self.register_buffer("centroids", torch.as_tensor(centroids, dtype=torch.float32))     # (K, F*D)
        self.register_buffer("group_dims", dims)                                                 # (K, F)
        self.register_buffer("group_masks", prefix_masks(dims, dim))                             # (K, F, D)
        self.table_widths = {f: int(dims[:, i].max()) for i, f in enumerate(fields)}
        narrow_tables(self.backbone, self.table_widths)
        self.last_groups: Tensor | None = None
        self._batch_groups: Tensor | None = None
        self._fixed_groups: Tensor | None = None                  # one group's rows under group_dense
        self._used_groups: list[int] = []
        self.backbone.embedding_transform = self._group_embeddings
        self.group_params: GroupDense | None = None
        if group_dense:
            self.group_params = GroupDense(self.backbone, len(dims))
            shared = dict(self.backbone.named_parameters())
            for name in self.group_params.names:                  # the copies are the trained ones
                shared[name].requires_grad_(False)

    @property
    def num_groups(self) -> int:
        return int(self.group_dims.shape[0])

    def warm_start(self, search_state: dict[str, Tensor], tables_only: bool = False,
                   backbone_state: dict[str, Tensor] | None = None) -> None:
        """Start from a search checkpoint's weights: backbone (tables cut to their widths) and gates.

        ``tables_only`` (another backbone than the searched one) takes the embedding and first-order tables
        and the router only: the router reads this module's tables, and on fresh random tables the searched
        gate network sends nearly every sample to one group (measured: 92-100% on MovieLens-100K).
        ``backbone_state`` (a trained supernet's ``state_dict``, same backbone and dimension) supplies the
        backbone instead, tables and dense layers; the router's gate network still comes from the search.
        """
        own = self.state_dict()
        loaded = {}
        shared = ("gates.", "backbone.model.embedding_dict.", "backbone.model.linear_model.embedding_dict.")
        for key, value in search_state.items():
            if key not in own or key.startswith(("train_", "val_", "test_")):
                continue
            if tables_only and not key.startswith(shared):
                continue
            loaded[key] = _cut_table(key, value, own[key])
        missing = [k for k in own if k.startswith("gates.") and k not in loaded]
        if missing:
            raise ValueError(f"the search state has no router weights {missing[:3]}...")
        if backbone_state is not None:
            from_backbone = backbone_weights(backbone_state, own, "the warm-start state", adapt=_cut_table)
            loaded = {k: v for k, v in loaded.items() if not k.startswith("backbone.")} | from_backbone
        self.load_state_dict(loaded, strict=False)
        if self.group_params is not None and not any(k.startswith("group_params.") for k in loaded):
            self.group_params.copy_from(self.backbone)            # every group starts from the searched layers

    @torch.no_grad()
    def route(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) embeddings -> (B,) group ids: deterministic gates, then the nearest centroid.

        Always on the searched BatchNorm statistics, in any mode: Lightning keeps the modes a module comes
        with, so a fresh module trains with its gates in train mode (batch statistics: other routes).
        """
        was_training = self.gates.training
        self.gates.eval()
        try:
            masks = self.gates.deterministic_mask(embeddings).flatten(1)                        # (B, F*D)
        finally:
            self.gates.train(was_training)
        return torch.cdist(masks, self.centroids).argmin(dim=1)                                 # (B,)

    def _group_embeddings(self, embeddings: Tensor) -> Tensor:
        if self._fixed_groups is not None:
            groups = self._fixed_groups
        elif self.hparams.groups_from == "batch":
            if self._batch_groups is None:
                raise KeyError("groups_from='batch' needs batch['group']")
            groups = self._batch_groups
        else:
            groups = self.route(embeddings.detach())
        self.last_groups = groups
        return embeddings * self.group_masks[groups]                                            # (B, F, D)

    def forward(self, batch: Batch) -> Tensor:
        if self.group_params is not None:
            return self._forward_by_group(batch)
        self._batch_groups = batch.get("group")
        try:
            return self.backbone(batch)
        finally:
            self._batch_groups = None

    def _forward_by_group(self, batch: Batch) -> Tensor:
        """``group_dense``: route every sample first, then run each present group's rows with its own dense
        copies (one ``functional_call`` per group) and put the logits back in the batch's order."""
        batch = self.backbone.check_batch(batch)
        if self.hparams.groups_from == "batch":
            if batch.get("group") is None:
                raise KeyError("groups_from='batch' needs batch['group']")
            groups = batch["group"].long()
        else:
            with torch.no_grad():
                groups = self.route(self.backbone.field_embeddings(batch))                      # (B,)
        order = torch.argsort(groups, stable=True)                                              # (B,)
        counts = torch.bincount(groups, minlength=self.num_groups).tolist()
        used = [g for g, n in enumerate(counts) if n] or [0]          # an empty batch still runs one group
        parts = []
        for group, rows in zip(range(self.num_groups), order.split(counts)):
            if group not in used:
                continue
            self._fixed_groups = groups[rows]
            try:
                sub = {k: v[rows] for k, v in batch.items()}
                parts.append(functional_call(self.backbone, self.group_params.overrides(group), (sub,)))
            finally:
                self._fixed_groups = None
        logits = torch.cat(parts)                                                               # (B,), grouped
        self.last_groups, self._used_groups = groups, used
        return logits.new_empty(logits.shape).index_put((order,), logits)                      # batch order

    def regularization_loss(self) -> Tensor:
        """Under ``group_dense`` the dense terms fall on the copies of the groups the last batch used."""
        if self.group_params is None:
            return super().regularization_loss()
        return self.backbone.regularization_loss(self.group_params.substitute(self.backbone, self._used_groups))

    def group_share(self, groups: Tensor) -> Tensor:
        """(K,) share of samples per group."""
        return torch.bincount(groups, minlength=self.num_groups).float() / max(1, groups.numel())

    @property
    def embedding_params(self) -> int:
        """Each shared table counted once, at its stored width."""
        return self.backbone.embedding_params

    @property
    def dense_params(self) -> int:
        """Non-embedding parameters the model predicts with: K copies under ``group_dense``, else one set."""
        if self.group_params is not None:
            return self.group_params.num_params
        shared = dict(self.backbone.named_parameters())
        return int(sum(shared[name].numel() for name in dense_parameter_names(self.backbone)))


def _cut_table(key: str, value: Tensor, target: Tensor) -> Tensor:
    """A full-width embedding table cut to the first columns this module stores."""
    if key.startswith("backbone.model.embedding_dict.") and value.ndim == 2 and value.shape[1] > target.shape[1]:
        return value[:, :target.shape[1]]
    return value

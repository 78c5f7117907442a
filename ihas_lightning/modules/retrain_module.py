"""``RetrainModule``: one compact model per group, sharing each field's table, behind a router.

Group c uses the first ``d[c, f]`` columns of field f's table, stored once at the width of its widest
group; all groups are warm-started from the searched weights and fine-tuned jointly on all training data,
each sample through its own group's dimensions. (K separate models, each trained on its own group, are
``groups_from="batch"`` with one group per module.) See docs/design.md#41-retraining-shared-tables-and-the-router.

Routing (``router``): ``"gates"``, a :class:`~ihas_lightning.modules.router.Router` (the searched gate network,
frozen, and the centroids; the default for checkpoints written before the choice existed), or ``"linear"``, a
:class:`~ihas_lightning.modules.linear_router.LinearRouter` on the first ``router_columns`` columns of every
field, fitted by the pipeline before retraining (``pipeline/router_fit.py``). Either reads the module's own
tables, so training and inference route alike. The gate router's state keeps the keys RetrainModule
checkpoints have always had (``gates.*``, ``centroids``); the linear one's are ``router.weight``/``router.bias``.

``group_dense=True`` also gives every group its own copy of the dense layers (``group_dense.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call

from ..backbones import build_backbone, narrow_tables
from ..data.loader import Batch
from ..data.schema import Schema
from ..flops import ModelCounts, dense_params, expected_flops, flops_or_none, group_flops
from ..gates import GateConfig, InstanceGates
from .base import CTRModule, backbone_weights
from .config import BackboneConfig
from .group_dense import GroupDense
from .linear_router import LinearRouter
from .router import Router

__all__ = ["ROUTERS", "RetrainModule", "prefix_masks"]

ROUTERS = ("gates", "linear")
"""The router kinds a RetrainModule can serve with (``router=``)."""


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
        centroids: (K, F*D) k-means centroids of the deterministic masks (the gate router's).
        gate: the search's gate configuration (the gate router's network is rebuilt from it).
        groups_from: ``"router"`` (default) routes every sample; ``"batch"`` reads ``batch["group"]``
            (precomputed assignments, for the separate-models variant).
        group_dense: give every group its own copy of the backbone's non-embedding parameters (DNN, cross
            layers, output layer, the linear part's dense weights) and buffers (BatchNorm statistics),
            started from the shared ones; the tables stay shared. The backbone's own dense parameters are
            then frozen and unused. K times the dense parameters; under DDP it needs
            ``find_unused_parameters`` (a batch may miss a group).
        router: one of :data:`ROUTERS`; ``"linear"`` starts unfitted (every sample to group 0) until
            ``module.router.fit`` runs.
        router_columns: the leading columns of every field the linear router reads; default
            ``max(1, gate.min_dim)`` (columns every group keeps).
    """

    def __init__(self, schema: Schema | dict, vocab_sizes: dict[str, int], group_dims: Sequence[Sequence[int]],
                 centroids: Sequence[Sequence[float]], gate: GateConfig | dict | None = None,
                 backbone: str = "DeepFM", dim: int = 16, dnn_hidden_units: Sequence[int] = (256, 128),
                 lr: float = 1e-3, seed: int = 1024, options: dict | None = None,
                 groups_from: str = "router", group_dense: bool = False, dnn_dropout: float = 0.0,
                 l2_reg_embedding: float = 1e-5, router: str = "gates", router_columns: int | None = None, *,
                 config: BackboneConfig | None = None, embedding_updates: str = "rowwise") -> None:
        super().__init__()
        schema = schema if isinstance(schema, Schema) else Schema.from_dict(schema)
        gate = gate if isinstance(gate, GateConfig) else GateConfig(**(gate or {}))
        config = config or BackboneConfig(backbone, dim, tuple(dnn_hidden_units), lr, dnn_dropout, l2_reg_embedding,
                                          seed, options or {}, embedding_updates)
        dim = config.dim
        dims = torch.as_tensor(group_dims, dtype=torch.long)
        fields = schema.embedded_fields
        if dims.ndim != 2 or dims.shape[1] != len(fields):
            raise ValueError(f"group_dims must be (K, {len(fields)}), got {tuple(dims.shape)}")
        if dims.min() < 0 or dims.max() > dim:
            raise ValueError(f"group_dims must lie in [0, {dim}], got {dims.min().item()}..{dims.max().item()}")
        if groups_from not in ("router", "batch"):
            raise ValueError(f"groups_from must be 'router' or 'batch', got {groups_from!r}")
        if router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {router!r}")
        columns = router_columns if router_columns is not None else min(dim, max(1, gate.min_dim))
        if router == "linear" and not 1 <= columns <= dim:
            raise ValueError(f"router_columns must lie in [1, {dim}], got {columns}")
        self.save_hyperparameters({"schema": schema.to_dict(), "vocab_sizes": dict(vocab_sizes),
                                   "group_dims": dims.tolist(), "centroids": [list(map(float, c)) for c in centroids],
                                   "gate": asdict(gate), **config.hparams(), "groups_from": groups_from,
                                   "group_dense": bool(group_dense), "router": router,
                                   "router_columns": int(columns)})
        self.backbone = build_backbone(config.backbone, schema, vocab_sizes, dim, **config.build_kwargs())
        self.router: Router | LinearRouter
        if router == "linear":
            self.router = LinearRouter(len(fields), columns, len(dims))
        else:
            gates = InstanceGates(len(fields), dim, gate, field_costs=[float(vocab_sizes[f]) for f in fields])
            self.router = Router(gates, torch.as_tensor(centroids, dtype=torch.float32))      # (K, F*D) centroids
        self.register_state_dict_post_hook(_router_keys_as_saved)
        self.register_load_state_dict_pre_hook(_router_keys_as_built)
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

    @property
    def gates(self) -> InstanceGates:
        """The gate router's (frozen) searched gate network; ValueError under the linear router."""
        if not isinstance(self.router, Router):
            raise ValueError(f"a RetrainModule with the {self.hparams.router!r} router has no gate network")
        return self.router.gates

    @property
    def centroids(self) -> Tensor:
        """(K, F*D) the gate router's centroids; ValueError under the linear router."""
        if not isinstance(self.router, Router):
            raise ValueError(f"a RetrainModule with the {self.hparams.router!r} router has no centroids")
        return self.router.centroids

    def warm_start(self, search_state: dict[str, Tensor], tables_only: bool = False,
                   backbone_state: dict[str, Tensor] | None = None) -> None:
        """Start from a search checkpoint's weights: backbone (tables cut to their widths) and, for the gate
        router, the gates (the linear router is fitted afterwards, on these tables).

        ``tables_only`` (another backbone than the searched one) takes the embedding and first-order tables
        and the router only: the router reads this module's tables, and on fresh random tables the searched
        gate network sends nearly every sample to one group (see docs/design.md#7-transferability).
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
        missing = [k for k in own if k.startswith("gates.") and k not in loaded]  # none under the linear router
        if missing:
            raise ValueError(f"the search state has no router weights {missing[:3]}...")
        if backbone_state is not None:
            from_backbone = backbone_weights(backbone_state, own, "the warm-start state", adapt=_cut_table)
            loaded = {k: v for k, v in loaded.items() if not k.startswith("backbone.")} | from_backbone
        self.load_state_dict(loaded, strict=False)
        if self.group_params is not None and not any(k.startswith("group_params.") for k in loaded):
            self.group_params.copy_from(self.backbone)            # every group starts from the searched layers

    def route(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) embeddings -> (B,) group ids (the gate :class:`Router` uses the searched BatchNorm
        statistics in any mode); with one group every sample is group 0 and the router does not run (its
        counts are 0)."""
        if self.num_groups == 1:
            return torch.zeros(embeddings.shape[0], dtype=torch.long, device=embeddings.device)
        return self.router(embeddings)

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
    def router_params(self) -> int:
        """Everything routing reads at inference (:attr:`Router.num_params`); 0 with one group, where every
        sample goes to group 0 and the served model needs no router (the field-wise variant)."""
        return 0 if self.num_groups == 1 else self.router.num_params

    @property
    def footprint_params(self) -> int:
        """Embedding tables plus router: what the model stores beyond its dense layers."""
        return self.embedding_params + self.router_params

    @property
    def dense_params(self) -> int:
        """Non-embedding, non-router parameters the model predicts with: K copies under ``group_dense``."""
        if self.group_params is not None:
            return self.group_params.num_params
        return dense_params(self.backbone)

    @property
    def group_flops(self) -> list[float]:
        """FLOPs per sample of each group's compact model (its dimensions, the full DNN widths); raises
        ``NotImplementedError`` for a backbone :mod:`ihas_lightning.flops` cannot count."""
        widths = tuple(int(w) for w in self.hparams.dnn_hidden_units)
        return group_flops(self.backbone, self.group_dims.tolist(), widths)

    @property
    def router_flops_per_sample(self) -> float:
        """The router's FLOPs per sample; 0 with one group (nothing to route)."""
        return 0.0 if self.num_groups == 1 else self.router.flops_per_sample

    def expected_flops(self, group_share: Sequence[float] | None = None) -> float | None:
        """FLOPs per sample, router included: ``sum_c share_c * group_flops[c] + router_flops_per_sample``
        (shares default to 1/K each); None for a backbone that is not counted."""
        share = list(group_share) if group_share is not None else [1.0 / self.num_groups] * self.num_groups
        return flops_or_none(lambda: expected_flops(self.group_flops, share, self.router_flops_per_sample))

    @property
    def flops_per_sample(self) -> float | None:
        """:meth:`expected_flops` with every group equally likely (``IHASModel`` weighs by measured shares)."""
        return self.expected_flops()

    def counts(self, group_share: Sequence[float] | None = None) -> ModelCounts:
        """Parameters and FLOPs per sample in one record (:class:`~ihas_lightning.flops.ModelCounts`)."""
        return ModelCounts(embedding_params=self.embedding_params, router_params=self.router_params,
                           dense_params=self.dense_params, flops_per_sample=self.expected_flops(group_share),
                           router_flops_per_sample=self.router_flops_per_sample)


# Checkpoint keys: the router's state is saved under the names it had before the Router existed
# (``gates.*``, ``centroids``), so old and new RetrainModule checkpoints and IHASModel files are one format.
_AS_BUILT = (("router.gates.", "gates."), ("router.centroids", "centroids"))


def _router_keys_as_saved(module: RetrainModule, state: dict[str, Any], prefix: str, metadata: Any) -> None:
    """state_dict post-hook: ``router.gates.*`` -> ``gates.*``, ``router.centroids`` -> ``centroids``."""
    if f"{prefix}router.centroids" not in state:                  # the linear router: its keys as built
        return
    items = [(_renamed(key, prefix, built_first=True), value) for key, value in state.items()]
    # the centroids were this module's first buffer: first among its keys, as before
    at = next(i for i, (key, _) in enumerate(items) if key.startswith(prefix))
    centroids = next(i for i, (key, _) in enumerate(items) if key == f"{prefix}centroids")
    items.insert(at, items.pop(centroids))
    state.clear()
    state.update(items)
    saved_metadata = getattr(state, "_metadata", None)
    if saved_metadata is not None:
        saved_metadata.pop(f"{prefix}router", None)
        for key in [k for k in saved_metadata if k.startswith(f"{prefix}router.")]:  # router.gates.norm -> gates.norm
            saved_metadata[prefix + key[len(f"{prefix}router."):]] = saved_metadata.pop(key)


def _router_keys_as_built(module: RetrainModule, state: dict[str, Any], prefix: str, *args: Any) -> None:
    """load_state_dict pre-hook: the saved names back to the router's (``gates.*`` -> ``router.gates.*``)."""
    for key in [k for k in state if k.startswith((f"{prefix}gates.", f"{prefix}centroids"))]:
        state[_renamed(key, prefix, built_first=False)] = state.pop(key)


def _renamed(key: str, prefix: str, built_first: bool) -> str:
    for built, saved in _AS_BUILT:
        old, new = (built, saved) if built_first else (saved, built)
        if key.startswith(prefix + old):
            return prefix + new + key[len(prefix + old):]
    return key


def _cut_table(key: str, value: Tensor, target: Tensor) -> Tensor:
    """A full-width embedding table cut to the first columns this module stores."""
    if key.startswith("backbone.model.embedding_dict.") and value.ndim == 2 and value.shape[1] > target.shape[1]:
        return value[:, :target.shape[1]]
    return value

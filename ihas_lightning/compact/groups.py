"""``CompactGroups``: a retrained iHAS model served with each group computing at its own widths.

The :class:`~ihas_lightning.modules.RetrainModule` masks every row's embeddings to its group's dimensions and
runs the backbone at the full width D: exact, but a narrow group costs what a wide one does. Here every field
is looked up once at its stored width (``[e_1 | ... | e_F | dense | 0]`` per row), the router picks each row's
group, and each group's rows (selected with ``nonzero``/``index_select``, a static loop over K) go through
that group's compact layers (:mod:`ihas_lightning.compact.heads`: the first DNN layer cut to the group's
columns, FM/CIN on the group's fields and widths, DCN's padded coordinates folded into constants), the logits
scattered back in batch order. Groups with the same dimensions (and shared dense layers) share one head;
when all do, nothing routes. Predictions equal the zero-padded module's up to float rounding
(``tests/test_compact.py``); the work per sample is what :mod:`ihas_lightning.flops` counts for the groups (less
the router's share when nothing routes).

Inference only. The embedding tables and the router are the module's own (shared, not copied); the dense
weights are copies taken at construction: build again after further training (``IHASModel`` does so itself).
Traces for TorchScript and ONNX (``export_model`` exports this form). See
docs/design.md#41-retraining-shared-tables-and-the-router.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..backbones import CTRBackbone, mean_pooled
from ..flops import stored_widths
from ..modules.group_dense import GroupDense
from ..modules.linear_router import LinearRouter
from ..modules.retrain_module import RetrainModule
from .heads import WeightSource, build_head
from .layout import RowLayout

__all__ = ["CompactGroups", "compact_or_none"]


class CompactGroups(nn.Module):
    """Routed per-group compact models over shared tables: ``batch`` -> (B,) logits.

    Args:
        backbone: the trained backbone (tables stored at each field's widest group, dense layers at D).
        group_dims: (K, F) dimensions per group and field, each at most the field's stored width.
        router: the module that maps (B, F, c) zero-padded leading embedding columns to (B,) groups (a
            ``LinearRouter`` reads its ``columns``, a gate ``Router`` all D); None with one group.
        group_params: the groups' own dense layers (``group_dense``), or None for the backbone's.

    Raises ``NotImplementedError`` for a backbone without a compact form (see
    :data:`~ihas_lightning.compact.COMPACT_BACKBONES`).

    Example:
        >>> compact = CompactGroups.from_module(retrain_module)
        >>> logits = compact(batch)                  # == retrain_module.eval()(batch) up to rounding
    """

    def __init__(self, backbone: CTRBackbone, group_dims: Sequence[Sequence[int]], router: nn.Module | None = None,
                 group_params: GroupDense | None = None) -> None:
        super().__init__()
        dims = [[int(d) for d in row] for row in group_dims]
        if len(dims) > 1 and router is None:
            raise ValueError(f"{len(dims)} groups need a router")
        layout = RowLayout(stored_widths(backbone), len(backbone.schema.dense), backbone.dim)
        # Groups with the same dims and shared dense layers compute the same function: one head serves them all
        # (with a single head nothing needs routing).
        first_of: dict[tuple[int, ...], int] = {}
        head_of = [first_of.setdefault(tuple(row), len(first_of)) if group_params is None else g
                   for g, row in enumerate(dims)]
        copies: dict[int, Tensor] = {}                                      # one copy of a layer the groups share
        self.heads = nn.ModuleList(
            build_head(backbone, layout, dims[g], WeightSource(
                backbone, group_params.overrides(g) if group_params is not None else None, copies))
            for g in sorted({head_of.index(h) for h in head_of}))
        self.register_buffer("head_of_group", torch.tensor(head_of, dtype=torch.long))              # (K,)
        model = backbone.model
        self.tables = nn.ModuleList(model.embedding_dict[f] for f in backbone.fields)
        first_order = model.linear_model.embedding_dict
        complete = all(f in first_order for f in backbone.fields)
        self.first_order = nn.ModuleList(first_order[f] for f in backbone.fields) if complete else nn.ModuleList()
        self.num_sparse = len(backbone.schema.sparse)
        self.multi_slices = list(backbone._multi_slices.values())
        self.num_fields = len(backbone.fields)
        self.router = router if len(dims) > 1 else None
        columns = router.columns if isinstance(router, LinearRouter) else backbone.dim
        self.router_columns = columns
        self.register_buffer("router_cols", torch.tensor(layout.padded_prefix(columns), dtype=torch.long))
        object.__setattr__(self, "_check", backbone.check_batch)   # input checks, not part of the state

    @classmethod
    def from_module(cls, module: RetrainModule) -> CompactGroups:
        """The compact form of a trained ``RetrainModule`` that routes (``groups_from="router"``)."""
        if module.hparams.groups_from != "router":
            raise ValueError("a RetrainModule with groups_from='batch' has no router to serve with")
        compact = cls(module.backbone, module.group_dims.tolist(), module.router if module.num_groups > 1 else None,
                      module.group_params)
        return compact.to(module.group_dims.device)      # the index buffers it builds follow the module's device

    @property
    def num_groups(self) -> int:
        return int(self.head_of_group.numel())

    def train(self, mode: bool = True) -> CompactGroups:
        """Inference only: sets the flag and leaves the shared submodules (the module's tables and router)
        in the mode their module keeps them."""
        self.training = mode
        return self

    def rows(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, sum of stored widths + dense + 1): every field at its stored width, the dense fields, a 0."""
        sparse, dense, multi = batch["sparse"], batch["dense"], batch.get("multi")
        parts = [table(sparse[:, i]) for i, table in enumerate(self.tables[:self.num_sparse])]
        for table, (start, stop) in zip(self.tables[self.num_sparse:], self.multi_slices):
            parts.append(mean_pooled(table, multi[:, start:stop], table.weight.dtype))
        return torch.cat([*parts, dense, dense.new_zeros((dense.shape[0], 1))], dim=1)

    def route(self, rows: Tensor) -> Tensor:
        """(B,) group of every row (0 for all with one group)."""
        if self.router is None:
            return torch.zeros(rows.shape[0], dtype=torch.long, device=rows.device)
        prefix = rows.index_select(1, self.router_cols)            # (not unflatten: ONNX mis-exports it here)
        prefix = prefix.reshape(rows.shape[0], self.num_fields, self.router_columns)
        return self.router(prefix)

    def first_order_logits(self, batch: dict[str, Tensor]) -> Tensor:
        """(B,) the sparse fields' first-order (linear) terms, shared by every group."""
        sparse, multi = batch["sparse"], batch.get("multi")
        parts = [table(sparse[:, i]) for i, table in enumerate(self.first_order[:self.num_sparse])]
        for table, (start, stop) in zip(self.first_order[self.num_sparse:], self.multi_slices):
            parts.append(mean_pooled(table, multi[:, start:stop], table.weight.dtype))
        if not parts:
            return batch["dense"].new_zeros(batch["dense"].shape[0])
        return torch.cat(parts, dim=1).sum(1)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """Logits (B,): route, then each group's rows through its own compact layers."""
        batch = self._check(batch)
        rows = self.rows(batch)
        first = self.first_order_logits(batch) if len(self.first_order) else None
        if len(self.heads) == 1:
            logits = self.heads[0](rows)
        else:
            heads = self.head_of_group.index_select(0, self.route(rows))                          # (B,)
            logits = rows.new_zeros(rows.shape[0])
            for h, head in enumerate(self.heads):
                index = torch.nonzero(heads == h).flatten()                                       # (n_h,)
                logits = logits.scatter(0, index, head(rows.index_select(0, index)))
        return logits if first is None else logits + first


def compact_or_none(module: RetrainModule, *, warn: bool = True) -> CompactGroups | None:
    """:meth:`CompactGroups.from_module`, or None (with a warning naming the reason) for a backbone or an option
    with no compact form, whose groups are then served zero-padded (each at the full width)."""
    try:
        return CompactGroups.from_module(module)
    except NotImplementedError as error:
        if warn:
            warnings.warn(f"serving the zero-padded model (every group at the full width {module.backbone.dim}): "
                          f"{error}", stacklevel=2)
        return None

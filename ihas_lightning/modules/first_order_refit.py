"""Refit a sub-architecture's first-order weights before the supernet scores it.

A field whose embedding a candidate drops (dim 0) or narrows keeps its first-order weight, a scalar per id in
the backbone's ``linear_model``. Trained alone, that weight learns the id's whole effect (an item's
popularity, a user's bias); in the supernet it was trained beside the full embedding and holds only what the
embedding left over. Scored with inherited weights, such a candidate loses that effect: on MovieLens-100K
dropping ``item_id`` cost 0.025 validation AUC against stand-alone training, keeping it 0.006
(``benchmarks/results/supernet_rank.md``), so candidates sorted by which fields they drop rather than by
quality.

:class:`FirstOrderRefit` fits those weights again for the candidate, everything else frozen: a logistic
regression with the rest of the network as offset. The rest's logit on the refit rows is computed once (one
forward per batch), and the first-order logit is a sparse linear map of the ids (one per single-valued field,
the mean over present ids of a multi-valued one, the dense values), so the fit costs a few gathers and scatters
over those rows per table. It is a maximum a posteriori fit with a Gaussian prior around the inherited
weights, so an id seen in few rows stays near what the supernet learned: without it (200 Adam steps on 20k
rows, tried first) the refit overfit those rows and cost 0.02-0.05 validation AUC (docs/design.md, section 5).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..backbones import CTRBackbone
from ..data.loader import Batch

__all__ = ["FirstOrderRefit", "REFINED_FIRST_ORDER"]

REFINED_FIRST_ORDER: tuple[str, ...] = ("IFM", "DIFM")
"""Backbones that scale each field's first-order weight per sample by a factor computed from the embeddings:
their first-order logit is not a fixed linear map of the ids, so they are not refit."""


@dataclass(frozen=True)
class _Design:
    """One batch's first-order logit as a sparse map: ``logit[rows] += weight[cols] * values``."""

    rows: Tensor    # (nnz,) batch row of each term
    cols: Tensor    # (nnz,) index of the term's weight in the flat vector
    values: Tensor  # (nnz,)
    labels: Tensor  # (B,)


class FirstOrderRefit:
    """The first-order part of ``backbone`` as one flat weight vector, with its design on fixed ``batches``.

    Args:
        backbone: the supernet's backbone; its ``linear_model`` tables (and dense weight) are what is refit.
        batches: the training batches the refit fits.

    ``available`` is False for backbones without first-order tables and for :data:`REFINED_FIRST_ORDER`; then,
    and for backbones whose forward never reads them (PNN), :meth:`fit` returns None.
    """

    def __init__(self, backbone: CTRBackbone, batches: Sequence[Batch]) -> None:
        self.backbone = backbone
        model = backbone.model
        linear = getattr(model, "linear_model", None)
        tables = getattr(linear, "embedding_dict", {}) if linear is not None else {}
        schema = backbone.schema
        names = (*schema.sparse, *backbone._multi_slices)
        self.params: list[torch.nn.Parameter] = [tables[name].weight for name in names if name in tables]
        self.names: list[str | None] = [name for name in names if name in tables]   # None: the dense weights
        dense_weight = getattr(linear, "weight", None) if schema.dense else None
        if isinstance(dense_weight, torch.nn.Parameter):
            self.params.append(dense_weight)
            self.names.append(None)
        self.available = bool(self.params) and type(model).__name__ not in REFINED_FIRST_ORDER
        starts, offset = {}, 0      # id(parameter) -> its first index in the flat vector
        for p in self.params:
            starts[id(p)] = offset
            offset += p.shape[0]
        self.size = offset
        self.source = list(batches)                  # as given (SupernetModule compares them to reuse the design)
        self.batches = [backbone.check_batch(batch) for batch in batches]   # out-of-range ids as the forward maps them
        self.designs = [self._design(batch, tables, dense_weight, starts) for batch in self.batches] \
            if self.available else []

    def _design(self, batch: Batch, tables, dense_weight, starts: dict) -> _Design:
        schema, backbone = self.backbone.schema, self.backbone
        rows, cols, values = [], [], []
        n = batch["label"].shape[0]
        arange = torch.arange(n, device=batch["label"].device)
        dtype = batch["dense"].dtype if "dense" in batch else torch.float32
        for i, name in enumerate(schema.sparse):
            if name in tables:
                rows.append(arange)
                cols.append(batch["sparse"][:, i].long() + starts[id(tables[name].weight)])
                values.append(torch.ones(n, dtype=dtype, device=arange.device))
        for name, (start, stop) in backbone._multi_slices.items():     # mean over present ids (0 is padding)
            if name not in tables:
                continue
            ids = batch["multi"][:, start:stop].long()                                         # (B, L)
            present = ids != 0
            share = 1.0 / present.sum(1, keepdim=True).clamp_min(1).to(dtype)                  # (B, 1)
            row = arange[:, None].expand_as(ids)
            rows.append(row[present])
            cols.append(ids[present] + starts[id(tables[name].weight)])
            values.append(share.expand_as(ids)[present])
        if dense_weight is not None and id(dense_weight) in starts:
            k = len(schema.dense)
            rows.append(arange.repeat_interleave(k))
            cols.append(torch.arange(k, device=arange.device).repeat(n) + starts[id(dense_weight)])
            values.append(batch["dense"].reshape(-1).to(dtype))
        return _Design(torch.cat(rows), torch.cat(cols), torch.cat(values), batch["label"].to(dtype))

    @cached_property
    def _blocks(self) -> list[tuple[str | None, int, int, Tensor, Tensor, Tensor, Tensor]]:
        """Per table: its name, offset and size in the flat vector, its terms (rows, ids, values) and their
        curvature bound ``|x_j| sum_k |x_k|``; they depend on the batches alone, so a refit that scores many
        candidates on the same rows builds them once."""
        rows, start = [], 0
        for d in self.designs:
            rows.append(d.rows + start)
            start += d.labels.shape[0]
        rows = torch.cat(rows)
        cols, values = torch.cat([d.cols for d in self.designs]), torch.cat([d.values for d in self.designs])
        blocks, offset = [], 0
        for param, name in zip(self.params, self.names):
            size = param.numel()
            inside = (cols >= offset) & (cols < offset + size)
            r, c, v = rows[inside], cols[inside] - offset, values[inside]
            row_sum = torch.zeros(start, dtype=v.dtype, device=v.device).index_add_(0, r, v.abs())  # sum_k |x_k|
            blocks.append((name, offset, size, r, c, v, v.abs() * row_sum[r]))
            offset += size
        return blocks

    @cached_property
    def _labels(self) -> Tensor:
        return torch.cat([d.labels for d in self.designs])

    def read(self) -> Tensor:
        """The first-order weights, flat (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).clone()

    @torch.no_grad()
    def write(self, flat: Tensor) -> None:
        """Put flat weights (from :meth:`read` or :meth:`fit`) into the backbone's tables."""
        offset = 0
        for p in self.params:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def logit(self, flat: Tensor, index: int) -> Tensor:
        """(B,) first-order logit of batch ``index`` under weights ``flat``."""
        d = self.designs[index]
        return torch.zeros_like(d.labels).index_add_(0, d.rows, flat[d.cols] * d.values)

    @torch.no_grad()
    def fit(self, sweeps: int, prior: float, fields: Mapping[str, float] | None = None) -> Tensor | None:
        """Maximum a posteriori first-order weights for the backbone as it is now (masks applied).

        Minimises the refit rows' summed logloss plus ``prior / 2 * ||w - w_inherited||^2``, one table (block)
        at a time, ``sweeps`` times over the blocks. A block's step is ``-g / (h + prior)`` with ``h`` the
        logloss's curvature bound ``sum_rows p (1 - p) |x_j| sum_k |x_k|`` (exact for a single-valued field,
        whose ids never share a row), so every step lowers the objective. The prior keeps an id seen in few
        rows near its inherited weight. The fit starts from the backbone's own logits (one forward per batch) and
        moves them by the first-order weights' changes only, the rest of the network fixed. Returns the weights,
        flat (the tables are not touched: :meth:`write` them), or None where the backbone has no first-order
        weights or never reads them. With ``fields`` (name -> factor) only those fields' tables move, each with
        ``prior * factor``; the dense weights and the other tables keep their inherited values.
        """
        if not self.available or not self.batches:
            return None
        inherited = self.read()
        calls = []
        hook = self.backbone.model.linear_model.register_forward_hook(lambda *_: calls.append(1))
        try:
            z = torch.cat([self.backbone(batch) for batch in self.batches])                    # (N,) logits
        finally:
            hook.remove()
        if len(calls) < len(self.batches):
            return None
        labels, flat = self._labels, inherited.clone()
        blocks = [(*block[1:], prior * (1.0 if fields is None else float(fields[block[0]])))
                  for block in self._blocks if fields is None or block[0] in fields]
        for _ in range(sweeps):
            for offset, size, r, c, v, bound, block_prior in blocks:
                p = torch.sigmoid(z)
                w = flat[offset:offset + size]
                grad = torch.zeros_like(w).index_add_(0, c, v * (p - labels)[r])
                curve = torch.zeros_like(w).index_add_(0, c, bound * (p * (1 - p))[r])
                delta = -(grad + block_prior * (w - inherited[offset:offset + size])) / (curve + block_prior)
                w += delta
                z.index_add_(0, r, v * delta[c])
        return flat

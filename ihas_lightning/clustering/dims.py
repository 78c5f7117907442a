"""Per-group, per-field dimensions from members' active gates, and their fit to a parameter budget."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["NarrowingCost", "active_count_histogram", "assign_dims", "fill_dims_to_budget", "fit_dims_to_budget",
           "loss_decrease", "loss_increase", "narrowed", "open_gate_cost", "open_gate_gain", "stored_param_share",
           "widened"]

# ----------------------------------------------------------------------------------------------------------
# per-group dimensions


def active_count_histogram(masks: Tensor, labels: Tensor, k: int) -> Tensor:
    """``(K, F, D+1)`` int64: ``h[c, f, j]`` = members of group c whose field f has exactly j open gates.

    Args:
        masks: ``(B, F, D)`` 0/1 deterministic masks.
        labels: ``(B,)`` group of each sample.
        k: number of groups.
    """
    b, f, d = masks.shape
    active = (masks > 0.5).sum(-1)  # (B, F) open gates per field
    flat = (labels.to(active.device)[:, None] * f + torch.arange(f, device=active.device)) * (d + 1) + active
    hist = torch.bincount(flat.reshape(-1), minlength=k * f * (d + 1))
    return hist.view(k, f, d + 1)


def assign_dims(
    count_hist: Tensor,
    candidate_dims: Sequence[int],
    *,
    min_dim: int = 2,
    allow_drop_field: bool = False,
    quantile: float = 0.5,
) -> Tensor:
    """Per-group, per-field dimensions ``(K, F)`` int64 from the members' active-gate counts.

    The statistic is the ``quantile`` of the members' counts (inverted-CDF definition, Hyndman & Fan 1996
    type 1: the ``ceil(q * n)``-th smallest; for q = 0.5 the median, the lower one for even n). It is
    snapped *up* to the nearest candidate so that the typical member keeps every dimension it used, and
    raised to ``min_dim`` first unless ``allow_drop_field`` and the statistic is 0 (then the field is
    dropped for the group: dimension 0, or the smallest candidate if 0 is not one). Snapping to
    candidates keeps the number of distinct table widths small. See docs/design.md#32-clustering-per-group-dimensions.

    A group without members (possible when K exceeds the distinct samples) takes the statistic of all
    samples, so the router can still send a new sample there.

    Args:
        count_hist: ``(K, F, D+1)`` counts from :func:`active_count_histogram`, summed over the data.
        candidate_dims: allowed dimensions; values above ``D`` are ignored, ``D`` is always allowed.
        min_dim: floor of a kept field's dimension.
        allow_drop_field: permit dimension 0 when the statistic is 0.
        quantile: in [0, 1].
    """
    if count_hist.dim() != 3:
        raise ValueError(f"count_hist must have shape (K, F, D+1), got {tuple(count_hist.shape)}")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
    dim = count_hist.shape[-1] - 1
    if not 0 <= min_dim <= dim:
        raise ValueError(f"min_dim={min_dim} must be in [0, {dim}] (the embedding dimension)")
    usable = sorted({int(c) for c in candidate_dims if 0 <= int(c) <= dim} | {dim})
    cands = torch.tensor(usable, dtype=torch.long, device=count_hist.device)
    hist = count_hist.long()
    n = hist.sum(-1)  # (K, F)
    if int(n.sum()) == 0:
        raise ValueError("count_hist is empty: no sample was counted")
    empty = n.sum(1) == 0  # (K,) groups without members
    hist = torch.where(empty[:, None, None], hist.sum(0, keepdim=True), hist)
    n = hist.sum(-1)
    rank = torch.ceil(quantile * n.double()).long().clamp_min(1)  # (K, F) 1-based rank of the statistic
    stat = (hist.cumsum(-1) < rank[..., None]).sum(-1)  # (K, F) smallest j with cdf(j) >= rank
    target = stat.clamp_min(min_dim)
    if allow_drop_field:
        target = torch.where(stat == 0, torch.zeros_like(stat), target)
    idx = torch.searchsorted(cands, target.contiguous())  # first candidate >= target; D is always there
    return cands[idx]



def stored_param_share(dims: Tensor, field_costs: Sequence[float], dim: int) -> float:
    """Embedding parameters of shared tables (field f stored at ``max_c dims[c, f]``) over uniform ``dim``."""
    widths = dims.max(dim=0).values.double()                                                  # (F,)
    costs = torch.as_tensor(field_costs, dtype=torch.float64)
    return float((costs * widths).sum() / (costs.sum() * dim))


NarrowingCost = Callable[[Tensor, int, int], float]
"""``cost(dims, field, width)``: what narrowing ``field`` to ``width`` columns in every group of ``dims`` costs."""


def narrowed(dims: Tensor, field: int, width: int) -> Tensor:
    """A copy of (K, F) ``dims`` with ``field`` at most ``width`` wide in every group."""
    trial = dims.clone()
    trial[:, field] = trial[:, field].clamp_max(width)
    return trial


def widened(dims: Tensor, field: int, width: int) -> Tensor:
    """A copy of (K, F) ``dims`` whose widest groups on ``field`` get ``width`` columns (the others keep theirs:
    the stored table is as wide as its widest group, so only those groups can use the added columns)."""
    trial = dims.clone()
    column = trial[:, field]
    trial[:, field] = torch.where(column == column.max(), torch.full_like(column, width), column)
    return trial


def open_gate_cost(count_hist: Tensor) -> NarrowingCost:
    """One plus the members' open gates of the field above ``width``: a model-free cost for
    :func:`fit_dims_to_budget`.

    Gates are counted from the searched dimensions, not the current ones, so a second cut of a field pays
    for the first again and cuts spread over the fields. Every open gate counts alike, so this cannot tell a
    gate the search kept open because it helps from one it kept open because it was cheap (a field with a
    small vocabulary costs the regularizer almost nothing): :func:`loss_increase` measures instead. See
    docs/design.md#33-clustering-fitting-the-budget.
    """
    hist = count_hist.double()
    counts = torch.arange(hist.shape[-1], dtype=torch.float64, device=hist.device)          # (D+1,)

    def cost(dims: Tensor, field: int, width: int) -> float:
        return 1.0 + float((hist[:, field] * (counts - width).clamp_min(0)).sum())
    return cost


def open_gate_gain(count_hist: Tensor) -> NarrowingCost:
    """The members' open gates that widening ``field`` to ``width`` gives back: for :func:`fill_dims_to_budget`
    with ``--budget-fit gates``. Only members of the field's widest groups that opened more gates than those
    groups now keep count; widening past every member's count gains nothing."""
    hist = count_hist.double()
    counts = torch.arange(hist.shape[-1], dtype=torch.float64, device=hist.device)          # (D+1,)

    def gain(dims: Tensor, field: int, width: int) -> float:
        current = dims[:, field]
        widest = current == current.max()
        extra = (counts.clamp_max(width) - float(current.max())).clamp_min(0)                # (D+1,)
        return float((hist[widest.to(hist.device), field] * extra).sum())
    return gain


def _cached(loss: Callable[[Tensor], float]) -> Callable[[Tensor], float]:
    """``loss`` with each distinct (K, F) ``dims`` scored once."""
    scores: dict[tuple[int, ...], float] = {}

    def score(dims: Tensor) -> float:
        key = tuple(dims.flatten().tolist())
        if key not in scores:
            scores[key] = loss(dims)
        return scores[key]
    return score


def loss_increase(loss: Callable[[Tensor], float]) -> NarrowingCost:
    """``loss(narrowed dims) - loss(dims)`` for :func:`fit_dims_to_budget`, each distinct ``dims`` scored once.

    ``loss`` scores (K, F) dimensions, lower is better: the pipeline passes the searched model's validation
    logloss with every row cut to its group's first columns.
    """
    score = _cached(loss)

    def cost(dims: Tensor, field: int, width: int) -> float:
        return score(narrowed(dims, field, width)) - score(dims)
    return cost


def loss_decrease(loss: Callable[[Tensor], float]) -> NarrowingCost:
    """``loss(dims) - loss(widened dims)`` for :func:`fill_dims_to_budget`, each distinct ``dims`` scored once."""
    score = _cached(loss)

    def gain(dims: Tensor, field: int, width: int) -> float:
        return score(dims) - score(widened(dims, field, width))
    return gain


def fit_dims_to_budget(dims: Tensor, field_costs: Sequence[float], dim: int, budget: float,
                       candidate_dims: Sequence[int], min_dim: int = 2, *, cost: NarrowingCost) -> Tensor:
    """Narrow the widest groups' dimensions until the shared tables hold at most ``budget`` of the uniform
    model's embedding parameters.

    With shared tables a field costs ``V_f * max_c d[c, f]``: one small group asking for 16 dimensions keeps
    the whole table at 16, and the search's budget (an *expected* share per sample) says nothing about that
    maximum. Greedily (a knapsack heuristic), the field whose next narrower width has the lowest ``cost`` per
    parameter saved is narrowed, until the stored share meets the budget or every field is at ``min_dim``.
    See docs/design.md#33-clustering-fitting-the-budget.

    Args:
        dims: (K, F) dimensions from :func:`assign_dims`.
        field_costs: (F,) parameters of one dimension of each field (its vocabulary size).
        dim: D.
        budget: target stored share in (0, 1].
        candidate_dims: allowed widths.
        min_dim: no field narrower than this.
        cost: what a narrowing costs: :func:`loss_increase` (measured) or :func:`open_gate_cost` (a proxy);
            called once per field and step.
    """
    dims = dims.clone()
    allowed = sorted({int(c) for c in candidate_dims if min_dim <= c <= dim} | {max(min_dim, 0)})
    costs = torch.as_tensor(field_costs, dtype=torch.float64)
    while stored_param_share(dims, field_costs, dim) > budget + 1e-12:
        widths = dims.max(dim=0).values                                                        # (F,)
        best, best_ratio = None, None
        for field in range(dims.shape[1]):
            lower = [a for a in allowed if a < int(widths[field])]
            if not lower:
                continue
            new = lower[-1]
            saved = float(costs[field] * (int(widths[field]) - new))
            if saved <= 0:                                        # a field without cost saves nothing
                continue
            ratio = cost(dims, field, new) / saved
            if best_ratio is None or ratio < best_ratio:
                best, best_ratio = (field, new), ratio
        if best is None:
            break
        dims = narrowed(dims, *best)
    return dims


def fill_dims_to_budget(dims: Tensor, field_costs: Sequence[float], dim: int, budget: float,
                        candidate_dims: Sequence[int], *, gain: NarrowingCost) -> Tensor:
    """Widen fields while the shared tables stay within ``budget``: the other half of :func:`fit_dims_to_budget`.

    Candidate widths are coarse (16 -> 8 halves a field), so narrowing stops well below the budget, and a
    search whose medians already fit (one group) leaves part of it unused; a model compared with others at
    the same footprint should spend it, as the uniform model at that footprint does. Greedily, the field whose
    next wider candidate width has the highest ``gain`` per parameter added is widened in its widest groups
    (:func:`widened`), among the widenings that keep the stored share within the budget, until none fits; a
    widening that gains nothing (or loses) still comes, last. See docs/design.md#33-clustering-fitting-the-budget.

    Args:
        dims: (K, F) dimensions, usually :func:`fit_dims_to_budget`'s.
        field_costs: (F,) parameters of one dimension of each field (its vocabulary size).
        dim: D, the widest a field can get.
        budget: target stored share in (0, 1].
        candidate_dims: allowed widths.
        gain: what a widening improves: :func:`loss_decrease` (measured) or :func:`open_gate_gain` (a proxy).
    """
    dims = dims.clone()
    allowed = sorted({int(c) for c in candidate_dims if 0 < c <= dim} | {dim})
    costs = torch.as_tensor(field_costs, dtype=torch.float64)
    total = float(costs.sum()) * dim
    while True:
        widths = dims.max(dim=0).values                                                        # (F,)
        stored = float((costs * widths.double()).sum())
        best, best_ratio = None, 0.0
        for field in range(dims.shape[1]):
            wider = [a for a in allowed if a > int(widths[field])]
            added = float(costs[field] * (wider[0] - int(widths[field]))) if wider else 0.0
            if added <= 0 or (stored + added) / total > budget + 1e-12:
                continue
            ratio = gain(dims, field, wider[0]) / added
            if best is None or ratio > best_ratio:
                best, best_ratio = (field, wider[0]), ratio
        if best is None:
            return dims
        dims = widened(dims, *best)

"""Regularizers and gate statistics for instance-wise embedding-dimension gates (iHAS search stage).

All functions take the gates' open-probabilities ``prob`` (or a mask) of shape ``(B, F, D)``:
batch, fields, dimensions. ``prob[b, f, k]`` is the probability that dimension ``k`` of field ``f`` is
*non-zero* for sample ``b`` (``P(z > 0)``), the quantity whose sum is the expected L0 norm of the mask
(Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through L0 Regularization", eq. 12).

The first ``min_dim`` dimensions of every field are forced open (``p = 1``) by the gates; they still
cost parameters, so :func:`expected_param_share` counts them, but they are no decisions, so
:func:`polarization` and :func:`decided_share` skip them.

These are pure functions; the gates' adaptive sparsity multiplier that combines them,
:class:`ihas_lightning.gates.BudgetController`, lives with the gates.

See docs/design.md#22-search-budget-and-regularizers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

POLARIZATION_SETTLED = 0.01  # polarization stops pushing a gate once p is this close to 0 or 1

__all__ = [
    "POLARIZATION_SETTLED",
    "expected_param_share",
    "polarization",
    "decided_share",
    "mean_active_dims",
    "as_field_costs",
]


def as_field_costs(field_costs: Sequence[float] | Tensor | None, num_fields: int) -> Tensor:
    """Check per-field costs (e.g. vocabulary sizes) and return them as a float tensor of shape ``(F,)``.

    ``None`` means uniform costs (every field's dimension costs the same).
    """
    if field_costs is None:
        return torch.ones(num_fields)
    costs = torch.as_tensor(field_costs, dtype=torch.float32).detach().clone().reshape(-1)
    if costs.numel() != num_fields:
        raise ValueError(f"field_costs has {costs.numel()} entries, expected one per field ({num_fields})")
    if not torch.isfinite(costs).all() or (costs <= 0).any():
        raise ValueError(f"field_costs must be finite and > 0, got {costs.tolist()}")
    return costs


def _check_3d(x: Tensor, name: str) -> None:
    if x.dim() != 3:
        raise ValueError(f"{name} must have shape (B, F, D), got {tuple(x.shape)}")


def expected_param_share(prob: Tensor, field_costs: Tensor | Sequence[float] | None = None) -> Tensor:
    """Expected embedding parameters of the masked model as a share of the uniform (all-D) model.

    ``share = sum_f c_f * mean_b sum_k p[b, f, k] / (sum_f c_f * D)``, i.e. the expected L0 norm of the
    mask (Louizos et al. 2018, eq. 12) with each field's dimensions weighted by what one dimension of
    that field costs (its vocabulary size when ``weight_by_vocab``). In [0, 1]; differentiable in ``prob``.
    """
    _check_3d(prob, "prob")
    _, num_fields, dim = prob.shape
    costs = as_field_costs(field_costs, num_fields).to(device=prob.device, dtype=prob.dtype)  # (F,)
    per_field = prob.sum(dim=2).mean(dim=0)  # (F,) expected open dims per field
    return (costs * per_field).sum() / (costs.sum() * dim)


def polarization(prob: Tensor, min_dim: int = 0, settled: float = POLARIZATION_SETTLED) -> Tensor:
    """Mean ``p (1 - p)`` over the gates that are decisions (dimensions ``k >= min_dim``).

    Zero exactly when every gate's open-probability is 0 or 1; minimizing it makes the deterministic
    selection ``1[p >= 0.5]`` of the clustering stage agree with what was trained (iHAS's
    bi-polarization objective, Yu et al. 2023). Returns 0 when no gate is a decision.

    The value is exact, but a gate with ``p < settled`` or ``p > 1 - settled`` gets no gradient from
    this term (a dead zone): there its gradient is tiny yet always points outwards, and Adam would rescale
    it to full steps until no loss could move the gate again. See
    docs/design.md#22-search-budget-and-regularizers.
    """
    _check_3d(prob, "prob")
    if prob.shape[2] <= min_dim or prob.numel() == 0:
        return prob.new_zeros(())
    # live * p + (1 - live) * p.detach() equals p exactly (live is 0 or 1) and passes gradient only where
    # live: on the CPU several times cheaper than a torch.where and its backward (two more wheres).
    live = ((prob > settled) & (prob < 1.0 - settled)).to(prob.dtype)         # (B, F, D)
    free = prob * live + (prob * (1.0 - live)).detach()
    return (free - free * free)[..., min_dim:].sum() / prob[..., min_dim:].numel()


@torch.no_grad()
def decided_share(prob: Tensor, min_dim: int = 0, low: float = 0.1, high: float = 0.9) -> Tensor:
    """Share of the decision gates (``k >= min_dim``) with ``p < low`` or ``p > high``. A statistic, no grad.

    Returns 1 when no gate is a decision (nothing is undecided).
    """
    _check_3d(prob, "prob")
    free = prob[..., min_dim:]  # (B, F, D - min_dim)
    if free.numel() == 0:
        return prob.new_ones(())
    return ((free < low) | (free > high)).to(prob.dtype).mean()


@torch.no_grad()
def mean_active_dims(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean number of non-zero mask entries per sample: ``(per_field (F,), overall ())``.

    ``overall`` is the mean over fields of ``per_field`` (active dimensions of an average field).
    """
    _check_3d(mask, "mask")
    per_field = (mask > 0).to(torch.float32).sum(dim=2).mean(dim=0)  # (F,)
    return per_field, per_field.mean()

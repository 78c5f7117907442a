"""Instance-wise Bernoulli gates over embedding dimensions: the search stage of iHAS.

iHAS (Yu et al., CIKM 2023, "iHAS: Instance-wise Hierarchical Architecture Search for Deep Learning
Recommendation Models", arXiv 2309.07967) lets a small gate network decide, per sample, which of the
``D`` dimensions of each field's embedding the backbone sees: ``e' = e * z`` with ``z`` in [0, 1].
A closed gate (``z = 0``) removes the dimension exactly, both in the forward pass and in the gradient.

Two relaxations of the Bernoulli gate are offered (``GateConfig.relaxation``), hard concrete (default) and
Gaussian: :mod:`ihas_lightning.relaxations`.

Throughout, ``prob = P(z > 0)`` is *the* open-probability: regularizers, statistics and the deterministic
evaluation mask ``z = 1[prob >= 0.5]`` all use it. With prefix gates ``prob`` is the cumulative product.

See docs/design.md#21-search-gates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ihas_lightning.regularizers import (
    as_field_costs,
    decided_share,
    expected_param_share,
    mean_active_dims,
    polarization,
)
from ihas_lightning.relaxations import (
    gaussian_gate_prob,
    gaussian_gate_sample,
    hard_concrete_prob,
    hard_concrete_sample,
)

__all__ = [
    "LOGIT_BOUND",
    "BudgetController",
    "GateConfig",
    "GateOutput",
    "InstanceGates",
    "check_min_dim",
]

LOGIT_BOUND = 10.0  # |a| <= 10 keeps P(z > 0) strictly inside (0, 1) in float32 for tau <= 2


def check_min_dim(min_dim: int, allow_drop_field: bool) -> None:
    """``min_dim`` must be an int >= 0, and 0 (a field may lose every dimension) needs ``allow_drop_field``.

    Shared by :class:`GateConfig` and the clustering stage's ``ClusterConfig``, which both keep a floor.
    """
    if isinstance(min_dim, bool) or not isinstance(min_dim, int) or min_dim < 0:
        raise ValueError(f"min_dim must be an int >= 0, got {min_dim!r}")
    if min_dim == 0 and not allow_drop_field:
        raise ValueError(
            f"min_dim={min_dim} lets a field lose all of its dimensions; "
            "set allow_drop_field=True to allow that, or min_dim >= 1"
        )


@dataclass(frozen=True)
class GateConfig:
    """Configuration of the instance-wise gates and their regularizers.

    Args:
        relaxation: ``"hard_concrete"`` (Louizos et al. 2018) or ``"gaussian"`` (STG, Yamada et al. 2020).
        hidden: width of the gate network's hidden layer.
        temperature: initial hard-concrete temperature tau (2/3 as in Louizos et al.); a callback anneals it.
        prefix: nested gates; dimension k is open only if dimensions < k are, so a mask is a dimension size.
        min_dim: the first ``min_dim`` dimensions of every field are always open, so no field is dropped
            entirely (see docs/design.md#21-search-gates). 0 requires ``allow_drop_field=True``.
        allow_drop_field: permit a field to lose all of its dimensions (only matters with ``min_dim=0``).
        budget: target expected share of the uniform model's embedding parameters, in (0, 1]; the sparsity
            multiplier is then adapted by dual ascent. ``None``: a fixed multiplier ``sparsity_weight``.
        sparsity_weight: the fixed sparsity multiplier (``budget=None``) or the initial one.
        dual_lr: step size of the dual ascent on the multiplier.
        budget_penalty: weight rho of the damping term ``rho/2 (share - budget)^2`` of the augmented
            Lagrangian (see :class:`BudgetController`); 0 gives plain (two-sided) dual ascent.
        polarization_weight: weight of the bi-polarization term ``mean p (1 - p)``.
        weight_by_vocab: weight each field's dimensions by its vocabulary size in the sparsity term.
        init_open_logit: initial bias of the gate logits (positive: gates start mostly open).
        sigma: noise scale of the Gaussian stochastic gate.
    """

    relaxation: Literal["hard_concrete", "gaussian"] = "hard_concrete"
    hidden: int = 64
    temperature: float = 2 / 3
    prefix: bool = False
    min_dim: int = 2
    allow_drop_field: bool = False
    budget: float | None = 0.5
    sparsity_weight: float = 0.0
    dual_lr: float = 0.05
    budget_penalty: float = 5.0
    polarization_weight: float = 0.1
    weight_by_vocab: bool = True
    init_open_logit: float = 3.0
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if self.relaxation not in ("hard_concrete", "gaussian"):
            raise ValueError(f"relaxation must be 'hard_concrete' or 'gaussian', got {self.relaxation!r}")
        if isinstance(self.hidden, bool) or not isinstance(self.hidden, int) or self.hidden < 1:
            raise ValueError(f"hidden must be an int >= 1, got {self.hidden!r}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be finite and > 0, got {self.temperature!r}")
        check_min_dim(self.min_dim, self.allow_drop_field)
        if self.budget is not None and not (0.0 < self.budget <= 1.0):
            raise ValueError(f"budget must be in (0, 1] or None, got {self.budget!r}")
        for name in ("sparsity_weight", "dual_lr", "budget_penalty", "polarization_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if not math.isfinite(self.init_open_logit):
            raise ValueError(f"init_open_logit must be finite, got {self.init_open_logit!r}")
        if not (math.isfinite(self.sigma) and self.sigma > 0):
            raise ValueError(f"sigma must be finite and > 0, got {self.sigma!r}")


class BudgetController(nn.Module):
    """Sparsity multiplier ``lambda`` of the gates, adapted towards a target parameter share (budget).

    With ``config.budget`` set, the search solves ``min task`` subject to ``share = budget`` by the
    augmented-Lagrangian method of multipliers (Hestenes 1969; Powell 1969; the "damped" differential
    form of Platt & Barr 1987, "Constrained Differential Optimization"):

        sparsity = lambda * share + (budget_penalty / 2) * (share - budget) ** 2
        lambda  <- lambda + dual_lr * (share - budget)            (once per training step, :meth:`update`)

    so the gradient on the gates is ``(lambda + budget_penalty * (share - budget)) d share``: an integral
    plus a proportional term, as in PID Lagrangian control (Stooke, Achiam & Abbeel 2020).

    ``lambda`` may go negative, rewarding open gates while the share is below the budget: the budget is a
    target, not a ceiling. The damping term and the signed ``lambda`` keep closed hard-concrete gates from
    overshooting below it for good (see docs/design.md#22-search-budget-and-regularizers). ``lambda`` starts
    at ``config.sparsity_weight``. With ``budget=None`` the term is the plain, fixed L0 penalty
    ``sparsity_weight * share`` and :meth:`update` does nothing.

    ``lambda`` is a buffer, so it is saved in ``state_dict`` and a resumed run continues exactly.

    Args:
        config: the gate configuration (budget, budget_penalty, sparsity_weight, dual_lr,
            polarization_weight, min_dim).
        field_costs: ``(F,)`` cost of one dimension of each field (already uniform when costs are off).
        num_fields: number of fields F, used when ``field_costs`` is None.

    Example:
        >>> ctrl = BudgetController(GateConfig(budget=0.5), None, num_fields=3)
        >>> terms = ctrl.loss_terms(out.prob)          # add terms["total"] to the task loss
        >>> ctrl.update(terms["share"])                # once per training step
    """

    lam: Tensor

    def __init__(self, config: GateConfig, field_costs: Tensor | Sequence[float] | None,
                 num_fields: int) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("field_costs", as_field_costs(field_costs, num_fields))
        self.register_buffer("lam", torch.tensor(float(config.sparsity_weight)))

    @property
    def multiplier(self) -> float:
        """The current sparsity multiplier ``lambda`` as a float."""
        return float(self.lam.item())

    def loss_terms(self, prob: Tensor) -> dict[str, Tensor]:
        """Regularization terms for gate open-probabilities ``prob`` of shape ``(B, F, D)``.

        Returns ``sparsity`` (``sparsity_weight * share`` without a budget, the augmented Lagrangian above
        with one), ``polarization = polarization_weight * polarization(p)``, ``share`` (the expected
        parameter share, with grad) and ``total = sparsity + polarization``.
        """
        cfg = self.config
        share = expected_param_share(prob, self.field_costs)
        if cfg.budget is None:
            sparsity = cfg.sparsity_weight * share
        else:
            gap = share - cfg.budget
            sparsity = self.lam.to(prob.dtype) * share + 0.5 * cfg.budget_penalty * gap * gap
        polar = cfg.polarization_weight * polarization(prob, cfg.min_dim)
        return {"sparsity": sparsity, "polarization": polar, "share": share, "total": sparsity + polar}

    @torch.no_grad()
    def update(self, share: float | Tensor) -> float:
        """One dual-ascent step ``lambda += dual_lr * (share - budget)``; returns the new ``lambda``.

        No-op when ``budget`` is None. ``share`` is the (batch) expected share from :meth:`loss_terms`.
        """
        if self.config.budget is None:
            return self.multiplier
        share = float(share.detach().item() if isinstance(share, Tensor) else share)
        if not math.isfinite(share):
            raise ValueError(f"share must be finite, got {share}")
        self.lam.add_(self.config.dual_lr * (share - self.config.budget))
        return self.multiplier


class GateOutput(NamedTuple):
    """What the gates return; all of shape ``(B, F, D)``.

    ``mask``: z in [0, 1] (binary in eval mode); ``prob``: P(z > 0), used by every regularizer and
    statistic; ``logits``: the gate network's raw output ``a``.
    """

    mask: Tensor
    prob: Tensor
    logits: Tensor


class InstanceGates(nn.Module):
    """Per-sample gates over the ``D`` dimensions of ``F`` field embeddings (iHAS search stage).

    Gate network: ``BatchNorm1d(F*D, affine=False)`` on the *detached* flattened embeddings (the gates
    must not reshape the embeddings to suit themselves) -> ``Linear(F*D, hidden)`` -> ReLU ->
    ``Linear(hidden, F*D)`` whose bias starts at ``init_open_logit``. Randomness comes from torch's global
    RNG unless a ``generator`` is passed, so ``seed_everything`` makes runs reproducible.

    Args:
        num_fields: F.
        dim: D, the (maximum) embedding dimension shared by all fields.
        config: :class:`GateConfig`.
        field_costs: ``(F,)`` what one dimension of each field costs (its vocabulary size). Uniform when
            None or when ``config.weight_by_vocab`` is False.

    Example:
        >>> gates = InstanceGates(3, 8, GateConfig(budget=0.5), field_costs=[10, 10, 1000])
        >>> out = gates(e)                         # e: (B, 3, 8)
        >>> logits = backbone(e * out.mask)
        >>> loss = task_loss + gates.loss_terms(out.prob)["total"]
    """

    temperature: Tensor

    def __init__(self, num_fields: int, dim: int, config: GateConfig,
                 field_costs: Sequence[float] | Tensor | None = None) -> None:
        super().__init__()
        if num_fields < 1 or dim < 1:
            raise ValueError(f"num_fields and dim must be >= 1, got num_fields={num_fields}, dim={dim}")
        if config.min_dim > dim:
            raise ValueError(f"min_dim={config.min_dim} exceeds the embedding dimension dim={dim}")
        if config.budget is not None and config.budget < config.min_dim / dim:
            raise ValueError(
                f"budget={config.budget} is unreachable: min_dim={config.min_dim} of dim={dim} keeps a share "
                f"of at least {config.min_dim / dim:.3f} open"
            )
        self.num_fields, self.dim, self.config = num_fields, dim, config
        costs = as_field_costs(field_costs if config.weight_by_vocab else None, num_fields)
        width = num_fields * dim
        self.norm = nn.BatchNorm1d(width, affine=False)
        self.hidden = nn.Linear(width, config.hidden)
        self.out = nn.Linear(config.hidden, width)
        with torch.no_grad():
            self.out.weight.mul_(0.1)  # start near-uniform: the bias decides, instances differentiate later
            self.out.bias.fill_(config.init_open_logit)
        self.register_buffer("temperature", torch.tensor(float(config.temperature)))
        forced = torch.zeros(dim, dtype=torch.bool)
        forced[: config.min_dim] = True
        self.register_buffer("forced", forced, persistent=False)  # (D,)
        self.controller = BudgetController(config, costs, num_fields)

    # -- gate network -------------------------------------------------------------------------------
    def set_temperature(self, value: float) -> None:
        """Set the hard-concrete temperature in place (for annealing callbacks)."""
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"temperature must be finite and > 0, got {value!r}")
        self.temperature.fill_(float(value))

    def _check_input(self, e: Tensor) -> None:
        if e.dim() != 3 or e.shape[1] != self.num_fields or e.shape[2] != self.dim:
            raise ValueError(
                f"embeddings must have shape (B, {self.num_fields}, {self.dim}), got {tuple(e.shape)}"
            )

    def logits(self, e: Tensor, update_stats: bool = True) -> Tensor:
        """Gate logits ``a`` of shape ``(B, F, D)`` for embeddings ``e`` of shape ``(B, F, D)``."""
        self._check_input(e)
        batch = e.shape[0]
        x = e.detach().reshape(batch, -1)  # (B, F*D)
        use_batch_stats = self.training and batch > 1  # batch statistics need two samples
        if use_batch_stats and update_stats:
            x = self.norm(x)
        else:
            x = F.batch_norm(x, None if use_batch_stats else self.norm.running_mean,
                             None if use_batch_stats else self.norm.running_var,
                             training=use_batch_stats, eps=self.norm.eps)
        a = self.out(torch.relu(self.hidden(x)))  # (B, F*D)
        # Bounded in value, straight-through in gradient: p never rounds to exactly 0 or 1, so the
        # regularizers can always move a gate, and a logit past the bound still gets its gradient.
        a = a + (a.clamp(-LOGIT_BOUND, LOGIT_BOUND) - a).detach()
        return a.view(batch, self.num_fields, self.dim)  # (B, F, D)

    def _prob(self, a: Tensor) -> Tensor:
        if self.config.relaxation == "hard_concrete":
            return hard_concrete_prob(a, self.temperature.to(a.dtype))
        return gaussian_gate_prob(a, self.config.sigma)

    def _sample(self, a: Tensor, generator: torch.Generator | None) -> Tensor:
        if self.config.relaxation == "hard_concrete":
            return hard_concrete_sample(a, self.temperature.to(a.dtype), generator)
        return gaussian_gate_sample(a, self.config.sigma, generator)

    def _finish(self, z: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
        """Force the first ``min_dim`` dims open and apply prefix nesting; shapes ``(B, F, D)``."""
        if self.config.min_dim:
            # z * keep + forced: exactly 1 on forced dims (z, p are finite) and z elsewhere, gradient 0 / 1 as
            # a torch.where would give, in two broadcast passes that vectorize (where over a (D,) mask does not).
            forced = self.forced.to(device=z.device, dtype=z.dtype)  # (D,)
            keep = 1.0 - forced
            z, p = z * keep + forced, p * keep + forced
        if self.config.prefix:
            z, p = torch.cumprod(z, dim=-1), torch.cumprod(p, dim=-1)  # P(all j <= k open)
        return z, p

    def forward(self, e: Tensor, generator: torch.Generator | None = None) -> GateOutput:
        """Gate the embeddings ``e`` (B, F, D): a relaxed sample in training, ``1[p >= 0.5]`` in eval."""
        a = self.logits(e)  # (B, F, D)
        p = self._prob(a)  # (B, F, D) P(z > 0)
        if self.training:
            z, p = self._finish(self._sample(a, generator), p)
        else:
            _, p = self._finish(p, p)
            z = (p >= 0.5).to(p.dtype)  # prefix p is non-increasing, so is this mask
        return GateOutput(mask=z, prob=p, logits=a)

    @torch.no_grad()
    def deterministic_mask(self, e: Tensor) -> Tensor:
        """The binary mask ``1[p >= 0.5]`` (B, F, D) in any mode, without touching BatchNorm statistics."""
        a = self.logits(e, update_stats=False)
        _, p = self._finish(self._prob(a), self._prob(a))
        return (p >= 0.5).to(p.dtype)

    # -- regularizers (delegated to the controller, whose lambda is in this module's state_dict) ------
    def loss_terms(self, prob: Tensor) -> dict[str, Tensor]:
        """``sparsity``, ``polarization``, ``share``, ``total``: see :meth:`BudgetController.loss_terms`."""
        return self.controller.loss_terms(prob)

    def update_budget(self, share: float | Tensor) -> float:
        """One dual-ascent step on the sparsity multiplier; call once per training step."""
        return self.controller.update(share)

    @torch.no_grad()
    def stats(self, out: GateOutput) -> dict[str, Tensor]:
        """Scalar statistics for logging: share, polarization, decided share, active dims, lambda."""
        _, active = mean_active_dims(out.mask)
        return {
            "share": expected_param_share(out.prob, self.controller.field_costs),
            "polarization": polarization(out.prob, self.config.min_dim),
            "decided_share": decided_share(out.prob, self.config.min_dim),
            "active_dims": active,
            "lambda": self.controller.lam.clone(),
            "temperature": self.temperature.clone(),
        }

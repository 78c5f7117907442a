"""Continuous relaxations of a Bernoulli gate: a sample ``z`` in [0, 1] that is exactly 0 with a probability
the gate's logit ``a`` sets, and that probability ``P(z > 0)`` in closed form.

The two relaxations of a Bernoulli gate that ``GateConfig.relaxation`` offers:

* ``"hard_concrete"`` (default; Louizos, Welling & Kingma 2018, "Learning Sparse Neural Networks through
  L0 Regularization"): ``u ~ U(0, 1)``, ``s = sigmoid((log u - log(1 - u) + a) / tau)``, stretched to
  ``(gamma, zeta) = (-0.1, 1.1)`` and clamped to [0, 1]. ``P(z > 0) = sigmoid(a - tau log(-gamma/zeta))``
  (their eq. 12).
* ``"gaussian"`` (Yamada, Lindenbaum, Negahban & Kluger 2020, "Feature Selection using Stochastic Gates"):
  ``z = clamp(mu + 0.5 + sigma * eps, 0, 1)``, ``eps ~ N(0, 1)``, ``P(z > 0) = Phi((mu + 0.5) / sigma)``.
  We set ``mu = sigma * a / 1.702 - 0.5`` so that ``P(z > 0) = Phi(a / 1.702) ~= sigmoid(a)`` (the
  logistic approximation of the normal CDF): a logit means about the same under both relaxations, and
  ``init_open_logit = 3`` does not start the gates in Phi's flat tail where gradients vanish.
  The temperature is not used by this relaxation; ``sigma`` is its noise scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["HC_GAMMA", "HC_ZETA", "gaussian_gate_prob", "gaussian_gate_sample", "hard_concrete_prob",
           "hard_concrete_sample"]

HC_GAMMA = -0.1  # hard-concrete stretch interval (gamma, zeta), Louizos et al. 2018, sec. 4
HC_ZETA = 1.1
_PROBIT_SCALE = 1.702  # Phi(x) ~= sigmoid(1.702 x)
_U_EPS = 1e-6


def hard_concrete_prob(logits: Tensor, temperature: float | Tensor) -> Tensor:
    """``P(z > 0) = sigmoid(a - tau * log(-gamma / zeta))`` (Louizos et al. 2018, eq. 12)."""
    return torch.sigmoid(logits - temperature * math.log(-HC_GAMMA / HC_ZETA))


def hard_concrete_sample(logits: Tensor, temperature: float | Tensor,
                         generator: torch.Generator | None = None) -> Tensor:
    """A reparameterized hard-concrete sample in [0, 1] (Louizos et al. 2018, eqs. 9-10)."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    s = torch.sigmoid((torch.logit(u, eps=_U_EPS) + logits) / temperature)    # logit: log u - log(1 - u), clamped
    # hardtanh is clamp(0, 1) with a one-pass backward (clamp's is a comparison pair and a where)
    return F.hardtanh(s * (HC_ZETA - HC_GAMMA) + HC_GAMMA, 0.0, 1.0)


def _stg_mu(logits: Tensor, sigma: float) -> Tensor:
    return sigma * logits / _PROBIT_SCALE - 0.5


def gaussian_gate_prob(logits: Tensor, sigma: float) -> Tensor:
    """``P(z > 0) = Phi((mu + 0.5) / sigma) = Phi(a / 1.702)`` for the Gaussian stochastic gate."""
    return torch.special.ndtr((_stg_mu(logits, sigma) + 0.5) / sigma)


def gaussian_gate_sample(logits: Tensor, sigma: float, generator: torch.Generator | None = None) -> Tensor:
    """``z = clamp(mu + 0.5 + sigma * eps, 0, 1)``, ``eps ~ N(0, 1)`` (Yamada et al. 2020, eq. 4)."""
    eps = torch.randn(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return (_stg_mu(logits, sigma) + 0.5 + sigma * eps).clamp(0.0, 1.0)

"""The gate regularizers and statistics (``regularizers.py``) on hand-computed open-probabilities."""

from __future__ import annotations

import pytest
import torch

from ihas_lightning.regularizers import decided_share, expected_param_share, mean_active_dims, polarization


def test_regularizer_values() -> None:
    prob = torch.tensor([[[1.0, 1.0, 0.5, 0.0]], [[1.0, 1.0, 1.0, 0.5]]]).expand(2, 2, 4).clone()  # (2, 2, 4)
    prob[:, 1] = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # field 0: mean_b sum_k p = (2.5 + 3.5) / 2 = 3; field 1: 2
    assert expected_param_share(prob).item() == pytest.approx((3 + 2) / 8)
    assert expected_param_share(prob, [1.0, 3.0]).item() == pytest.approx((1 * 3 + 3 * 2) / (4 * 4))
    # decisions are dims 2, 3: p(1-p) = 0.25 at two of the 8 entries
    assert polarization(prob, min_dim=2).item() == pytest.approx(0.5 / 8)
    assert decided_share(prob, min_dim=2).item() == pytest.approx(6 / 8)
    per_field, overall = mean_active_dims(prob)
    assert per_field.tolist() == [3.5, 2.0] and overall.item() == 2.75  # counts z > 0, not p


def test_polarization_gradient_is_one_minus_two_p_on_live_decisions_only() -> None:
    """d mean(p(1-p)) / dp = (1 - 2p) / N on the decision gates that are not settled (p in (0.01, 0.99));
    zero on forced dims (k < min_dim) and settled gates (the dead zone)."""
    prob = torch.tensor([[[0.3, 0.7, 0.2, 0.005, 0.9, 0.995]],
                         [[0.5, 0.1, 0.6, 0.4, 0.999, 0.02]]], requires_grad=True)                 # (2, 1, 6)
    value = polarization(prob, min_dim=2)
    value.backward()
    free = prob.detach()[..., 2:]
    assert value.item() == pytest.approx(float((free * (1 - free)).mean()))
    expected = (1 - 2 * prob.detach()) / free.numel()
    expected[..., :2] = 0.0
    expected[(prob.detach() <= 0.01) | (prob.detach() >= 0.99)] = 0.0
    torch.testing.assert_close(prob.grad, expected)
    assert prob.grad[0, 0, 3] == 0 and prob.grad[1, 0, 4] == 0 and prob.grad[0, 0, 2] != 0

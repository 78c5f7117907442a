"""Instance-wise gates: exact removal, relaxations' closed forms, nesting, and what the regularizers do."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ihas_lightning.clustering import ClusterConfig
from ihas_lightning.gates import BudgetController, GateConfig, InstanceGates
from ihas_lightning.regularizers import (
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

RELAXATIONS = ["hard_concrete", "gaussian"]
B, F, D = 64, 3, 8


def _gates(relaxation: str = "hard_concrete", **kwargs) -> InstanceGates:
    torch.manual_seed(0)
    return InstanceGates(F, D, GateConfig(relaxation=relaxation, **kwargs))


# -- masks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_closed_gate_removes_dimension_exactly(relaxation: str) -> None:
    gates = _gates(relaxation)
    with torch.no_grad():
        gates.out.bias.view(F, D)[1, 4:] = -10.0  # field 1, dims 4..7 closed
    head = nn.Sequential(nn.Linear(F * D, 16), nn.ReLU(), nn.Linear(16, 1))
    torch.manual_seed(1)
    e = torch.randn(B, F, D)
    gates.eval()
    mask = gates(e).mask  # (B, F, D)
    assert torch.all(mask[:, 1, 4:] == 0) and torch.all(mask[:, 0, :] == 1)

    def downstream(emb: torch.Tensor) -> torch.Tensor:
        return head((emb * mask).reshape(len(emb), -1))

    bumped = e.clone()
    bumped[:, 1, 4:] += 100.0 * torch.randn(B, 4)
    assert torch.equal(downstream(e), downstream(bumped))
    e_req = e.clone().requires_grad_(True)
    downstream(e_req).sum().backward()
    assert torch.count_nonzero(e_req.grad[:, 1, 4:]) == 0
    assert torch.count_nonzero(e_req.grad[:, 0, :]) > 0

    # in training, wherever the relaxed sample is exactly 0, the gradient is exactly 0 too
    gates.train()
    torch.manual_seed(2)
    z = gates(e).mask
    zeros = z == 0
    assert zeros.sum() > 100
    e_req = e.clone().requires_grad_(True)
    head((e_req * z).reshape(B, -1)).sum().backward()
    assert torch.count_nonzero(e_req.grad[zeros]) == 0


@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_eval_is_deterministic_and_binary_train_is_stochastic(relaxation: str) -> None:
    gates = _gates(relaxation, init_open_logit=0.0)
    torch.manual_seed(1)
    e = torch.randn(B, F, D)
    gates.train()
    z1, z2 = gates(e).mask, gates(e).mask
    assert not torch.equal(z1, z2)
    assert z1.min() >= 0 and z1.max() <= 1
    assert ((z1 > 0) & (z1 < 1)).any()  # relaxed, not binary
    gates.eval()
    out1, out2 = gates(e), gates(e)
    assert torch.equal(out1.mask, out2.mask)
    assert set(out1.mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(out1.mask, (out1.prob >= 0.5).float())
    assert torch.equal(gates.deterministic_mask(e), out1.mask)


def test_global_seed_and_generator_make_samples_reproducible() -> None:
    gates = _gates()
    e = torch.randn(B, F, D)
    torch.manual_seed(5)
    a = gates(e).mask
    torch.manual_seed(5)
    b = gates(e).mask
    assert torch.equal(a, b)
    c = gates(e, generator=torch.Generator().manual_seed(3)).mask
    d = gates(e, generator=torch.Generator().manual_seed(3)).mask
    assert torch.equal(c, d)


def test_hard_concrete_prob_golden_value() -> None:
    # P(z > 0) = sigmoid(a - tau * log(-gamma / zeta)) = sigmoid(0 + 2/3 * log 11) at a = 0
    p = hard_concrete_prob(torch.tensor(0.0), 2 / 3)
    assert p.item() == pytest.approx(1 / (1 + math.exp(-(2 / 3) * math.log(11))), abs=1e-6)
    assert p.item() == pytest.approx(0.8318, abs=1e-4)
    assert gaussian_gate_prob(torch.tensor(0.0), 0.5).item() == pytest.approx(0.5, abs=1e-6)


@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_empirical_open_frequency_matches_closed_form(relaxation: str) -> None:
    torch.manual_seed(0)
    logits = torch.linspace(-4.0, 4.0, 17).repeat(20000, 1)  # (N, 17)
    if relaxation == "hard_concrete":
        z, p = hard_concrete_sample(logits, 2 / 3), hard_concrete_prob(logits[0], 2 / 3)
    else:
        z, p = gaussian_gate_sample(logits, 0.5), gaussian_gate_prob(logits[0], 0.5)
    freq = (z > 0).float().mean(dim=0)  # (17,)
    assert (freq - p).abs().max().item() < 0.02
    assert p.min() < 0.1 and p.max() > 0.9  # the range is actually covered

    # through the module: a batch of 4 rows repeated, so BatchNorm's batch statistics do not change
    gates = _gates(relaxation, init_open_logit=-1.0)
    with torch.no_grad():
        gates.out.weight.mul_(20.0)  # spread the per-sample logits
    e = torch.randn(4, F, D).repeat(5000, 1, 1)  # (20000, F, D)
    out = gates(e)
    freq = (out.mask > 0).float().view(5000, 4, F, D).mean(dim=0)  # (4, F, D)
    prob = out.prob[:4]
    assert prob.std() > 0.1
    assert (freq - prob).abs().max().item() < 0.02


@pytest.mark.parametrize("relaxation", RELAXATIONS)
@pytest.mark.parametrize("training", [True, False])
def test_min_dim_is_always_open(relaxation: str, training: bool) -> None:
    gates = _gates(relaxation, min_dim=3, init_open_logit=-8.0)
    gates.train(training)
    out = gates(torch.randn(B, F, D))
    assert torch.all(out.mask[..., :3] == 1) and torch.all(out.prob[..., :3] == 1)
    assert out.mask[..., 3:].mean() < 0.05  # the rest follow the (closed) logits


def test_min_dim_zero_needs_allow_drop_field() -> None:
    with pytest.raises(ValueError, match="min_dim=0"):
        GateConfig(min_dim=0)
    gates = _gates(min_dim=0, allow_drop_field=True, init_open_logit=-8.0)
    gates.eval()
    assert gates(torch.randn(B, F, D)).mask.sum() == 0  # a whole field can go
    with pytest.raises(ValueError, match="min_dim=9 exceeds"):
        InstanceGates(F, D, GateConfig(min_dim=9, budget=None))


@pytest.mark.parametrize("relaxation", RELAXATIONS)
@pytest.mark.parametrize("training", [True, False])
def test_prefix_masks_are_non_increasing(relaxation: str, training: bool) -> None:
    gates = _gates(relaxation, prefix=True, init_open_logit=0.0)
    with torch.no_grad():
        gates.out.weight.mul_(30.0)
    gates.train(training)
    out = gates(torch.randn(B, F, D))
    assert torch.all(out.mask[..., 1:] <= out.mask[..., :-1])
    assert torch.all(out.prob[..., 1:] <= out.prob[..., :-1])
    lengths = (out.mask > 0).sum(dim=-1)  # (B, F)
    assert lengths.min() >= 2 and lengths.max() <= D and len(lengths.unique()) >= 3


# -- regularizers -------------------------------------------------------------------------------------

def _train_gates_only(config: GateConfig, steps: int, costs=None, task: bool = False,
                      seed: int = 0) -> tuple[InstanceGates, list[float]]:
    """Optimize the gate network (embeddings fixed random) on regularizers (+ an optional toy task).

    The toy task regresses a random linear function of the *unmasked* embeddings from the masked ones,
    so every closed dimension costs accuracy and the budget is a real trade-off.
    """
    torch.manual_seed(seed)
    num_fields = 4
    gates = InstanceGates(num_fields, D, config, costs)
    e = torch.randn(256, num_fields, D)  # (B, F, D)
    target = e.reshape(256, -1) @ (torch.randn(num_fields * D, 1) / math.sqrt(num_fields * D))
    head = nn.Linear(num_fields * D, 1)
    opt = torch.optim.Adam([*gates.parameters(), *head.parameters()], lr=0.02)
    shares = []
    for _ in range(steps):
        out = gates(e)
        terms = gates.loss_terms(out.prob)
        loss = terms["total"]
        if task:
            loss = loss + ((head((e * out.mask).reshape(256, -1)) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        gates.update_budget(terms["share"])
        shares.append(terms["share"].item())
    gates.eval()
    gates.last_eval = gates(e)  # type: ignore[attr-defined]
    return gates, shares


@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_higher_sparsity_weight_closes_more_dims(relaxation: str) -> None:
    active = {}
    for weight in (0.01, 1.0):
        cfg = GateConfig(relaxation=relaxation, budget=None, sparsity_weight=weight)
        gates, _ = _train_gates_only(cfg, 100)
        per_field, overall = mean_active_dims(gates.last_eval.mask)
        active[weight] = overall.item()
    assert active[0.01] > 7.5  # polarization (0.1) outweighs a weak penalty: gates stay open
    assert active[1.0] < 2.5  # only the min_dim=2 forced dims survive a strong one
    assert active[0.01] - active[1.0] > 5.0


@pytest.mark.parametrize("relaxation", RELAXATIONS)
def test_polarization_decides_the_gates(relaxation: str) -> None:
    undecided_logit = -1.6 if relaxation == "hard_concrete" else 0.0  # p ~= 0.5 at the start
    result = {}
    for weight in (0.0, 1.0):
        cfg = GateConfig(relaxation=relaxation, budget=None, polarization_weight=weight,
                         init_open_logit=undecided_logit)
        gates, _ = _train_gates_only(cfg, 100)
        prob = gates.last_eval.prob
        result[weight] = (decided_share(prob, 2).item(), polarization(prob, 2).item())
    assert result[0.0][0] < 0.1 and result[0.0][1] > 0.2
    assert result[1.0][0] > 0.9 and result[1.0][1] < 0.05


@pytest.mark.parametrize("relaxation", RELAXATIONS)
@pytest.mark.parametrize("costs", [None, [10, 10, 10, 1000]])
def test_budget_controller_reaches_the_target_share(relaxation: str, costs) -> None:
    gates, shares = _train_gates_only(GateConfig(relaxation=relaxation, budget=0.5), 400, costs, task=True)
    tail = sum(shares[-50:]) / 50
    assert abs(tail - 0.5) < 0.08, shares[::50]
    assert shares[0] > 0.9  # it started far away
    eval_share = expected_param_share(gates.last_eval.prob, gates.controller.field_costs).item()
    assert abs(eval_share - 0.5) < 0.08


def test_weight_by_vocab_closes_the_big_table_first() -> None:
    costs = [10, 10, 10, 1000]
    big_minus_small = {}
    for weighted in (True, False):
        cfg = GateConfig(budget=0.5, weight_by_vocab=weighted)
        gates, _ = _train_gates_only(cfg, 400, costs, task=True)
        per_field, _ = mean_active_dims(gates.last_eval.mask)
        big_minus_small[weighted] = (per_field[3] - per_field[:3].mean()).item()
    # weighted: the 1000-row field gives up dimensions, the 10-row fields keep theirs
    assert big_minus_small[True] < -1.5
    assert big_minus_small[False] > big_minus_small[True] + 1.0


def test_budget_none_keeps_lambda_and_update_moves_it_otherwise() -> None:
    fixed = _gates(budget=None, sparsity_weight=0.3)
    assert fixed.update_budget(0.9) == pytest.approx(0.3)
    adaptive = _gates(budget=0.5, dual_lr=0.1)
    assert adaptive.update_budget(0.9) == pytest.approx(0.04)
    assert adaptive.update_budget(0.1) == pytest.approx(0.0)  # two-sided: may go below 0
    assert adaptive.update_budget(0.1) == pytest.approx(-0.04)


def test_state_dict_round_trip_keeps_temperature_and_lambda() -> None:
    gates = _gates(budget=0.5)
    gates.set_temperature(0.3)
    for share in (0.9, 0.8, 0.7):
        gates.update_budget(share)
    e = torch.randn(B, F, D)
    gates(e)  # moves BatchNorm statistics
    state = gates.state_dict()
    assert "temperature" in state and "controller.lam" in state
    fresh = InstanceGates(F, D, GateConfig(budget=0.5))
    fresh.load_state_dict(state)
    assert fresh.temperature.item() == pytest.approx(0.3)
    assert fresh.controller.multiplier == pytest.approx(0.05 * (0.4 + 0.3 + 0.2))
    for key, value in gates.state_dict().items():
        assert torch.equal(value, fresh.state_dict()[key]), key
    gates.eval(), fresh.eval()
    assert torch.equal(gates(e).prob, fresh(e).prob)
    torch.manual_seed(9)
    gates.train()
    a = gates(e).mask
    torch.manual_seed(9)
    fresh.train()
    assert torch.equal(a, fresh(e).mask)


def test_checkpoint_layout_of_the_gates_is_unchanged() -> None:
    # Search checkpoints hold these keys under "gates."; BudgetController moving to gates.py kept them.
    gates = _gates(budget=0.5)
    assert isinstance(gates.controller, BudgetController)
    assert list(gates.state_dict()) == [
        "temperature", "norm.running_mean", "norm.running_var", "norm.num_batches_tracked", "hidden.weight",
        "hidden.bias", "out.weight", "out.bias", "controller.field_costs", "controller.lam",
    ]
    state = {k: v.clone() for k, v in gates.state_dict().items()}
    state["controller.lam"] = torch.tensor(0.25)
    fresh = InstanceGates(F, D, GateConfig(budget=0.5))
    fresh.load_state_dict(state, strict=True)
    assert fresh.controller.multiplier == 0.25


@pytest.mark.parametrize("config", [GateConfig, ClusterConfig])
def test_min_dim_floor_is_checked_alike_by_gates_and_clustering(config) -> None:
    with pytest.raises(ValueError, match=r"^min_dim=0 lets a field lose all of its dimensions; set allow_drop_field"):
        config(min_dim=0)
    with pytest.raises(ValueError, match=r"^min_dim must be an int >= 0, got True$"):
        config(min_dim=True)
    assert config(min_dim=0, allow_drop_field=True).min_dim == 0


# -- boundaries ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"relaxation": "bernoulli"}, "'bernoulli'"),
    ({"hidden": 0}, "hidden must be an int >= 1, got 0"),
    ({"temperature": -1.0}, "got -1.0"),
    ({"budget": 1.5}, "budget must be in \\(0, 1\\] or None, got 1.5"),
    ({"dual_lr": -0.1}, "dual_lr must be finite and >= 0, got -0.1"),
    ({"sigma": 0.0}, "sigma must be finite and > 0, got 0.0"),
])
def test_config_errors_name_the_bad_value(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        GateConfig(**kwargs)


def test_module_boundary_errors() -> None:
    with pytest.raises(ValueError, match="budget=0.1 is unreachable"):
        InstanceGates(F, D, GateConfig(budget=0.1, min_dim=2))
    with pytest.raises(ValueError, match="field_costs has 2 entries"):
        InstanceGates(F, D, GateConfig(), field_costs=[1, 2])
    with pytest.raises(ValueError, match=r"must have shape \(B, 3, 8\), got \(4, 3, 7\)"):
        _gates()(torch.randn(4, F, 7))


def test_single_sample_batch_in_training() -> None:
    out = _gates()(torch.randn(1, F, D))
    assert out.mask.shape == (1, F, D) and torch.isfinite(out.prob).all()

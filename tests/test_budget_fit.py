"""Fitting per-group dimensions to the stored-parameter budget: narrowing (``fit_dims_to_budget``) by measured
damage or open gates, and filling the budget back (``fill_dims_to_budget``)."""

from __future__ import annotations

import pytest
import torch

from ihas_lightning.clustering import (
    fill_dims_to_budget,
    fit_dims_to_budget,
    loss_decrease,
    loss_increase,
    open_gate_cost,
    open_gate_gain,
    stored_param_share,
    widened,
)

D = 8


# -- stored-parameter budget (fit_dims_to_budget) ---------------------------------------------------------

def _hist(per_group: list[tuple[int, list[int]]], dim: int = D) -> torch.Tensor:
    """(K, F, D+1) histograms: group c has ``n`` members, each with ``counts[f]`` open gates on field f."""
    hist = torch.zeros(len(per_group), len(per_group[0][1]), dim + 1, dtype=torch.long)
    for c, (n, counts) in enumerate(per_group):
        for f, count in enumerate(counts):
            hist[c, f, count] = n
    return hist


# Field 0 is costly and used fully; field 1 is costly but its members keep only 2 dims; field 2 is cheap.
COSTS = [1000.0, 600.0, 50.0]
HIST = _hist([(100, [8, 2, 8]), (50, [8, 2, 4])])
DIMS = torch.tensor([[8, 8, 8], [8, 4, 8]])
CANDIDATES = (0, 2, 4, 8)
OPEN_GATES = open_gate_cost(HIST)


def test_fit_dims_to_budget_meets_the_budget_in_order_of_savings_per_lost_dimension() -> None:
    assert stored_param_share(DIMS, COSTS, D) == 1.0
    # Step 1: narrowing to 4 saves 4000 / 2400 / 200 parameters for 600 / 0 / 400 lost member-dimensions:
    # field 1 (2400 / 1) goes first, then again to 2 (1200 / 1), then field 0 (4000 / 601 > 200 / 401).
    order = [(0.9, [8, 4, 8]), (0.8, [8, 2, 8]), (0.7, [4, 2, 8]), (0.5, [4, 2, 8]), (0.4, [2, 2, 8])]
    for budget, widths in order:
        fitted = fit_dims_to_budget(DIMS, COSTS, D, budget, CANDIDATES, min_dim=2, cost=OPEN_GATES)
        assert fitted.max(0).values.tolist() == widths, budget
        assert stored_param_share(fitted, COSTS, D) <= budget
    fitted = fit_dims_to_budget(DIMS, COSTS, D, 0.5, CANDIDATES, min_dim=2, cost=OPEN_GATES)
    assert fitted.tolist() == [[4, 2, 8], [4, 2, 8]]             # narrower groups are clamped, never widened
    assert stored_param_share(fitted, COSTS, D) == pytest.approx((4 * 1000 + 2 * 600 + 8 * 50) / (1650 * 8))
    assert torch.equal(DIMS, torch.tensor([[8, 8, 8], [8, 4, 8]]))  # the input is not modified
    untouched = fit_dims_to_budget(DIMS, COSTS, D, 1.0, CANDIDATES, min_dim=2, cost=OPEN_GATES)
    assert torch.equal(untouched, DIMS)


def test_fit_dims_to_budget_follows_the_damage_not_the_open_gates() -> None:
    # The synthetic data's story in miniature: field 0 (1000 rows) carries the signal, fields 1 and 2 are
    # noise whose gates the search left open because they cost little. Measured damage (here: 1.0 per
    # dimension taken from field 0, nothing for the others) narrows the noise first; open gates would not.
    def informative_first(dims: torch.Tensor) -> float:
        return float((D - dims[:, 0]).clamp_min(0).sum())

    by_damage = fit_dims_to_budget(DIMS, COSTS, D, 0.72, CANDIDATES, min_dim=2, cost=loss_increase(informative_first))
    assert by_damage.max(0).values.tolist() == [8, 2, 4]          # the free cuts first (field 1, then field 2)
    by_gates = fit_dims_to_budget(DIMS, COSTS, D, 0.72, CANDIDATES, min_dim=2, cost=OPEN_GATES)
    assert by_gates.max(0).values.tolist() == [4, 2, 8]           # fewest open gates lost per parameter saved
    # once the noise is at min_dim, field 0 goes, to the width that meets the budget and no further
    squeezed = fit_dims_to_budget(DIMS, COSTS, D, 0.45, CANDIDATES, min_dim=2, cost=loss_increase(informative_first))
    assert squeezed.max(0).values.tolist() == [4, 2, 2]
    assert stored_param_share(squeezed, COSTS, D) <= 0.45


@pytest.mark.parametrize("min_dim", [2, 4])
def test_fit_dims_to_budget_never_goes_below_min_dim(min_dim: int) -> None:
    unreachable = 0.01
    fitted = fit_dims_to_budget(DIMS, COSTS, D, unreachable, CANDIDATES, min_dim=min_dim, cost=OPEN_GATES)
    assert fitted.tolist() == [[min_dim] * 3] * 2                 # best effort: everything at min_dim
    assert stored_param_share(fitted, COSTS, D) == pytest.approx(min_dim / D)
    dropped = fit_dims_to_budget(DIMS, COSTS, D, 0.0, CANDIDATES, min_dim=0, cost=OPEN_GATES)
    assert dropped.tolist() == [[0] * 3] * 2                      # min_dim 0 lets a field be dropped


# -- filling the budget back (fill_dims_to_budget) ---------------------------------------------------------

def test_widened_raises_only_the_widest_groups() -> None:
    dims = torch.tensor([[4, 2, 8], [2, 2, 4]])
    assert widened(dims, 0, 8).tolist() == [[8, 2, 8], [2, 2, 4]]
    assert widened(dims, 1, 4).tolist() == [[4, 4, 8], [2, 4, 4]]       # a tie: both groups are the widest
    assert torch.equal(dims, torch.tensor([[4, 2, 8], [2, 2, 4]]))    # the input is not modified


def test_fill_dims_to_budget_spends_the_budget_the_coarse_narrowing_left() -> None:
    # Only field 0 carries signal (1.0 per missing dimension of its widest group); fields 1 and 2 gain nothing.
    def informative_first(dims: torch.Tensor) -> float:
        return float(D - dims[:, 0].max())

    narrow = fit_dims_to_budget(DIMS, COSTS, D, 0.45, CANDIDATES, min_dim=2, cost=loss_increase(informative_first))
    assert narrow.max(0).values.tolist() == [4, 2, 2]
    fine = (0, 2, 4, 6, 8)
    assert stored_param_share(narrow, COSTS, D) == pytest.approx(5300 / 13200)            # 0.40
    # 4 -> 6 on field 0 adds 2000 parameters (share 0.40 -> 0.553): at 0.56 it fits and comes first
    filled = fill_dims_to_budget(narrow, COSTS, D, 0.56, fine, gain=loss_decrease(informative_first))
    assert filled.max(0).values.tolist() == [6, 2, 2]
    assert stored_param_share(filled, COSTS, D) <= 0.56
    # fields that gain nothing come last, and then the budget is spent (as the uniform model spends it)
    assert fill_dims_to_budget(narrow, COSTS, D, 0.71, fine, gain=loss_decrease(informative_first)).max(
        0).values.tolist() == [8, 2, 2]
    roomy = fill_dims_to_budget(narrow, COSTS, D, 1.0, fine, gain=loss_decrease(informative_first))
    assert roomy.max(0).values.tolist() == [8, 8, 8]
    # at 0.55 field 0 does not fit (0.553): the budget goes to what does, field 1 (1200) then field 2 (100 a step)
    tight = fill_dims_to_budget(narrow, COSTS, D, 0.55, fine, gain=loss_decrease(informative_first))
    assert tight.max(0).values.tolist() == [4, 4, 8]
    assert stored_param_share(tight, COSTS, D) <= 0.55


def test_fill_dims_to_budget_by_open_gates_gives_back_what_members_used() -> None:
    # group 0 (100 members) opened 8 gates on field 0, 2 on field 1, 8 on field 2; group 1 (50): 8, 2, 4
    narrow = torch.tensor([[2, 2, 2], [2, 2, 2]])
    filled = fill_dims_to_budget(narrow, COSTS, D, 0.8, CANDIDATES, gain=open_gate_gain(HIST))
    assert filled.tolist() == [[8, 2, 8], [8, 2, 8]]                  # field 1 (nobody used more than 2) last
    assert fill_dims_to_budget(narrow, COSTS, D, 1.0, CANDIDATES, gain=open_gate_gain(HIST)).tolist() == [[8] * 3] * 2
    gain = open_gate_gain(HIST)
    assert gain(narrow, 1, 4) == 0.0
    assert gain(narrow, 2, 4) == 100 * 2 + 50 * 2                     # both groups are the widest
    assert gain(torch.tensor([[2, 2, 4], [2, 2, 2]]), 2, 8) == 100 * 4   # only the widest group widens
    # a small budget: the most gates per parameter first (field 2: 300 gates / 100 params beats field 0)
    small = fill_dims_to_budget(narrow, COSTS, D, (2 * 1000 + 2 * 600 + 4 * 50) / (1650 * 8), CANDIDATES,
                                gain=open_gate_gain(HIST))
    assert small.max(0).values.tolist() == [2, 2, 4]

"""K groups need K training rows: more would leave groups empty, with dimensions founded on nothing."""

from __future__ import annotations

import pytest
import torch

from ihas_lightning.clustering import ClusterConfig, cluster

F, D = 3, 4
DIMS = dict(candidate_dims=(0, 2, 4), batch_size=64, iterations=10)


def _masks(rows: int, seed: int) -> torch.Tensor:
    return (torch.rand(rows, F, D, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


def test_a_fixed_k_above_the_training_rows_is_refused() -> None:
    masks = _masks(5, seed=0)
    with pytest.raises(ValueError, match=r"ClusterConfig.k=8 groups, but the training data has only 5 rows: "
                                         r"set k <= 5"):
        cluster(None, lambda: iter(masks.split(2)), F, D, ClusterConfig(k=8, **DIMS))
    result = cluster(None, lambda: iter(masks.split(2)), F, D, ClusterConfig(k=5, **DIMS))
    assert result.k == 5 and int(result.group_sizes.sum()) == 5


def test_rows_are_counted_without_a_pass_over_the_data() -> None:
    """The count stops at K rows: its pass reads one batch of the 4 here, and the result is unchanged."""
    masks, passes = _masks(400, seed=1), []

    def stream():
        passes.append(0)
        for batch in masks.split(100):
            passes[-1] += 1
            yield batch

    counted = cluster(None, stream, F, D, ClusterConfig(k=3, **DIMS))
    plain = cluster(None, lambda: iter(masks.split(100)), F, D, ClusterConfig(k=3, **DIMS))
    assert passes[0] == 1 and len(passes) > 1                 # the count, then k-means's own passes
    assert torch.equal(counted.centroids, plain.centroids) and torch.equal(counted.dims, plain.dims)


def test_automatic_k_skips_candidates_above_the_training_rows() -> None:
    train, val = _masks(5, seed=2), _masks(50, seed=3)
    config = ClusterConfig(k=None, k_candidates=(2, 8), **DIMS)
    result = cluster(None, lambda: iter([train]), F, D, config, val_feature_stream=lambda: iter([val]))
    assert result.k == 2 and result.selection["scores"]["8"] is None
    assert result.selection["scores"]["2"] is not None
    with pytest.raises(ValueError, match=r"every K in ClusterConfig.k_candidates=\(6, 8\) exceeds the 5 training"):
        cluster(None, lambda: iter([train]), F, D, ClusterConfig(k=None, k_candidates=(6, 8), **DIMS),
                val_feature_stream=lambda: iter([val]))

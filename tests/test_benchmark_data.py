"""The speed benchmarks' synthetic Criteo-shaped rows are encoded as ``FeatureEncoder`` would encode them."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from throughput import make_data  # noqa: E402


def test_dense_counts_are_logged_and_standardized_like_the_encoder_does() -> None:
    splits, encoder = make_data(5000)
    train = splits["train"].dense                                       # (5000, 13)
    assert train.shape == (5000, 13) and np.isfinite(train).all()
    # raw counts reach 3e8 (DCN's gradients then overflowed Adam on a GPU); encoded, they are standardized
    np.testing.assert_allclose(train.mean(axis=0), 0.0, atol=1e-3)
    assert (train.std(axis=0) > 0.5).all() and (train.std(axis=0) <= 1.0 + 1e-3).all()
    assert np.abs(train).max() < 20
    assert encoder.dense_std.shape == (13,) and (encoder.dense_std > 0).all()
    assert len(splits["val"].labels) == len(splits["test"].labels) == 4096
    assert splits["train"].sparse.min() >= 2                           # ids shifted: 0 missing, 1 OOV

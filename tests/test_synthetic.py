"""The synthetic generator: determinism, chunking invariance, distributions, and the planted ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import rankdata

from ihas_lightning.data.schema import RawColumns
from ihas_lightning.data.synthetic import BLOCK_ROWS, SyntheticCTR
from ihas_lightning.data.synthetic_config import SyntheticChunk, SyntheticConfig

N = 200_000


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with tie-averaged ranks (no sklearn needed)."""
    pos = labels > 0.5
    ranks = rankdata(scores)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _dispersion(groups: np.ndarray, labels: np.ndarray, min_count: int = 100) -> float:
    """Between-group CTR variance over the binomial noise level (chi-square / dof).

    About 1 when the label is independent of ``groups``; much larger when the CTR depends on them.
    Only groups with at least ``min_count`` rows count, so rare categories do not dominate.
    """
    _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
    clicks = np.bincount(inverse, weights=labels)
    keep = counts >= min_count
    n, c = counts[keep], clicks[keep]
    p = c.sum() / n.sum()
    chi2 = np.sum((c - n * p) ** 2 / (n * p * (1 - p)))
    return float(chi2 / (keep.sum() - 1))


@pytest.fixture(scope="module")
def gen() -> SyntheticCTR:
    return SyntheticCTR(SyntheticConfig(), seed=0)


@pytest.fixture(scope="module")
def data(gen: SyntheticCTR) -> SyntheticChunk:
    return gen.generate(N, seed=0)


def test_shapes_dtypes_and_schema(gen: SyntheticCTR, data: SyntheticChunk) -> None:
    assert gen.schema.label == "label"
    assert gen.schema.sparse == tuple(f"C{i}" for i in range(1, 9))
    assert gen.schema.dense == ("I1", "I2", "I3", "I4")
    assert gen.vocab_sizes == {"C1": 1000, "C2": 500, "C3": 200, "C4": 100, "C5": 50, "C6": 20,
                               "C7": 10, "C8": 5}
    assert len(data) == N
    assert data.labels.shape == (N,) and data.labels.dtype == np.float32
    assert data.sparse.shape == (N, 8) and data.sparse.dtype == np.int64
    assert data.dense.shape == (N, 4) and data.dense.dtype == np.float32
    assert data.segments.shape == (N,) and data.segments.dtype == np.int64
    assert set(np.unique(data.labels)) == {0.0, 1.0}
    vocab = np.array(list(gen.vocab_sizes.values()))
    assert (data.sparse >= 0).all() and (data.sparse < vocab).all()
    # Counts are non-negative integers; missing cells (about 10%) are 0 in chunks.
    assert (data.dense >= 0).all() and (data.dense == np.floor(data.dense)).all()
    assert 0.09 < data.dense_missing.mean() < 0.11
    assert (data.dense[data.dense_missing] == 0).all()


def test_same_seed_same_rows_different_seed_different(gen: SyntheticCTR, data: SyntheticChunk) -> None:
    again = SyntheticCTR(SyntheticConfig(), seed=0).generate(N, seed=0)
    for name in ("labels", "sparse", "dense", "segments", "logits"):
        np.testing.assert_array_equal(getattr(again, name), getattr(data, name))
    other_rows = gen.generate(N, seed=1)
    assert (other_rows.sparse != data.sparse).mean() > 0.3
    other_world = SyntheticCTR(SyntheticConfig(), seed=1).generate(N, seed=0)
    assert (other_world.sparse != data.sparse).mean() > 0.3
    assert not np.allclose(other_world.logits, data.logits)


def test_chunking_does_not_change_rows(gen: SyntheticCTR) -> None:
    n = 3 * BLOCK_ROWS + 1234
    small = list(gen.chunks(n, chunk_rows=1000, seed=3))
    assert [len(c) for c in small[:-1]] == [1000] * (len(small) - 1) and len(small[-1]) == n % 1000
    big = list(gen.chunks(n, chunk_rows=1_000_000, seed=3))
    assert len(big) == 1
    odd = list(gen.chunks(n, chunk_rows=BLOCK_ROWS + 7, seed=3))
    a, b, c = SyntheticChunk.concat(small), big[0], SyntheticChunk.concat(odd)
    for name in ("labels", "sparse", "dense", "segments", "logits", "dense_missing"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        np.testing.assert_array_equal(getattr(c, name), getattr(b, name))
    # A shorter request is a prefix of a longer one.
    np.testing.assert_array_equal(gen.generate(5000, seed=3).sparse, b.sparse[:5000])
    assert list(gen.chunks(0)) == []


def test_zipf_frequencies(gen: SyntheticCTR, data: SyntheticChunk) -> None:
    counts = np.bincount(data.sparse[:, 0], minlength=1000)
    top = counts.max() / N
    weights = np.arange(1, 1001, dtype=np.float64) ** -1.1
    expected_top = weights[0] / weights.sum()                  # about 0.18
    assert abs(top - expected_top) < 0.01
    assert top > 100 * (1 / 1000)                              # far above uniform (0.001)
    assert int(np.argmax(counts)) != 0                         # frequency is not id order
    # The 10 most frequent categories hold about half of the rows, as Zipf(1.1) over 1000 says.
    top10 = np.sort(counts)[::-1][:10].sum() / N
    assert abs(top10 - weights[:10].sum() / weights.sum()) < 0.01


def test_overall_and_per_segment_ctr(data: SyntheticChunk) -> None:
    assert abs(data.labels.mean() - 0.2) < 0.03
    for s in (0, 1):
        assert abs(data.labels[data.segments == s].mean() - 0.2) < 0.03
    assert abs((data.segments == 0).mean() - 0.5) < 0.01


def test_segment_is_identified_by_segment_field(gen: SyntheticCTR, data: SyntheticChunk) -> None:
    assert gen.segment_field == "C8"
    seg_col = data.sparse[:, list(gen.vocab_sizes).index("C8")]
    np.testing.assert_array_equal(gen.segment_of(seg_col), data.segments)
    planted = gen.planted
    assert planted["segments"][0]["kind"] == "rich" and planted["segments"][0]["fields"] == ["C1", "C2"]
    assert planted["segments"][1]["kind"] == "coarse" and planted["segments"][1]["fields"] == ["C3"]
    assert planted["noise_fields"] == ["C4", "C5", "C6", "C7"]


def test_planted_structure(data: SyntheticChunk) -> None:
    a, b, c, noise = data.sparse[:, 0], data.sparse[:, 1], data.sparse[:, 2], data.sparse[:, 3]
    y = data.labels
    rich, coarse = data.segments == 0, data.segments == 1
    pairs = a * 1000 + b

    # Segment 0: the CTR varies strongly with A, B and the (A, B) pair; C and noise fields say nothing.
    assert _dispersion(a[rich], y[rich]) > 10
    assert _dispersion(b[rich], y[rich]) > 10
    assert _dispersion(pairs[rich], y[rich], min_count=50) > 10
    assert _dispersion(c[rich], y[rich]) < 1.6
    assert _dispersion(noise[rich], y[rich]) < 1.6

    # Segment 1: only C matters; given C's bin, A and B are at the binomial noise level.
    assert _dispersion(c[coarse], y[coarse]) > 20
    assert _dispersion(a[coarse], y[coarse]) < 1.6
    assert _dispersion(b[coarse], y[coarse]) < 1.6
    assert _dispersion(pairs[coarse], y[coarse], min_count=50) < 1.6
    assert _dispersion(noise[coarse], y[coarse]) < 1.6
    bins = c % 2
    for k in (0, 1):   # within a bin of C, A carries no signal either
        rows = coarse & (bins == k)
        assert _dispersion(a[rows], y[rows]) < 1.6
    ctr_by_bin = [y[coarse & (bins == k)].mean() for k in (0, 1)]
    assert abs(ctr_by_bin[0] - ctr_by_bin[1]) > 0.15          # the coarse effect is strong


def test_true_logit_auc(data: SyntheticChunk) -> None:
    overall = _auc(data.labels, data.logits)
    rich = data.segments == 0
    assert 0.74 < overall < 0.84
    assert 0.75 < _auc(data.labels[rich], data.logits[rich]) < 0.86
    assert 0.70 < _auc(data.labels[~rich], data.logits[~rich]) < 0.80
    # Labels are Bernoulli(sigmoid(logit)): mean predicted probability matches the CTR.
    assert abs((1 / (1 + np.exp(-data.logits))).mean() - data.labels.mean()) < 0.005


def test_signal_strength_zero_gives_uninformative_labels() -> None:
    g = SyntheticCTR(SyntheticConfig(signal_strength=0.0, base_ctr=0.3), seed=2)
    d = g.generate(50_000)
    assert np.allclose(d.logits, d.logits[0])
    assert abs(d.labels.mean() - 0.3) < 0.01


def test_raw_matches_chunks(gen: SyntheticCTR, data: SyntheticChunk) -> None:
    raw, segments = gen.raw_with_segments(5000)
    assert isinstance(raw, RawColumns) and len(raw) == 5000
    assert set(raw.sparse) == set(gen.schema.sparse) and set(raw.dense) == set(gen.schema.dense)
    assert raw.schema == gen.schema
    np.testing.assert_array_equal(raw.labels, data.labels[:5000])
    np.testing.assert_array_equal(segments, data.segments[:5000])
    for f, name in enumerate(gen.schema.sparse):
        tokens = raw.sparse[name]
        assert tokens.dtype == object and all(isinstance(t, str) and len(t) == 8 for t in tokens[:50])
        # Tokens are a one-to-one relabeling of the ids.
        ids = data.sparse[:5000, f]
        assert len(set(zip(tokens, ids))) == len(set(tokens)) == len(set(ids))
    for j, name in enumerate(gen.schema.dense):
        col = raw.dense[name]
        assert col.dtype == np.float64
        np.testing.assert_array_equal(np.isnan(col), data.dense_missing[:5000, j])
        np.testing.assert_array_equal(np.nan_to_num(col), data.dense[:5000, j])
    assert len(gen.raw(10, seed=0)) == 10


def test_write_csv_round_trip(gen: SyntheticCTR, tmp_path: Path) -> None:
    path = gen.write_csv(tmp_path / "syn.csv", 2500, chunk_rows=1000, seed=0)
    lines = path.read_text().splitlines()
    assert len(lines) == 2501
    header = lines[0].split(",")
    assert header == ["label", "I1", "I2", "I3", "I4", *(f"C{i}" for i in range(1, 9))]
    raw = gen.raw(2500, seed=0)
    first = lines[1].split(",")
    assert first[0] == str(int(raw.labels[0]))
    assert first[5:] == [raw.sparse[f"C{i}"][0] for i in range(1, 9)]
    for j in range(4):
        value = raw.dense[f"I{j + 1}"][0]
        assert first[1 + j] == ("" if np.isnan(value) else str(int(value)))
    n_missing = sum(line.split(",")[1:5].count("") for line in lines[1:])
    assert n_missing == sum(np.isnan(raw.dense[f"I{j}"]).sum() for j in range(1, 5))


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="vocab_sizes has 3 entries but num_sparse is 8"):
        SyntheticConfig(vocab_sizes=(10, 20, 30))
    with pytest.raises(ValueError, match="four different fields"):
        SyntheticConfig(coarse_field=0)
    with pytest.raises(ValueError, match="base_ctr"):
        SyntheticConfig(base_ctr=1.5)
    with pytest.raises(ValueError, match="fewer than num_segments"):
        SyntheticConfig(num_segments=6)
    cfg = SyntheticConfig(num_sparse=5, num_dense=0)
    assert len(cfg.vocab_sizes) == 5 and cfg.vocab_sizes[0] == 1000 and cfg.vocab_sizes[-1] == 5
    d = SyntheticCTR(cfg, seed=0).generate(100)
    assert d.sparse.shape == (100, 5) and d.dense.shape == (100, 0)


def test_more_segments() -> None:
    g = SyntheticCTR(SyntheticConfig(num_segments=3, vocab_sizes=(1000, 500, 200, 100, 50, 20, 10, 6)))
    d = g.generate(30_000)
    assert set(np.unique(d.segments)) == {0, 1, 2}
    assert [g.planted["segments"][s]["kind"] for s in range(3)] == ["rich", "coarse", "rich"]
    np.testing.assert_array_equal(g.segment_of(d.sparse[:, 7]), d.segments)

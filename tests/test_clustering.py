"""Clustering stage: mini-batch k-means on planted mask mixtures, per-group dimensions, automatic K, I/O.
Fitting the dimensions to the stored-parameter budget: tests/test_budget_fit.py."""

from __future__ import annotations

import pytest
import torch

from ihas_lightning.clustering import (
    ClusterConfig,
    ClusterResult,
    MiniBatchKMeans,
    active_count_histogram,
    adjusted_rand_index,
    assign_dims,
    cluster,
    silhouette_score,
)

F, D = 6, 8
# Open gates per field (a prefix of the D dimensions) of each planted group. Group 2 keeps 6 of 8 on
# fields 3-5: its members' median is 6, which must snap up to 8. Group 1 keeps nothing outside field 2.
PLANTED = [
    [8, 8, 2, 2, 2, 2],
    [0, 0, 8, 0, 0, 0],
    [2, 2, 2, 6, 6, 6],
    [4, 4, 8, 4, 4, 4],
]
PROPS = [0.35, 0.25, 0.2, 0.2]
# Data seeds differ from the k-means seeds on purpose: a generator with the same seed draws the same
# uniforms, and the reservoir sample's keys would then be correlated with the planted labels.
DATA_SEED = 101
FAST = dict(batch_size=1024, iterations=40)


def _mixture(
    planted: list[list[int]] = PLANTED,
    props: list[float] = PROPS,
    n: int = 20_000,
    noise: float = 0.05,
    seed: int = DATA_SEED,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(n, F, D) binary masks with bit-flip noise, (n,) planted labels, (G, F, D) noiseless patterns."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.zeros(len(planted), F, D)
    for c, row in enumerate(planted):
        for f, m in enumerate(row):
            patterns[c, f, :m] = 1.0
    labels = torch.multinomial(torch.tensor(props), n, replacement=True, generator=g)
    masks = patterns[labels]  # (n, F, D)
    flip = torch.rand(masks.shape, generator=g) < noise
    return torch.where(flip, 1.0 - masks, masks), labels, patterns


@pytest.fixture(scope="module")
def mixture() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _mixture()


def _stream(x: torch.Tensor, batch: int = 1000):
    return lambda: iter(x.split(batch))


def _match(pred: torch.Tensor, planted: torch.Tensor, k: int) -> dict[int, int]:
    """Planted group -> predicted group by majority vote."""
    return {int(g): int(torch.bincount(pred[planted == g], minlength=k).argmax()) for g in planted.unique()}


def test_planted_mixture_recovered(mixture):
    masks, labels, patterns = mixture
    result = cluster(None, _stream(masks), F, D, ClusterConfig(k=4, **FAST))
    pred = result.predict(masks)
    assert pred.dtype == torch.int64
    assert adjusted_rand_index(pred, labels) > 0.99
    mapping = _match(pred, labels, 4)
    assert sorted(mapping.values()) == [0, 1, 2, 3]
    # a member's bit is 1 w.p. 0.95 where the pattern is 1 and 0.05 where it is 0
    expected = 0.05 + 0.9 * patterns.flatten(1)  # (G, F*D)
    for g, c in mapping.items():
        assert (result.centroids[c] - expected[g]).abs().max() < 0.05
        assert int(result.group_sizes[c]) == int((pred == c).sum())
    assert int(result.group_sizes.sum()) == masks.shape[0]
    assert result.selection == {"method": "fixed", "k": 4}


def test_dims_follow_members(mixture):
    masks, labels, _ = mixture
    kept = cluster(None, _stream(masks), F, D, ClusterConfig(k=4, candidate_dims=(0, 2, 4, 8), **FAST))
    mapping = _match(kept.predict(masks), labels, 4)
    expected_kept = {0: [8, 8, 2, 2, 2, 2], 1: [2, 2, 8, 2, 2, 2], 2: [2, 2, 2, 8, 8, 8], 3: [4, 4, 8, 4, 4, 4]}
    for g, c in mapping.items():
        assert kept.dims[c].tolist() == expected_kept[g], g  # 6 of 8 -> 8; 0 -> min_dim 2
    default = cluster(None, _stream(masks), F, D, ClusterConfig(k=4, **FAST))     # 6 is a default candidate
    assert sorted(default.dims.tolist()) == sorted([*[row for g, row in expected_kept.items() if g != 2],
                                                     [2, 2, 2, 6, 6, 6]])
    assert kept.dims.dtype == torch.int64 and int(kept.dims.min()) >= 2

    dropped = cluster(None, _stream(masks), F, D, ClusterConfig(k=4, min_dim=0, allow_drop_field=True, **FAST))
    mapping = _match(dropped.predict(masks), labels, 4)
    assert dropped.dims[mapping[1]].tolist() == [0, 0, 8, 0, 0, 0]
    assert int((dropped.dims == 0).sum()) == 5  # only the group that uses nothing outside field 2 drops


def test_assign_dims_statistic_and_snapping():
    # one group, three fields, D=8; members' open-gate counts per field:
    counts = [[6, 7, 7], [0, 0, 1], [3, 3, 5]]  # counts[f] = the three members' counts on field f
    hist = torch.zeros(1, 3, D + 1, dtype=torch.long)
    for member in zip(*counts):  # three members
        for f, c in enumerate(member):
            hist[0, f, c] += 1
    # medians: field 0 -> 7 (snap 8), field 1 -> 0 (min_dim 2), field 2 -> 3 (snap 4)
    assert assign_dims(hist, (0, 2, 4, 8, 16)).tolist() == [[8, 2, 4]]
    assert assign_dims(hist, (0, 2, 4, 8, 16), min_dim=0, allow_drop_field=True).tolist() == [[8, 0, 4]]
    assert assign_dims(hist, (0, 2, 4, 8, 16), min_dim=3).tolist() == [[8, 4, 4]]
    # quantile 1.0 = the largest member: field 1 -> 1 -> 2, field 2 -> 5 -> 8
    assert assign_dims(hist, (0, 2, 4, 8, 16), quantile=1.0).tolist() == [[8, 2, 8]]
    # D is always a candidate even if the list skips it; candidates above D are ignored
    assert assign_dims(hist, (0, 2, 16)).tolist() == [[8, 2, 8]]
    # a group without members takes the statistic of all samples
    two = torch.cat([hist, torch.zeros_like(hist)])
    assert assign_dims(two, (0, 2, 4, 8)).tolist() == [[8, 2, 4], [8, 2, 4]]


def test_active_count_histogram():
    masks = torch.zeros(3, 2, 4)
    masks[0, 0, :3] = 1
    masks[1, 1, :] = 1
    hist = active_count_histogram(masks, torch.tensor([0, 1, 1]), 2)  # (K, F, D+1)
    assert hist.shape == (2, 2, 5)
    assert hist[0, 0].tolist() == [0, 0, 0, 1, 0] and hist[0, 1].tolist() == [1, 0, 0, 0, 0]
    assert hist[1, 0].tolist() == [2, 0, 0, 0, 0] and hist[1, 1].tolist() == [1, 0, 0, 0, 1]


@pytest.mark.parametrize("n_groups", [3, 4])
def test_automatic_k_picks_planted(n_groups):
    masks, labels, _ = _mixture(PLANTED[:n_groups], [1.0] * n_groups, n=10_000)
    config = ClusterConfig(k=None, k_candidates=(2, 3, 4, 6), **FAST)
    val, _, _ = _mixture(PLANTED[:n_groups], [1.0] * n_groups, n=3000, seed=DATA_SEED + 1)
    result = cluster(None, _stream(masks), F, D, config, val_feature_stream=_stream(val))
    sel = result.selection
    assert result.k == n_groups and sel["k"] == n_groups and sel["method"] == "silhouette"
    assert sel["source"] == "validation" and sel["sample_size"] == 2000
    assert set(sel["scores"]) == {"2", "3", "4", "6"}
    assert max(sel["scores"].values()) == sel["scores"][str(n_groups)] > 0.45
    assert adjusted_rand_index(result.predict(masks), labels) > 0.99


def test_streaming_equals_single_batch_and_is_deterministic(mixture):
    x = mixture[0].flatten(1)  # (n, F*D)
    streamed = MiniBatchKMeans(4, **FAST).fit(_stream(x, 1000))
    whole = MiniBatchKMeans(4, **FAST).fit(x)  # one tensor = one batch, re-cut to the same mini-batches
    assert torch.allclose(streamed.centroids, whole.centroids, atol=1e-6)
    assert torch.equal(streamed.predict(x), whole.predict(x))
    # full-batch updates (batch_size = n) reach the same partition
    full = MiniBatchKMeans(4, batch_size=x.shape[0], iterations=10).fit(x)
    assert adjusted_rand_index(full.predict(x), streamed.predict(x)) > 0.99
    # same seed, same centers; the stream's batching does not matter
    again = MiniBatchKMeans(4, **FAST).fit(_stream(x, 777))
    assert torch.equal(again.centroids, streamed.centroids)
    inertia = streamed.inertia(_stream(x))
    assert inertia == pytest.approx(streamed.inertia(x), rel=1e-5)
    # noise alone: 48 bits each off by 0.05 (w.p. 0.95) or 0.95 (w.p. 0.05) -> 0.0475 per bit
    assert inertia / x.shape[0] == pytest.approx(48 * 0.0475, rel=0.05)


def test_one_shot_iterator_refused(mixture):
    x = mixture[0].flatten(1)
    with pytest.raises(TypeError, match="one-shot iterator"):
        MiniBatchKMeans(4).fit(iter(x.split(1000)))


def test_save_load_round_trip(mixture, tmp_path):
    masks, _, _ = mixture
    result = cluster(None, _stream(masks), F, D, ClusterConfig(k=None, k_candidates=(3, 4), **FAST))
    path = result.save(tmp_path / "clusters" / "result.json")
    loaded = ClusterResult.load(path)
    assert torch.equal(loaded.centroids, result.centroids)
    assert torch.equal(loaded.dims, result.dims) and torch.equal(loaded.group_sizes, result.group_sizes)
    assert loaded.k == result.k and loaded.feature == "mask" and loaded.selection == result.selection
    new, _, _ = _mixture(n=500, seed=DATA_SEED + 7)
    assert torch.equal(loaded.predict(new), result.predict(new))
    assert torch.equal(loaded.predict(new.flatten(1)), result.predict(new))


def test_kmeans_state_dict_resumes_identically(mixture):
    x = mixture[0].flatten(1)
    km = MiniBatchKMeans(4, **FAST).fit(_stream(x[:5000]))
    copy = MiniBatchKMeans.from_state_dict(km.state_dict())
    assert torch.equal(copy.predict(x), km.predict(x))
    km.partial_fit(x[5000:8000])
    copy.partial_fit(x[5000:8000])
    a, b = km.state_dict(), copy.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]) if isinstance(a[key], torch.Tensor) else a[key] == b[key], key


def test_masked_embedding_feature():
    """Continuous features: Gaussian blobs times each group's mask, as the gated backbone would see them."""
    g = torch.Generator().manual_seed(DATA_SEED)
    planted = PLANTED[:3]
    masks, labels, _ = _mixture(planted, [1.0, 1.0, 1.0], n=6000, noise=0.0)
    means = 3.0 * torch.randn(3, F, D, generator=g)
    emb = (means[labels] + torch.randn(6000, F, D, generator=g)) * masks  # (n, F, D)
    config = ClusterConfig(k=3, feature="masked_embedding", candidate_dims=(0, 2, 4, 8), **FAST)
    result = cluster(_stream(emb.flatten(1)), _stream(masks), F, D, config)
    assert result.feature == "masked_embedding"
    assert adjusted_rand_index(result.predict(emb), labels) > 0.99
    mapping = _match(result.predict(emb), labels, 3)
    assert result.dims[mapping[2]].tolist() == [2, 2, 2, 8, 8, 8]
    with pytest.raises(ValueError, match="feature_stream is required"):
        cluster(None, _stream(masks), F, D, config)


def test_more_clusters_than_distinct_points():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    x = points.repeat(100, 1)  # (300, 2), three distinct points
    km = MiniBatchKMeans(6, batch_size=64, iterations=20).fit(_stream(x, 50))
    labels = km.predict(x)
    assert labels.min() >= 0 and labels.max() < 6
    assert labels.unique().numel() == 3  # every distinct point gets one center, exactly at it
    assert torch.allclose(km.centroids[labels[:3]], points)
    assert km.inertia(x) == pytest.approx(0.0, abs=1e-6)

    masks = torch.zeros(300, 2, 4)
    masks[::3, 0, :] = 1  # a third of the samples use field 0 fully
    result = cluster(None, _stream(masks, 60), 2, 4, ClusterConfig(k=5, candidate_dims=(0, 2, 4), **FAST))
    assert int(result.group_sizes.sum()) == 300 and int((result.group_sizes > 0).sum()) == 2
    assert result.dims.shape == (5, 2) and int(result.dims.min()) >= 2


def test_silhouette_and_ari_reference_values():
    # hand-checkable values (equal to scikit-learn's adjusted_rand_score)
    assert adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(1.0)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 2]) == pytest.approx(4 / 7)
    assert adjusted_rand_index([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)
    # two tight pairs: a = 1 everywhere, b = 10.5 for the outer points and 9.5 for the inner ones
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    assert silhouette_score(x, torch.tensor([0, 0, 1, 1])) == pytest.approx((9.5 / 10.5 + 8.5 / 9.5) / 2)
    # singletons score 0; point 0: a = 1, b = 10; point 1: a = 1, b = 9
    s = silhouette_score(x, torch.tensor([0, 0, 1, 2]))
    assert s == pytest.approx((0.9 + 8 / 9 + 0 + 0) / 4)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(k=0), "k must be an int >= 1"),
        (dict(k_candidates=(4, 2)), "strictly increasing"),
        (dict(k_candidates=(1, 2)), "ints >= 2"),
        (dict(candidate_dims=(8, 4)), "strictly increasing"),
        (dict(min_dim=0), "allow_drop_field"),
        (dict(feature="emb"), "feature must be"),
        (dict(quantile=1.5), r"quantile must be in \[0, 1\]"),
        (dict(batch_size=0), "batch_size must be"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ClusterConfig(**kwargs)


def test_boundary_errors(mixture):
    masks = mixture[0][:2000]
    with pytest.raises(ValueError, match="no value <= the embedding dimension 8"):
        cluster(None, _stream(masks), F, D, ClusterConfig(candidate_dims=(16, 32)))
    with pytest.raises(ValueError, match=r"expected shape \(B, 5, 8\)"):
        cluster(_stream(masks[:, :5].flatten(1)), _stream(masks), 5, D, ClusterConfig(k=2, **FAST))
    with pytest.raises(ValueError, match="mask_stream batch 0: has 48 columns, expected 40"):
        cluster(None, _stream(masks), 5, D, ClusterConfig(k=2, **FAST))
    with pytest.raises(ValueError, match="must be 0/1"):
        cluster(_stream(masks.flatten(1)), _stream(masks * 0.5), F, D, ClusterConfig(k=2, **FAST))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_matches_cpu(mixture):
    masks, labels, _ = mixture
    config = ClusterConfig(k=4, **FAST)
    gpu = cluster(None, _stream(masks.cuda()), F, D, config)
    assert gpu.centroids.is_cuda and gpu.dims.is_cuda
    cpu = cluster(None, _stream(masks), F, D, config)
    assert adjusted_rand_index(gpu.predict(masks.cuda()).cpu(), labels) > 0.99
    assert adjusted_rand_index(gpu.predict(masks.cuda()).cpu(), cpu.predict(masks)) > 0.99
    assert torch.equal(gpu.dims.cpu(), cpu.dims)

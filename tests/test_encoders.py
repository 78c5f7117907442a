"""Encoders: id layout (0 missing, 1 OOV, 2.. known), fitting on the training split only, JSON round trip,
integer-id vocabularies, dense log1p + standardization and multi-valued padding, on small tables and on
the real Criteo and MovieLens-100K samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ihas_lightning.data.datamodule import split_rows
from ihas_lightning.data.encoders import MISSING_ID, OOV_ID, FeatureEncoder, FieldVocabulary
from ihas_lightning.data.readers import read_data
from ihas_lightning.data.schema import MultiValuedField, RawColumns, Schema

TOY_SCHEMA = Schema(label="y", sparse=("a", "b"), dense=("x", "z"), log_dense=("x",),
                    multivalued=(MultiValuedField("tags", "|", max_len=3),))


def toy(a: list[str], b: list[str], x: list[float], z: list[float], tags: list[list[str]]) -> RawColumns:
    n = len(a)
    return RawColumns(schema=TOY_SCHEMA, labels=np.arange(n, dtype=np.float32) % 2,
                      sparse={"a": np.array(a, dtype=object), "b": np.array(b, dtype=object)},
                      dense={"x": np.array(x, dtype=np.float64), "z": np.array(z, dtype=np.float64)},
                      multivalued={"tags": tags})


@pytest.fixture(scope="module")
def criteo(data_dir: Path) -> tuple[RawColumns, RawColumns]:
    """Real Criteo 10k: 8000 training rows and 2000 held-out rows (seeded split)."""
    raw = read_data(data_dir / "criteo" / "train-10k.txt", "criteo")
    train_rows, held_rows = split_rows(len(raw), (0.2,), seed=0)
    return raw.take(train_rows), raw.take(held_rows)


@pytest.fixture(scope="module")
def movielens(data_dir: Path) -> tuple[RawColumns, RawColumns]:
    raw = read_data(data_dir / "movielens" / "ml-100k", "movielens-100k")
    train_rows, held_rows = split_rows(len(raw), (0.2,), seed=0)
    return raw.take(train_rows), raw.take(held_rows)


def test_rare_unseen_and_missing_ids_on_a_small_table() -> None:
    # a: p x3, q x2, r x1, missing x1 ; b: all distinct
    train = toy(a=["p", "q", "p", "r", "", "q", "p"], b=["u", "v", "w", "u", "v", "u", "w"],
                x=[0.0] * 7, z=[1.0] * 7, tags=[["t"]] * 7)
    encoder = FeatureEncoder(TOY_SCHEMA, min_count=2).fit(train)
    vocab = encoder.vocabularies["a"]
    # Kept: p (3) and q (2), most frequent first; r (1) is rarer than min_count; "" is never a token.
    assert vocab.tokens == ["p", "q"]
    assert vocab.size == 4
    assert encoder.vocab_sizes == {"a": 4, "b": 5, "tags": 3}
    held = toy(a=["p", "q", "r", "", "never-seen"], b=["u", "w", "v", "", "zzz"], x=[0.0] * 5, z=[1.0] * 5,
               tags=[["t"]] * 5)
    encoded = encoder.transform(held)
    assert encoded.sparse.dtype == np.int64 and encoded.sparse.shape == (5, 2)
    assert encoded.sparse[:, 0].tolist() == [2, 3, OOV_ID, MISSING_ID, OOV_ID]
    assert encoded.sparse[:, 1].tolist() == [2, 4, 3, MISSING_ID, OOV_ID]  # u x3 -> 2, v x2 -> 3, w x2 -> 4
    # 3 OOV values (r, never-seen, zzz) out of 8 present (not missing) sparse values, plus 5 known tags.
    assert encoder.oov_rate(encoded) == pytest.approx(3 / 13)

    with pytest.raises(ValueError, match="min_count must be >= 1"):
        FeatureEncoder(TOY_SCHEMA, min_count=0)
    with pytest.raises(RuntimeError, match="before fit"):
        FeatureEncoder(TOY_SCHEMA).transform(held)


def test_criteo_fit_on_train_only_oov_rate_matches_a_direct_count(criteo) -> None:
    train, held = criteo
    assert (len(train), len(held)) == (8000, 2000)
    encoder = FeatureEncoder(train.schema, min_count=1).fit(train)
    encoded = encoder.transform(held)

    oov = present = 0
    for index, name in enumerate(train.schema.sparse):
        known = set(train.sparse[name].tolist()) - {""}
        # vocabulary = distinct non-missing training values (never the held-out ones) + missing + OOV
        assert encoder.vocab_sizes[name] == len(known) + 2
        values = held.sparse[name]
        is_missing = values == ""
        is_oov = np.array([v != "" and v not in known for v in values.tolist()])
        assert np.array_equal(encoded.sparse[:, index] == MISSING_ID, is_missing), name
        assert np.array_equal(encoded.sparse[:, index] == OOV_ID, is_oov), name
        oov += int(is_oov.sum())
        present += int((~is_missing).sum())
    rate = encoder.oov_rate(encoded)
    assert rate > 0
    assert rate == pytest.approx(oov / present, abs=1e-12)
    # Real held-out Criteo data: a sizeable but minor share of categories was never seen in 8000 rows.
    assert 0.12 < rate < 0.16  # 0.1415 with this split

    # min_count=3 pushes every category seen once or twice in training into the OOV bucket.
    strict = FeatureEncoder(train.schema, min_count=3).fit(train)
    tokens, counts = np.unique(train.sparse["C3"].astype(str), return_counts=True)
    rare = [t for t, c in zip(tokens.tolist(), counts.tolist()) if 0 < c < 3 and t != ""]
    frequent = [t for t, c in zip(tokens.tolist(), counts.tolist()) if c >= 3 and t != ""]
    assert rare and frequent
    assert strict.vocab_sizes["C3"] == len(frequent) + 2
    assert set(strict.vocabularies["C3"].encode(np.array(rare, dtype=object)).tolist()) == {OOV_ID}
    assert (strict.vocabularies["C3"].encode(np.array(frequent, dtype=object)) >= 2).all()
    assert strict.oov_rate(strict.transform(held)) > rate


def test_save_load_round_trip_gives_identical_encodings(criteo, tmp_path: Path) -> None:
    train, held = criteo
    encoder = FeatureEncoder(train.schema, min_count=2).fit(train)
    path = tmp_path / "encoder.json"
    encoder.save(path)
    data = json.loads(path.read_text())  # plain JSON
    assert data["min_count"] == 2 and set(data["vocabularies"]) == set(train.schema.sparse)
    loaded = FeatureEncoder.load(path)
    assert loaded.schema == encoder.schema
    assert loaded.vocab_sizes == encoder.vocab_sizes
    np.testing.assert_array_equal(loaded.dense_mean, encoder.dense_mean)
    np.testing.assert_array_equal(loaded.dense_std, encoder.dense_std)
    for raw in (train, held):
        a, b = encoder.transform(raw), loaded.transform(raw)
        for part in ("labels", "sparse", "dense", "multi"):
            np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
            assert getattr(a, part).dtype == getattr(b, part).dtype


def test_integer_id_vocabulary() -> None:
    schema = Schema(label="y", sparse=("u", "v"))
    encoder = FeatureEncoder.for_integer_ids(schema, {"u": 5, "v": 3})
    assert encoder.fitted
    assert encoder.vocab_sizes == {"u": 7, "v": 5}
    ids = encoder.vocabularies["u"].encode(np.array(["0", "4", "5", "", "x", "-1", "2"], dtype=object))
    assert ids.dtype == np.int64
    assert ids.tolist() == [2, 6, OOV_ID, MISSING_ID, OOV_ID, OOV_ID, 4]
    # An id beyond float32's exact range stays exact in a range vocabulary.
    big = FieldVocabulary(range_size=2**40)
    assert big.encode(np.array([str(2**24 + 1), str(2**40 - 1)])).tolist() == [2**24 + 3, 2**40 + 1]
    round_trip = FeatureEncoder.from_dict(json.loads(json.dumps(encoder.to_dict())))
    assert round_trip.vocab_sizes == encoder.vocab_sizes
    with pytest.raises(ValueError, match="either tokens or range_size"):
        FieldVocabulary(["a"], range_size=3)


def test_dense_log1p_standardisation_missing_to_zero() -> None:
    x = [0.0, np.e - 1, np.nan, -5.0, 3.0]     # log_dense: log1p(max(x, 0)) -> 0, 1, nan, 0, log 4
    z = [1.0, 2.0, 3.0, np.nan, 5.0]           # plain standardization
    train = toy(a=["p"] * 5, b=["u"] * 5, x=x, z=z, tags=[["t"]] * 5)
    encoder = FeatureEncoder(TOY_SCHEMA).fit(train)
    logx = np.array([0.0, 1.0, 0.0, np.log(4.0)])
    assert encoder.dense_mean[0] == pytest.approx(logx.mean())
    assert encoder.dense_std[0] == pytest.approx(logx.std())
    assert encoder.dense_mean[1] == pytest.approx(2.75)
    assert encoder.dense_std[1] == pytest.approx(np.std([1.0, 2.0, 3.0, 5.0]))
    dense = encoder.transform(train).dense
    assert dense.dtype == np.float32 and dense.shape == (5, 2)
    expected_x = (np.array([0.0, 1.0, np.nan, 0.0, np.log(4.0)]) - logx.mean()) / logx.std()
    np.testing.assert_allclose(dense[[0, 1, 3, 4], 0], expected_x[[0, 1, 3, 4]], rtol=1e-6)
    assert dense[2, 0] == 0.0 and dense[3, 1] == 0.0  # missing -> 0 (= the training mean)
    # A constant column gets std 1, not a division by zero.
    constant = toy(a=["p"] * 3, b=["u"] * 3, x=[2.0] * 3, z=[7.0] * 3, tags=[["t"]] * 3)
    fitted = FeatureEncoder(TOY_SCHEMA).fit(constant)
    assert fitted.dense_std.tolist() == [1.0, 1.0]
    assert np.all(fitted.transform(constant).dense == 0.0)


def test_criteo_dense_is_standardised_on_train(criteo) -> None:
    train, held = criteo
    encoder = FeatureEncoder(train.schema).fit(train)
    dense = encoder.transform(train).dense
    assert np.isfinite(dense).all()
    for index, name in enumerate(train.schema.dense):
        present = ~np.isnan(train.dense[name])
        values = dense[present, index].astype(np.float64)
        assert abs(values.mean()) < 1e-4, name
        assert values.std() == pytest.approx(1.0, abs=1e-4), name
        assert np.all(dense[~present, index] == 0.0), name
    # I1 is missing in 45% of Criteo's rows (4481 of 10000 in the file).
    assert 0.4 < np.isnan(train.dense["I1"]).mean() < 0.5


def test_movielens_genres_padding_is_zero_and_oov_is_one(movielens) -> None:
    train, held = movielens
    encoder = FeatureEncoder(train.schema, min_count=10).fit(train)
    genres = encoder.vocabularies["genres"]
    # 19 genres in MovieLens; 'unknown' is used 8 times in the training split, fewer than min_count=10.
    assert len(genres.tokens) == 18 and "unknown" not in genres.tokens
    assert encoder.vocab_sizes["genres"] == 20
    rows = [list(g) for g in held.multivalued["genres"][:4]] + [[], ["unknown", "Comedy"], ["Drama", "Sci-Fi-Noir"]]
    probe = RawColumns(schema=held.schema, labels=np.zeros(len(rows), dtype=np.float32),
                       sparse=held.take(np.arange(len(rows))).sparse,
                       multivalued={"genres": rows})
    multi = encoder.transform(probe).multi
    assert multi.shape == (7, 6) and multi.dtype == np.int64
    for row, ids in zip(rows, multi.tolist()):
        assert all(i >= 1 for i in ids[:len(row)])      # every present genre is known or OOV, never padding
        assert ids[len(row):] == [0] * (6 - len(row))   # padding
    assert multi[4].tolist() == [0] * 6
    assert multi[5, 0] == OOV_ID and multi[5, 1] == genres.encode(np.array(["Comedy"]))[0] >= 2
    assert multi[6, 1] == OOV_ID and multi[6, 0] >= 2

    encoded = encoder.transform(held)
    lengths = np.array([len(g) for g in held.multivalued["genres"]])
    assert np.array_equal((encoded.multi != 0).sum(1), lengths)
    # 'unknown' occurrences in the held-out split are exactly the OOV genres.
    unknown = sum(g.count("unknown") for g in held.multivalued["genres"])
    assert int((encoded.multi == OOV_ID).sum()) == unknown

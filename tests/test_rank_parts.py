"""The supernet-rank benchmark's stand-alone training: early stopping as a user would train a candidate."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _rank_parts import EarlyStopOnAUC, EpochScores, StandaloneCache, train_standalone  # noqa: E402

from ihas_lightning import CTRDataModule, SubArchitecture, SupernetModule  # noqa: E402


class _Scripted:
    """A module whose validation AUC per epoch is scripted."""

    def __init__(self, aucs: list[float]) -> None:
        self.aucs = iter(aucs)

    def evaluate_subnet(self, sub, dm):
        auc = next(self.aucs)
        return SimpleNamespace(auc=auc, logloss=1.0 - auc)


@pytest.mark.parametrize(("aucs", "patience", "stops_after", "best"), [
    ([0.60, 0.70, 0.69, 0.68, 0.90], 2, 4, 0.70),   # two epochs without a better AUC: stop, keep epoch 2's
    ([0.60, 0.70, 0.69, 0.71, 0.70], 2, None, 0.71),  # a new best resets the count
    ([0.60, 0.59], 1, 2, 0.60),
])
def test_early_stop_keeps_the_best_epoch_and_stops_after_patience(aucs, patience, stops_after, best):
    stopper, module = EarlyStopOnAUC(dm=None, sub=None, patience=patience), _Scripted(aucs)
    trainer = SimpleNamespace(should_stop=False)
    for epoch in range(1, len(aucs) + 1):
        stopper.on_train_epoch_end(trainer, module)
        if trainer.should_stop:
            break
    assert (epoch if trainer.should_stop else None) == stops_after
    assert stopper.best == (best, pytest.approx(1.0 - best))


def test_train_standalone_reports_the_best_epoch_of_a_real_training():
    dm = CTRDataModule("synthetic", rows=3000, batch_size=512, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    fields = tuple(f for f in dm.vocab_sizes)
    sub = SubArchitecture(fields, (4,) * len(fields), (16, 8))
    model = {"backbone": "DeepFM", "dim": 8, "dnn_hidden_units": (32, 16), "lr": 1e-2}
    stopped = train_standalone(dm, sub, seed=0, epochs=4, model=model, patience=1)
    assert 1 <= stopped["epochs_trained"] <= 4 and len(stopped["epoch_aucs"]) == stopped["epochs_trained"]
    assert stopped["auc"] == max(stopped["epoch_aucs"])
    assert stopped["epoch_aucs"][stopped["best_epoch"] - 1] == stopped["auc"]
    fixed = train_standalone(dm, sub, seed=0, epochs=2, model=model)
    assert fixed["epochs_trained"] == 2 and fixed["epoch_aucs"] == [fixed["auc"]]   # scored once, at the end
    # early stopping runs the same training: its first two epochs are the fixed schedule's
    assert stopped["epochs_trained"] < 2 or stopped["epoch_aucs"][1] == pytest.approx(fixed["auc"], abs=1e-6)


def test_epoch_scores_keep_every_epoch_and_each_candidate_s_best():
    """Each candidate's score is its own best epoch, which may differ between candidates."""
    scripted = iter([0.60, 0.80, 0.70, 0.75, 0.65, 0.72])        # epoch 1: a, b; epoch 2: a, b; epoch 3: a, b

    class Module:
        def evaluate_subnet(self, sub, dm):
            return SimpleNamespace(auc=next(scripted))

    scores = EpochScores(dm=None, subs=["a", "b"])
    for _ in range(3):
        scores.on_train_epoch_end(None, Module())
    assert scores.aucs == [[0.60, 0.80], [0.70, 0.75], [0.65, 0.72]]
    assert scores.best == [0.70, 0.80]


def test_cached_standalone_results_of_the_chunked_shuffle_are_not_reused():
    """Data of more than 64 batches was shuffled in chunks before 19831c6: its key changes, one chunk's does not."""
    model = {"backbone": "DeepFM", "dim": 8}
    keys = {}
    for batch_size in (32, 64):                         # 2,400 training rows: 75 and 38 batches
        dm = CTRDataModule("synthetic", rows=3000, batch_size=batch_size, seed=0)
        dm.prepare_data()
        dm.setup("fit")
        settings = StandaloneCache.settings(dm, 4, model, patience=2)
        assert settings["rows_train"] == 2400 and settings["patience"] == 2
        keys[batch_size] = settings.get("shuffle")
    assert keys == {32: "whole", 64: None}


def test_a_newly_cached_standalone_result_records_its_commit_and_is_read_back(tmp_path, monkeypatch):
    """Cache entries are trained at many commits: each new one records its own; a hit trains nothing."""
    dm = CTRDataModule("synthetic", rows=600, batch_size=128, seed=0)
    dm.prepare_data()
    dm.setup("fit")
    model = {"backbone": "DeepFM", "dim": 4, "dnn_hidden_units": (8,), "lr": 1e-2}
    sub = SupernetModule(dm.schema, dm.vocab_sizes, seed=0, **model).supernet_masks.full
    cache = StandaloneCache(tmp_path / "cache.json")
    first = cache.standalone("synthetic", dm, sub, seed=0, epochs=1, model=model)
    assert len(first["provenance"]["commit"]) == 40 and 0.0 < first["auc"] < 1.0
    monkeypatch.setattr("_rank_parts.train_standalone", lambda *a, **k: pytest.fail("a cache hit retrained"))
    assert cache.standalone("synthetic", dm, sub, seed=0, epochs=1, model=model) == first


def test_a_synthetic_data_set_with_its_own_shape_reads_its_rows_and_fields(monkeypatch):
    import _rank_parts
    spec = {**_rank_parts.DATASETS["synthetic-large"], "rows": 2_000}      # the shape, at a test's size
    monkeypatch.setitem(_rank_parts.DATASETS, "synthetic-large", spec)
    dm = _rank_parts.datamodule("synthetic-large", rows=100_000, batch_size=256)   # the spec's rows win
    assert len(dm.split("train")) == 1_600
    assert [dm.vocab_sizes[f] - 2 for f in dm.schema.embedded_fields] == list(spec["synthetic"]["vocab_sizes"])


def test_shards_split_the_candidates_and_refuse_a_bad_spec():
    import argparse

    import supernet_rank
    assert supernet_rank._shard("1/3") == (1, 3)
    for bad in ("3/3", "x/2", "1"):
        with pytest.raises(argparse.ArgumentTypeError, match="I/N"):
            supernet_rank._shard(bad)

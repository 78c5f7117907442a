"""``CTRDataModule`` on the real Criteo, Avazu and MovieLens-1M samples and on the synthetic generator: split
sizes, encoders fitted on the training split only, cache reuse, a separate test file, and clear errors."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ihas_lightning.data import datamodule as datamodule_module
from ihas_lightning.data.datamodule import CTRDataModule, split_rows
from ihas_lightning.data.encoders import MISSING_ID, OOV_ID, EncodedColumns
from ihas_lightning.data.readers import read_data
from ihas_lightning.data.cache import EncodedStore
from ihas_lightning.data.schema import DataFormatError
from ihas_lightning.data.synthetic import SyntheticCTR
from ihas_lightning.data.synthetic_config import SyntheticConfig
from ihas_lightning.modules import BackboneModule


def ready(dm: CTRDataModule) -> CTRDataModule:
    dm.prepare_data()
    dm.setup("fit")
    return dm


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def criteo_file(data_dir: Path) -> Path:
    return data_dir / "criteo" / "train-10k.txt"


def test_criteo_splits_and_encoders_fitted_on_train_only(criteo_file: Path, tmp_path: Path) -> None:
    dm = ready(CTRDataModule(str(criteo_file), format="criteo", cache_dir=str(tmp_path), batch_size=512))
    sizes = {name: len(dm.split(name)) for name in ("train", "val", "test")}
    assert sizes == {"train": 8000, "val": 1000, "test": 1000}
    assert all(isinstance(dm.split(n), EncodedColumns) for n in sizes)  # < 2M rows: held in memory
    assert dm.schema.sparse == tuple(f"C{i}" for i in range(1, 27)) and len(dm.schema.dense) == 13

    # The same seeded split, done by hand on the raw rows.
    raw = read_data(criteo_file, "criteo")
    train_rows, val_rows, test_rows = split_rows(len(raw), (0.1, 0.1), seed=0)
    train, test = raw.take(train_rows), raw.take(test_rows)
    np.testing.assert_array_equal(dm.split("test").labels, test.labels)
    total_clicks = sum(float(dm.split(n).labels.sum()) for n in sizes)
    assert total_clicks == float(raw.labels.sum()) and 0.2 < total_clicks / 10_000 < 0.24  # 21.8% clicks

    for name in dm.schema.sparse:
        known = set(train.sparse[name].tolist()) - {""}
        assert dm.vocab_sizes[name] == len(known) + 2, name
    # A category that occurs only in the test split is OOV there.
    found = 0
    for index, name in enumerate(dm.schema.sparse):
        known = set(train.sparse[name].tolist()) | set(raw.take(val_rows).sparse[name].tolist())
        for row, value in enumerate(test.sparse[name].tolist()):
            if value != "" and value not in known:
                assert dm.split("test").sparse[row, index] == OOV_ID, (name, value)
                found += 1
            elif value == "":
                assert dm.split("test").sparse[row, index] == MISSING_ID
    assert found > 100
    # And no training row is ever OOV with min_count=1.
    assert not (dm.split("train").sparse == OOV_ID).any()
    # Dense statistics come from the training rows only.
    logged = np.stack([np.log1p(np.maximum(train.dense[n], 0.0)) for n in dm.schema.dense], axis=1)
    np.testing.assert_allclose(dm.encoder.dense_mean, np.nanmean(logged, axis=0), rtol=1e-12)
    np.testing.assert_allclose(dm.encoder.dense_std, np.nanstd(logged, axis=0), rtol=1e-12)
    assert abs(float(dm.split("train").dense[:, 1].mean())) < 1e-4

    batch = next(iter(dm.train_dataloader()))
    assert batch["sparse"].shape == (512, 26) and batch["dense"].shape == (512, 13)
    assert batch["multi"].shape == (512, 0)
    assert len(dm.stream("val")) == 1  # eval batches are 4 x 512 = 2048 rows


def test_cache_is_reused_without_rewriting(criteo_file: Path, tmp_path: Path, monkeypatch) -> None:
    first = ready(CTRDataModule(str(criteo_file), format="criteo", cache_dir=str(tmp_path), seed=0))
    cache = first.cache_dir
    assert cache.parent == tmp_path and (cache / "encoder.json").exists()
    before = mtimes(cache)
    assert {"encoder.json", "options.json", "train/sparse.npy", "test/meta.json"} <= set(before)

    def no_reading(*args, **kwargs):
        raise AssertionError("prepare_data re-read the data although the cache exists")

    monkeypatch.setattr(datamodule_module, "read_data", no_reading)
    second = ready(CTRDataModule(str(criteo_file), format="criteo", cache_dir=str(tmp_path), seed=0))
    assert second.cache_dir == cache
    assert mtimes(cache) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # no second or temporary folder
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(second.split(name).sparse, first.split(name).sparse)
    assert second.vocab_sizes == first.vocab_sizes

    # Another seed is another cache.
    monkeypatch.undo()
    third = CTRDataModule(str(criteo_file), format="criteo", cache_dir=str(tmp_path), seed=1)
    assert third.cache_dir != cache


def test_separate_test_file(data_dir: Path, tmp_path: Path) -> None:
    train_file, test_file = data_dir / "avazu" / "train-9k.csv", data_dir / "avazu" / "test-1k-noheader.csv"
    dm = ready(CTRDataModule(str(train_file), format="avazu", test=str(test_file), cache_dir=str(tmp_path)))
    # 8999 rows: 900 (10%) for validation, the rest for training; the 1000 rows of the test file for test.
    assert {n: len(dm.split(n)) for n in ("train", "val", "test")} == {"train": 8099, "val": 900, "test": 1000}
    test_raw = read_data(test_file, "avazu")
    np.testing.assert_array_equal(dm.split("test").labels, test_raw.labels)
    train_raw = read_data(train_file, "avazu").take(split_rows(8999, (0.1,), seed=0)[0])
    index = dm.schema.sparse.index("device_ip")
    known = set(train_raw.sparse["device_ip"].tolist())
    unseen = np.array([v not in known for v in test_raw.sparse["device_ip"].tolist()])
    assert unseen.sum() > 0
    assert np.array_equal(dm.split("test").sparse[:, index] == OOV_ID, unseen)
    assert dm.schema.sparse[:2] == ("hour_of_day", "weekday")


def test_movielens_1m_folder_trains(data_dir: Path, tmp_path: Path) -> None:
    """The first 3,000 ratings of the real ML-1M sample: format guessed from the folder, a few training steps."""
    real = data_dir / "movielens" / "ml-1m-first3k"
    folder = tmp_path / "ml-1m-3000"
    folder.mkdir()
    for name in ("users.dat", "movies.dat"):
        shutil.copy(real / name, folder / name)
    with gzip.open(real / "ratings.dat.gz", "rt", encoding="latin-1") as handle:
        first = [next(handle) for _ in range(3000)]
    (folder / "ratings.dat.gz").write_bytes(gzip.compress("".join(first).encode("latin-1")))
    dm = ready(CTRDataModule(str(folder), cache_dir=str(tmp_path / "cache"), batch_size=256))
    assert dm.format == "movielens-1m"
    assert {n: len(dm.split(n)) for n in ("train", "val", "test")} == {"train": 2400, "val": 300, "test": 300}
    assert dm.schema.sparse[:2] == ("user_id", "movie_id") and dm.split("train").multi.shape == (2400, 6)
    positives = sum(int(dm.split(n).labels.sum()) for n in ("train", "val", "test"))
    assert positives == sum(int(line.split("::")[2]) >= 4 for line in first)

    module = BackboneModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=4, dnn_hidden_units=(8,), seed=0)
    before = [p.detach().clone() for p in module.parameters()]
    trainer = pl.Trainer(max_steps=5, limit_val_batches=0, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", devices=1,
                         default_root_dir=str(tmp_path))
    trainer.fit(module, dm)
    assert trainer.global_step == 5 and torch.isfinite(trainer.callback_metrics["train_loss"])
    assert any(not torch.equal(b, p) for b, p in zip(before, module.parameters()))


def test_synthetic_is_deterministic_by_seed(tmp_path: Path) -> None:
    def build(seed: int, folder: str) -> CTRDataModule:
        return ready(CTRDataModule("synthetic", rows=2000, seed=seed, cache_dir=str(tmp_path / folder)))

    a, b, c = build(3, "a"), build(3, "b"), build(4, "c")
    assert {n: len(a.split(n)) for n in ("train", "val", "test")} == {"train": 1600, "val": 200, "test": 200}
    for name in ("train", "val", "test"):
        for part in ("labels", "sparse", "dense"):
            np.testing.assert_array_equal(getattr(a.split(name), part), getattr(b.split(name), part))
    assert not np.array_equal(a.split("train").sparse, c.split("train").sparse)
    assert a.vocab_sizes == b.vocab_sizes
    sparse = a.split("train").sparse
    assert sparse.min() >= 2  # integer ids 0..V-1 shifted past the missing and OOV ids
    assert all(sparse[:, i].max() < size for i, size in enumerate(a.vocab_sizes.values()))


def test_synthetic_config_shapes_the_streamed_cache(tmp_path: Path) -> None:
    # Criteo's layout in miniature: more fields than the default, skewed cardinalities, read from disk.
    config = SyntheticConfig(num_sparse=6, num_dense=3, vocab_sizes=(300, 120, 60, 25, 9, 4), zipf_exponent=1.3)
    dm = ready(CTRDataModule("synthetic", rows=5000, seed=2, cache_dir=str(tmp_path), in_memory=False,
                             synthetic_config=config))
    assert all(isinstance(dm.split(n), EncodedStore) for n in ("train", "val", "test"))
    assert dm.schema.sparse == ("C1", "C2", "C3", "C4", "C5", "C6") and dm.schema.dense == ("I1", "I2", "I3")
    assert list(dm.vocab_sizes.values()) == [302, 122, 62, 27, 11, 6]      # + the missing and OOV ids
    train = dm.split("train").read_all()
    assert train.sparse.shape == (4000, 6) and train.dense.shape == (4000, 3)
    # The cache holds exactly the generator's rows (training split: data seed 3 * seed + 1), ids shifted by 2.
    rows = SyntheticCTR(config, seed=2).generate(4000, seed=7)
    np.testing.assert_array_equal(train.sparse, rows.sparse + 2)
    np.testing.assert_array_equal(train.labels, rows.labels)
    # Zipf(1.3) over C1's 300 ids: the most frequent id takes far more than a uniform 1/300 share.
    assert np.bincount(train.sparse[:, 0]).max() / len(train.sparse) > 0.1

    default = CTRDataModule("synthetic", rows=5000, seed=2, cache_dir=str(tmp_path))
    assert dm.cache_dir != default.cache_dir
    # The default config, spelled out, shares the cache of no config (caches made before the argument existed).
    same = CTRDataModule("synthetic", rows=5000, seed=2, cache_dir=str(tmp_path), synthetic_config=SyntheticConfig())
    assert same.cache_dir == default.cache_dir
    with pytest.raises(TypeError, match="must be a SyntheticConfig, got dict"):
        CTRDataModule("synthetic", cache_dir=str(tmp_path), synthetic_config={"num_sparse": 6})
    with pytest.raises(ValueError, match="synthetic data only, not format 'csv'"):
        CTRDataModule(str(tmp_path), format="csv", cache_dir=str(tmp_path), synthetic_config=config)


def test_clear_errors(criteo_file: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does-not-exist.txt' does not exist"):
        CTRDataModule(str(tmp_path / "does-not-exist.txt"), format="criteo", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="unknown data format 'criteo-2030'"):
        CTRDataModule(str(criteo_file), format="criteo-2030", cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="cannot guess the format"):
        CTRDataModule(str(criteo_file), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="movielens-1m"):                 # the message lists every format
        CTRDataModule(str(tmp_path), cache_dir=str(tmp_path))
    with pytest.raises(ValueError, match="val_share"):
        CTRDataModule(str(criteo_file), format="criteo", val_share=0.6, test_share=0.5, cache_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match=r"prepare_data\(\) and setup\(\) first"):
        CTRDataModule(str(criteo_file), format="criteo", cache_dir=str(tmp_path)).vocab_sizes
    assert list(tmp_path.iterdir()) == []

    # A broken file: the error names file, line and column, and no half-written cache is left behind.
    good = criteo_file.read_text().splitlines()[:20]
    broken = tmp_path / "data" / "broken.txt"
    broken.parent.mkdir()
    broken.write_text("\n".join(good[:6] + ["7" + good[6][1:]] + good[7:]) + "\n")
    cache = tmp_path / "cache"
    dm = CTRDataModule(str(broken), format="criteo", cache_dir=str(cache))
    with pytest.raises(DataFormatError, match=r"broken.txt', line 7, column 'label'"):
        dm.prepare_data()
    assert list(cache.iterdir()) == []

"""Fixtures of the unit tests (the shared ones are in the root conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ihas_lightning.data.datamodule import CTRDataModule


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One encoded-data cache for the session (test files may define their own ``cache_dir``)."""
    return tmp_path_factory.mktemp("ihas_cache")


@pytest.fixture(scope="module")
def retrain_dm(cache_dir: Path) -> CTRDataModule:
    """The retraining tests' data: 2000 synthetic rows (1600 for training), batches of 256."""
    dm = CTRDataModule("synthetic", rows=2000, batch_size=256, seed=0, cache_dir=str(cache_dir))
    dm.prepare_data()
    dm.setup("fit")
    return dm

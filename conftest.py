"""Shared by tests/ and integration_tests/: the real-data fixture and one torch thread."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ihas_lightning.paths import shared_data_dir


def pytest_configure(config: pytest.Config) -> None:
    """Tiny models: one thread is as fast, deterministic, and immune to a busy second core (see
    docs/design.md#9-engineering-measurements)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real data; CI sets IHAS_REQUIRE_DATA=1 so a missing folder fails instead of skipping."""
    path = shared_data_dir()
    if not path.is_dir():
        if os.environ.get("IHAS_REQUIRE_DATA") == "1":
            pytest.fail(f"shared data folder {path} is missing (set IHAS_DATA_DIR)")
        pytest.skip(f"shared data folder {path} is missing")
    return path

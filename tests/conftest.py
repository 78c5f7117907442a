"""Fixtures of the unit tests (the shared ones are in the root conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One encoded-data cache for the session (test files may define their own ``cache_dir``)."""
    return tmp_path_factory.mktemp("ihas_cache")

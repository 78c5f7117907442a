"""Where the shared real CTR data lies (never inside the repository: its terms forbid redistribution)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["shared_data_dir"]

_ENV = "IHAS_DATA_DIR"


def shared_data_dir() -> Path:
    """``$IHAS_DATA_DIR`` if set, else ``../shared/data`` beside the project root."""
    if os.environ.get(_ENV):
        return Path(os.environ[_ENV])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"

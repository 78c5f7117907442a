"""Helpers of the reader tests: distinct categories, and the check that a bad input names its file, line and
column."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from ihas_lightning.data.schema import DataFormatError

__all__ = ["assert_bad", "distinct"]


def distinct(values: np.ndarray) -> int:
    """Distinct categories, not counting the missing marker."""
    return len(set(values.tolist()) - {""})


def assert_bad(call: Callable[[], object], path: Path, line: int | None, column: str | None = None,
               text: str = "") -> str:
    """``call`` raises DataFormatError naming the file, the line and the column."""
    with pytest.raises(DataFormatError) as info:
        call()
    message = str(info.value)
    assert path.name in message, message
    if line is not None:
        assert f"line {line}" in message, message
        assert info.value.line == line
    if column is not None:
        assert f"column '{column}'" in message, message
    assert text in message, message
    return message

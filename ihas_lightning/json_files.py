"""Reading the JSON files of a run (``run.json``, a stage's ``metrics.json``, ``clusters.json``, a schema) so
that a broken one is named: ``json.loads`` alone says "Expecting value: line 1 column 1" and not which file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["read_json", "read_json_object"]


def read_json(path: str | Path, what: str = "a JSON file") -> Any:
    """The value in ``path``; a ValueError names the file, ``what`` it was meant to be, and where it broke.

    A missing file raises FileNotFoundError, a folder IsADirectoryError, as ``open`` does.
    """
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"'{path}' is not valid JSON ({what}): {error}") from None


def read_json_object(path: str | Path, what: str = "a JSON file") -> dict[str, Any]:
    """:func:`read_json` of a file that must hold a JSON object (``{...}``)."""
    value = read_json(path, what)
    if not isinstance(value, dict):
        raise ValueError(f"'{path}' ({what}) must hold a JSON object, got {type(value).__name__}")
    return value

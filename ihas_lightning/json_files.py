"""Reading the JSON files of a run (``run.json``, a stage's ``metrics.json``, ``clusters.json``, a schema) so
that a broken one is named: ``json.loads`` alone says "Expecting value: line 1 column 1" and not which file."""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["read_json", "read_json_object", "record_differences"]


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


def record_differences(saved: Mapping[str, Any], now: Mapping[str, Any], skip: Collection[str] = ()) -> list[str]:
    """``"key: saved -> now"`` for every key both records hold (less ``skip``) whose values differ; a dict value
    field by field (``"key.field: saved -> now"``). Give ``now`` as a JSON file gives it back (tuples as lists),
    so that a settings record written earlier compares equal to the same settings now."""
    out = []
    for key, new in now.items():
        if key in skip or key not in saved or saved[key] == new:
            continue
        old = saved[key]
        if isinstance(old, dict) and isinstance(new, dict):
            out += [f"{key}.{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(old.keys() | new.keys())
                    if old.get(k) != new.get(k)]
        else:
            out.append(f"{key}: {old!r} -> {new!r}")
    return out


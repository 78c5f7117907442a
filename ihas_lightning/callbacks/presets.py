"""``load_callbacks``: Lightning callbacks from a YAML file in the ``class_path``/``init_args`` form."""

from __future__ import annotations

import importlib
from pathlib import Path

from pytorch_lightning.callbacks import Callback

__all__ = ["load_callbacks"]


def load_callbacks(path: str | Path) -> list[Callback]:
    """Callbacks from a YAML file in Lightning's ``class_path``/``init_args`` form (see ``callbacks/``)."""
    import yaml

    data = yaml.safe_load(Path(path).read_text())
    entries = data.get("callbacks", data) if isinstance(data, dict) else data
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a list of callbacks (or a 'callbacks:' key)")
    callbacks = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "class_path" not in entry:
            raise ValueError(f"{path}: callback #{index} needs a 'class_path'")
        module_name, _, class_name = entry["class_path"].rpartition(".")
        try:
            cls = getattr(importlib.import_module(module_name), class_name)
        except (ImportError, AttributeError) as error:
            raise ValueError(f"{path}: callback #{index}: cannot import '{entry['class_path']}': {error}") from None
        callbacks.append(cls(**(entry.get("init_args") or {})))
    return callbacks

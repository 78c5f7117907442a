"""Callback sets from YAML: a packaged preset (``load_callbacks("search")``) or a file of your own.

The format is LightningCLI's: a list of ``class_path``/``init_args`` entries, optionally under a
``callbacks:`` key. A callbacks YAML is data, not code (issue 20): it is read with ``yaml.safe_load``, a
``class_path`` outside the allowed module prefixes is refused *before* anything is imported (importing a
module can itself run code), and only a ``pytorch_lightning.Callback`` subclass is ever called.
``lightning.pytorch.callbacks`` is not allowed: its classes derive from a different ``Callback`` base, which a
``pytorch_lightning`` Trainer rejects.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pytorch_lightning import Callback

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["ALLOWED_CALLBACK_MODULES", "load_callbacks", "preset_names"]

ALLOWED_CALLBACK_MODULES: tuple[str, ...] = ("ihas_lightning.callbacks", "pytorch_lightning.callbacks")
"""Module prefixes a ``class_path`` may name; a YAML file cannot widen them, a Python caller can."""

_ENTRY_KEYS = ("class_path", "init_args")


def _preset_folder() -> Traversable:
    return resources.files("ihas_lightning") / "configs" / "callbacks"


def preset_names() -> list[str]:
    """The packaged presets (``ihas_lightning/configs/callbacks/<name>.yaml``), sorted."""
    return sorted(entry.name.removesuffix(".yaml") for entry in _preset_folder().iterdir()
                  if entry.name.endswith(".yaml"))


def load_callbacks(path_or_name: str | Path, *,
                   allowed_modules: Sequence[str] = ALLOWED_CALLBACK_MODULES) -> list[Callback]:
    """The callbacks of a packaged preset or a YAML file, built in the file's order.

    Args:
        path_or_name: a preset name from :func:`preset_names` (a ``str`` that names a preset always loads
            the preset), or the path of a YAML file.
        allowed_modules: module prefixes a ``class_path`` may name (default :data:`ALLOWED_CALLBACK_MODULES`);
            add your own package here to load your own callbacks.

    Raises:
        ValueError: naming the file and the entry, for a missing file, invalid YAML, a ``class_path`` outside
            ``allowed_modules`` or not a ``Callback`` subclass, or ``init_args`` the class rejects.

    Example::

        trainer = pl.Trainer(callbacks=load_callbacks("search"))
    """
    if isinstance(allowed_modules, str):
        raise ValueError(f"allowed_modules must be a sequence of module prefixes, got the string {allowed_modules!r}")
    source, text = _read(path_or_name)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {error}") from None
    entries = _entries(source, data)
    return [_build(f"{source}: callback #{number}", entry, tuple(allowed_modules))
            for number, entry in enumerate(entries, start=1)]


def _read(path_or_name: str | Path) -> tuple[str, str]:
    """``(name for errors, YAML text)`` of a preset or a file."""
    if isinstance(path_or_name, str) and path_or_name in preset_names():
        resource = _preset_folder() / f"{path_or_name}.yaml"
        return f"preset '{path_or_name}' ({resource})", resource.read_text(encoding="utf-8")
    path = Path(path_or_name)
    if not path.is_file():
        raise ValueError(f"{path}: no such callbacks file, and not a packaged preset "
                         f"(presets: {', '.join(preset_names())})")
    return str(path), path.read_text(encoding="utf-8")


def _entries(source: str, data: Any) -> list:
    """The list of callback entries: the document itself, or its one ``callbacks:`` key."""
    if isinstance(data, dict):
        if set(data) != {"callbacks"}:
            raise ValueError(f"{source}: expected one top-level key 'callbacks' (or a bare list), "
                             f"got keys {sorted(map(str, data))}")
        data = data["callbacks"]
    if not isinstance(data, list):
        raise ValueError(f"{source}: expected a list of callbacks (or a 'callbacks:' key holding one), "
                         f"got {type(data).__name__}")
    return data


def _build(where: str, entry: Any, allowed_modules: tuple[str, ...]) -> Callback:
    """One callback from its ``class_path``/``init_args`` entry."""
    if not isinstance(entry, dict) or "class_path" not in entry:
        raise ValueError(f"{where} needs a 'class_path', e.g. "
                         "'class_path: ihas_lightning.callbacks.TemperatureAnnealing'")
    unknown = sorted(map(str, set(entry) - set(_ENTRY_KEYS)))
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; an entry has only 'class_path' and 'init_args'")
    cls = _resolve(where, entry["class_path"], allowed_modules)
    init_args = entry.get("init_args") or {}
    if not isinstance(init_args, dict) or not all(isinstance(key, str) for key in init_args):
        raise ValueError(f"{where} ({cls.__name__}): 'init_args' must map argument names to values, "
                         f"got {init_args!r}")
    try:
        return cls(**init_args)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} ({cls.__name__}): bad init_args {init_args}: {error}") from None


def _resolve(where: str, class_path: Any, allowed_modules: tuple[str, ...]) -> type[Callback]:
    """The ``Callback`` class ``class_path`` names; a module outside ``allowed_modules`` is never imported."""
    fix = f"use a pytorch_lightning Callback class from {' or '.join(allowed_modules)}"
    if not isinstance(class_path, str) or not all(part.isidentifier() for part in class_path.split(".")):
        raise ValueError(f"{where}: class_path must be a dotted name such as "
                         f"'ihas_lightning.callbacks.TemperatureAnnealing', got {class_path!r}")
    module_name, _, class_name = class_path.rpartition(".")
    if not any(module_name == prefix or module_name.startswith(prefix + ".") for prefix in allowed_modules):
        raise ValueError(f"{where}: refusing class_path '{class_path}': a callbacks YAML may only name classes in "
                         f"the allowed modules; {fix}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"{where}: cannot import '{class_path}': {error}") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"{where}: '{module_name}' has no '{class_name}'; {fix}")
    if not (isinstance(cls, type) and issubclass(cls, Callback)):
        raise ValueError(f"{where}: refusing class_path '{class_path}': not a Callback subclass; {fix}")
    return cls

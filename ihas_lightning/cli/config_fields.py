"""The keys and values of an ``ihas`` config file: their types, and the nested ``RunConfig`` form.

A command whose options make a :class:`~ihas_lightning.run_config.RunConfig` prints it as ``run.json`` holds
it (``RunConfig.to_dict``), limited to the parts its options set (``ihas train`` has no ``gate``), plus the
command's own options by name (``ihas supernet``'s ``dim_choices``). Reading such a file maps each field back
to the option that sets it (:data:`OPTION_OF`), so that a flag given on the command line overrides it as it
overrides any option; a field no option sets (``data.val_share``, ``model.dnn_dropout``) is applied to the
config after (:func:`~ihas_lightning.run_config.with_fields`).
"""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping
from dataclasses import fields
from functools import cache
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from ..data.config import DataConfig
from ..gates import GateConfig
from ..modules.config import BackboneConfig
from ..run_config import (ClusterOptions, RetrainConfig, RunConfig, SearchConfig, TrainerConfig, flatten_config)

__all__ = ["OPTION_OF", "SECTIONS", "check_fields", "conform", "nested_config", "option_hint", "read_nested"]

SECTIONS: dict[str, type] = {"data": DataConfig, "model": BackboneConfig, "gate": GateConfig, "search": SearchConfig,
                             "cluster": ClusterOptions, "retrain": RetrainConfig, "trainer": TrainerConfig}
"""The nested parts of a ``RunConfig`` by their key."""

OPTION_OF: dict[str, str] = {
    "out": "out", "data.data": "data", "data.format": "format", "data.schema": "schema", "data.test": "test",
    "data.rows": "rows", "data.seed": "split_seed", "data.min_count": "min_count", "data.batch_size": "batch_size",
    "data.cache_dir": "cache_dir", "model.backbone": "backbone", "model.dim": "dim",
    "model.dnn_hidden_units": "dnn", "model.lr": "lr", "model.seed": "seed",
    "model.embedding_updates": "embedding_updates", "gate.relaxation": "relaxation", "gate.prefix": "prefix",
    "gate.min_dim": "min_dim", "gate.allow_drop_field": "min_dim", "gate.budget": "budget",
    "gate.sparsity_weight": "sparsity_weight", "gate.polarization_weight": "polarization",
    "search.gate_lr": "gate_lr", "search.warmup_epochs": "warmup_epochs", "search.init_from": "init_from",
    "search.checkpoint": "search_checkpoint", "search.callbacks": "callbacks", "cluster.k": "k",
    "cluster.candidate_dims": "candidate_dims", "cluster.budget_fit": "budget_fit",
    "retrain.epochs": "retrain_epochs", "retrain.lr": "retrain_lr", "retrain.group_dense": "group_dense",
    "retrain.init_from": "retrain_init_from", "retrain.router": "router", "trainer.epochs": "epochs",
    "trainer.accelerator": "accelerator", "trainer.devices": "devices", "trainer.num_nodes": "num_nodes",
    "trainer.strategy": "strategy", "trainer.quiet": "quiet", "trainer.threads": "threads",
    "baseline_epochs": "baseline_epochs", "matched_baseline": "no_matched_baseline", "separate": "separate",
    "mde_baseline": "mde_baseline", "fieldwise": "fieldwise",
}
"""The option (its argparse dest) that sets each ``RunConfig`` field; the fields not here have no option."""

# fields that follow other options: the options that decide them, and what to tell a file that contradicts them
_DERIVED = {
    "gate.allow_drop_field": ({"min_dim"}, "it is true exactly when gate.min_dim is 0"),
    "gate.budget": ({"budget", "sparsity_weight"}, "a fixed gate.sparsity_weight sets it to null"),
    "gate.sparsity_weight": ({"budget", "sparsity_weight"}, "a fixed multiplier needs gate.budget: null"),
    "data.seed": ({"seed", "split_seed"}, "it follows model.seed unless set apart"),
    "data.rows": ({"rows", "data", "format"}, "rows size synthetic data only: a data file is read whole"),
}


def option_hint(action: argparse.Action) -> Any:
    """The type a config file's value for ``action`` must have: what its flag would parse to."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        hint: Any = bool
    elif action.choices is not None:
        hint = Literal[tuple(action.choices)]
    else:
        hint = {int: int, float: float}.get(action.type, str)
    return hint | None if action.default is None else hint


class _Mismatch(Exception):
    pass


def conform(value: Any, hint: Any, key: str, path: str) -> Any:
    """``value`` as ``hint`` wants it (a list for a tuple field becomes a tuple, an int for a float a float);
    a ValueError naming ``key`` and the file ``path`` when it does not fit."""
    try:
        return _conform(value, hint)
    except _Mismatch:
        extra = ("; a callbacks file itself is given with --callbacks" if key in ("callbacks", "search.callbacks")
                 else "")
        raise ValueError(f"{path}: '{key}' must be {_describe(hint)}, got {_show(value)}{extra}") from None


def _conform(value: Any, hint: Any) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for arg in args:
            try:
                return _conform(value, arg)
            except _Mismatch:
                pass
        raise _Mismatch
    if origin is Literal:
        if any(value == arg and type(value) is type(arg) for arg in args):
            return value
        raise _Mismatch
    if hint is type(None) and value is None or hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str) or hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if origin is tuple and isinstance(value, (list, tuple)):
        return tuple(_conform(item, args[0]) for item in value)
    if (origin is dict or hint is dict) and isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return dict(value)
    raise _Mismatch


def _describe(hint: Any) -> str:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if origin is tuple:
        return f"a list of {_describe(args[0]).removeprefix('an ').removeprefix('a ')}s"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}
    return names.get(hint, "a mapping")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return {f.name: get_type_hints(cls)[f.name] for f in fields(cls)}


def _used_keys(dests: frozenset[str]) -> list[str]:
    """The top-level ``RunConfig`` keys that a command with option ``dests`` sets."""
    return [name for name in _hints(RunConfig)
            if any(dest in dests for key, dest in OPTION_OF.items() if key.split(".")[0] == name)]


def nested_config(config: RunConfig, options: Mapping[str, Any]) -> dict[str, Any]:
    """What ``--print-config`` prints for a command with ``options`` (dest -> value) that made ``config``."""
    full = config.to_dict()
    own = {dest: value for dest, value in options.items() if dest not in OPTION_OF.values()}
    return {**{key: full[key] for key in _used_keys(frozenset(options))}, **own}


def read_nested(data: Mapping[str, Any], dests: frozenset[str], path: str,
                command: str) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """A RunConfig command's file, as ``(options, sources, nested)``: the option values it sets (dest -> value,
    not yet checked against the options' types and choices), the key each came from, and every ``RunConfig``
    field it names (dotted name -> value, checked against the field's type)."""
    keys = _used_keys(dests)
    nested: dict[str, Any] = {}
    options: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for key, value in data.items():
        if key in SECTIONS and key in keys and isinstance(value, Mapping):
            hints = _hints(SECTIONS[key])
            for name, item in value.items():
                if name not in hints:
                    raise ValueError(f"{path}: unknown key '{key}.{name}' for `ihas {command}` ({key} takes: "
                                     f"{', '.join(hints)})")
                nested[f"{key}.{name}"] = conform(item, hints[name], f"{key}.{name}", path)
        elif key in SECTIONS and key in keys and key not in dests:
            raise ValueError(f"{path}: '{key}' must be a mapping of {key} settings, got {value!r}")
        elif key in keys and key not in SECTIONS:
            nested[key] = conform(value, _hints(RunConfig)[key], key, path)
        elif key in dests:
            _put(options, sources, key, value, key, path)
        else:
            own = sorted(dests - set(OPTION_OF.values()))
            raise ValueError(f"{path}: unknown key '{key}' for `ihas {command}` (it takes {', '.join([*keys, *own])} "
                             "as --print-config prints them, or its options by name, e.g. batch_size)")
    for key, value in _options_of(nested).items():
        _put(options, sources, OPTION_OF[key] if key in OPTION_OF else key, value, key, path)
    return options, sources, nested


def _put(options: dict[str, Any], sources: dict[str, str], dest: str, value: Any, key: str, path: str) -> None:
    if dest in sources:
        raise ValueError(f"{path}: '{sources[dest]}' and '{key}' both set --{dest.replace('_', '-')}: keep one")
    options[dest], sources[dest] = value, key


def _options_of(nested: Mapping[str, Any]) -> dict[str, Any]:
    """The option values the dotted fields give, by field (:data:`OPTION_OF` names each one's option); a field
    that follows others (``data.seed``, ``gate.budget``, ...) only where it says more than they do."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if key not in OPTION_OF or key in _DERIVED:
            continue
        if key in ("model.dnn_hidden_units", "cluster.candidate_dims"):
            value = ",".join(str(v) for v in value)
        elif key == "cluster.k" and value is None:
            value = 0
        elif key == "matched_baseline":
            value = not value
        out[key] = value
    if "data.rows" in nested and "synthetic" in (nested.get("data.data", "synthetic"), nested.get("data.format")):
        out["data.rows"] = nested["data.rows"]
    if "data.seed" in nested and nested["data.seed"] != nested.get("model.seed"):
        out["data.seed"] = nested["data.seed"]                 # equal to model.seed: it follows --seed
    if "gate.budget" in nested and nested["gate.budget"] is not None:
        out["gate.budget"] = nested["gate.budget"]
    elif nested.get("gate.sparsity_weight") or "gate.budget" in nested:   # a fixed multiplier
        out["gate.sparsity_weight"] = nested.get("gate.sparsity_weight", 0.0)
    return out


def check_fields(config: RunConfig, nested: Mapping[str, Any], overridden: set[str], path: str) -> None:
    """A ValueError when a field the file names came out otherwise in ``config`` (one that follows other
    options, such as ``gate.allow_drop_field``), unless an option in ``overridden`` (given on the command line)
    decides it."""
    flat = flatten_config(config)
    for key, value in nested.items():
        deciders, why = _DERIVED.get(key, ({OPTION_OF.get(key)}, ""))
        if deciders & overridden:
            continue
        expected = None if key == "cluster.k" and value == 0 else value
        if flat[key] != expected:
            raise ValueError(f"{path}: '{key}: {_show(value)}' cannot be set with this file's other settings, "
                             f"which give {_show(flat[key])}{' (' + why + ')' if why else ''}")


def _show(value: Any) -> str:
    """A value as YAML writes it (``true``, ``null``), a string quoted."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return repr(list(value) if isinstance(value, tuple) else value)

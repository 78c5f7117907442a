"""What makes a run directory's results what they are: the options a second command on it must share.

A run folder holds the results of one configuration. A command with other *result options* (the data and its
split, the model, the search, clustering and retraining settings, the epochs) would resume or skip stages
trained under the old ones and label their numbers with the new ones, so it is refused (see
``RunDirectory.start``). *Execution options* only say how or where the same computation runs and may change
between an interrupted command and the one resuming it:

- ``out`` (the folder itself), ``trainer.quiet``, ``trainer.threads``, ``data.cache_dir`` (the cache is keyed
  by the data's content) and ``data.in_memory``;
- ``trainer.accelerator``, ``devices``, ``num_nodes``, ``strategy``: every stage resumes on other hardware and
  on any number of ranks (README, "Scale"); the figures then differ by float rounding and DDP's batch split,
  which is the point of moving a run to a GPU;
- ``separate``, ``matched_baseline``, ``fieldwise``, ``mde_baseline``: they add a stage (or leave one out)
  without changing the others.

Paths (data, test, schema, cache, the ``--init-from`` checkpoints, a callbacks YAML) are stored absolute, so
that a command started from another folder reads the same files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..run_config import RunConfig, flatten_config, with_fields

__all__ = ["EXECUTION_OPTIONS", "absolute_paths", "option_differences", "path_options"]

EXECUTION_OPTIONS = frozenset({
    "out", "trainer.quiet", "trainer.threads", "data.cache_dir", "data.in_memory", "trainer.accelerator",
    "trainer.devices", "trainer.num_nodes", "trainer.strategy", "separate", "matched_baseline", "fieldwise",
    "mde_baseline"})
"""Dotted ``RunConfig`` fields that may differ between two commands on one run folder."""

# the command-line flag of a dotted field, where it is not ``--`` + the field's last part
_FLAGS = {
    "data.data": "--data", "data.seed": "--seed", "model.seed": "--seed", "model.dnn_hidden_units": "--dnn",
    "gate.polarization_weight": "--polarization", "gate.allow_drop_field": "--min-dim",
    "search.checkpoint": "--search-checkpoint", "search.callbacks": "--callbacks", "trainer.epochs": "--epochs",
    "retrain.epochs": "--retrain-epochs", "retrain.lr": "--retrain-lr", "retrain.init_from": "--retrain-init-from",
    "model.lr": "--lr", "data.val_share": "val_share", "data.test_share": "test_share",
    "data.eval_batch_size": "eval_batch_size", "model.dnn_dropout": "dnn_dropout",
    "model.l2_reg_embedding": "l2_reg_embedding", "model.options": "model options",
}

# (dotted field, may be a packaged preset name rather than a file)
_PATHS = (("data.data", False), ("data.test", False), ("data.schema", False), ("data.cache_dir", False),
          ("search.init_from", False), ("retrain.init_from", False), ("search.callbacks", True))


def _flag(name: str) -> str:
    return _FLAGS.get(name, "--" + name.rsplit(".", 1)[-1].replace("_", "-"))


_FOOTPRINT_MATCHED = frozenset({"baseline_matched", "baseline_mde"})   # their target is iHAS's footprint
_AFTER_CLUSTER = frozenset({"cluster", "retrain", "losses", "separate", "fieldwise_cluster", "fieldwise",
                            *_FOOTPRINT_MATCHED})
_AFTER_SEARCH = frozenset({"search", *_AFTER_CLUSTER})
_STAGES_OF = {  # the stages whose results a group of options shapes; any other option shapes every stage
    "gate": _AFTER_SEARCH, "search": _AFTER_SEARCH, "trainer.epochs": _AFTER_SEARCH,
    "cluster": _AFTER_CLUSTER,
    "retrain": frozenset({"retrain", "losses", "fieldwise", *_FOOTPRINT_MATCHED}),
    "baseline_epochs": frozenset({"baseline", "separate", *_FOOTPRINT_MATCHED}),
}


def _shapes(name: str, started: frozenset[str] | None) -> bool:
    """Whether option ``name`` shaped one of the ``started`` stages (None: every stage counts as started)."""
    if started is None:
        return True
    stages = _STAGES_OF.get(name, _STAGES_OF.get(name.split(".")[0]))
    return stages is None and bool(started) or bool(stages and started & stages)


def option_differences(old: RunConfig, new: RunConfig, started: frozenset[str] | None = None) -> list[str]:
    """``"--dim 16 -> 8"`` for every result option (see the module's doc) that differs, each flag once.

    With ``started`` (the stages with a folder, finished or interrupted; ``retrain_<backbone>`` counts as
    ``retrain``), an option that only shapes stages not yet started may change: e.g. ``--retrain-init-from``
    on a run whose search and clustering are done and whose retraining has not begun.
    """
    before, after = flatten_config(old), flatten_config(new)
    seen: dict[str, str] = {}
    for name, value in after.items():
        if name in EXECUTION_OPTIONS or before.get(name) == value or not _shapes(name, started):
            continue
        flag = _flag(name)
        seen.setdefault(flag, f"{flag} {_show(before.get(name))} -> {_show(value)}")
    return list(seen.values())


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "()"
    return repr(value) if isinstance(value, str) else str(value)


def path_options(config: RunConfig) -> dict[str, str]:
    """The set path-valued fields of ``config`` that name files (not ``"synthetic"`` or a preset name)."""
    from ..callbacks.presets import preset_names

    flat = flatten_config(config)
    found = {}
    for name, may_be_preset in _PATHS:
        value = flat[name]
        if value is None or (name == "data.data" and value == "synthetic"):
            continue
        if may_be_preset and value in preset_names() and not Path(value).exists():
            continue
        found[name] = value
    return found


def absolute_paths(config: RunConfig, base: str | Path | None = None) -> RunConfig:
    """``config`` with every path option made absolute against ``base`` (default: the current folder), so
    that a later command started elsewhere reads the same files. ``~`` is expanded."""
    base = Path(base) if base is not None else Path.cwd()
    resolved = {name: os.path.normpath(base / Path(value).expanduser())
                for name, value in path_options(config).items()}
    return with_fields(config, resolved)

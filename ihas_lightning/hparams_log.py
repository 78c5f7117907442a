"""A run's settings beside its final figures in TensorBoard's HPARAMS tab, so that runs compare side by side.

``ihas run`` writes ``DIR/hparams/`` when it finishes (``run_pipeline``) and ``ihas train`` ``OUT/hparams/``:
one TensorBoard session whose hyperparameters are the run's config, flattened (``model.dim``,
``cluster.candidate_dims``: strings, numbers and booleans only) and whose metrics are the test figures of what
it trained, from its ``metrics.json``: ``kept/test_auc`` (the model the run ships: see
``pipeline.selection``; ``ihas train``'s one model), ``ihas/...``, ``baseline/...``, ``baseline_matched/...``
and the other variants the run trained, each with ``test_auc``, ``test_logloss``, ``val_auc``,
``footprint_params``, ``embedding_params`` and ``flops_per_sample`` where known. ``tensorboard --logdir``
on a folder of runs lists them all in one table. A rerun rewrites the session (one per run).

The stages' own TensorBoard loggers write no hparams session (``default_hp_metric=False`` in
``training.make_trainer``), so the tab holds runs, not stages.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

from .run_config import flatten_config

__all__ = ["HPARAMS_FOLDER", "METRIC_KEYS", "MODEL_KEYS", "hparam_values", "run_metrics", "write_hparams"]

HPARAMS_FOLDER = "hparams"
"""The folder of a run (or of an ``ihas train``) that holds its hparams session."""

MODEL_KEYS = ("ihas", "baseline", "baseline_matched", "baseline_mde", "fieldwise", "ihas_separate")
"""The models of ``DIR/metrics.json`` whose figures are logged, by their key there."""

METRIC_KEYS = ("test_auc", "test_logloss", "val_auc", "footprint_params", "embedding_params", "flops_per_sample")
"""The figures logged for each model, where its ``metrics.json`` has them (a number, not null)."""


def hparam_values(config: Any) -> dict[str, str | int | float | bool]:
    """A config (or a mapping of configs by name) as flat hyperparameters: dotted names, and a tuple as
    ``"0,2,4"``, a dict as JSON, None as ``"None"`` (TensorBoard takes strings, numbers and booleans only)."""
    parts = config.items() if isinstance(config, Mapping) else [("", config)]
    flat = {f"{name}.{key}" if name else key: value
            for name, part in parts for key, value in flatten_config(part).items()}
    return {key: _hparam(value) for key, value in flat.items()}


def _hparam(value: Any) -> str | int | float | bool:
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def run_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``{"kept/test_auc": ..., "ihas/test_auc": ..., "baseline/footprint_params": ...}`` from a run's
    ``DIR/metrics.json``: :data:`METRIC_KEYS` of the kept model and of each of :data:`MODEL_KEYS` it trained."""
    kept = (metrics.get("selection") or {}).get("kept")
    models = {"kept": metrics.get(kept)} if kept else {}
    models.update({key: metrics.get(key) for key in MODEL_KEYS})
    out = {}
    for name, entry in models.items():
        for key in METRIC_KEYS:
            value = entry.get(key) if isinstance(entry, Mapping) else None
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{name}/{key}"] = float(value)
    return out


@rank_zero_only
def write_hparams(folder: str | Path, hparams: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Write ``folder`` as one TensorBoard hparams session (replacing an earlier one): ``hparams`` with
    ``metrics``, which are also logged as scalars at step 0. Rank 0 only."""
    folder = Path(folder)
    if folder.is_dir():
        for old in [*folder.glob("events.out.tfevents.*"), folder / "hparams.yaml"]:
            old.unlink(missing_ok=True)
    logger = TensorBoardLogger(str(folder.parent), name=folder.name, version="", default_hp_metric=False)
    logger.log_hyperparams(dict(hparams), dict(metrics))
    logger.finalize("success")

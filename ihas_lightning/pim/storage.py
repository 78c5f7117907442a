"""Where a PIM study keeps its trials and how it samples them: Optuna storages and samplers.

A storage is any SQLAlchemy URL (SQLite by default, ``postgresql://...`` for workers on several machines, with
a heartbeat that fails and re-queues a dead worker's trial) or a journal file (``journal:PATH`` or a path ending
in .log/.journal/.jsonl). Kept apart from :mod:`~ihas_lightning.pim.study`, whose job is the trial objective and
the run of the study.
"""

from __future__ import annotations

import functools
import importlib.util
import sqlite3
import warnings
from pathlib import Path
from typing import Any

import optuna

__all__ = ["make_storage", "make_sampler", "SAMPLERS", "JOURNAL_SUFFIXES"]

SAMPLERS = ("tpe", "nsga2", "gp")
JOURNAL_SUFFIXES = (".log", ".journal", ".jsonl")


def make_storage(url: str, heartbeat_s: int | None = 30) -> optuna.storages.BaseStorage:
    """A storage from a URL: RDB (sqlite/postgresql/mysql, with heartbeat and retry) or a journal file."""
    if url.startswith("journal:") or ("://" not in url and url.endswith(JOURNAL_SUFFIXES)):
        path = Path(url.removeprefix("journal:"))
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    if "://" not in url:
        raise ValueError(f"storage {url!r} is neither a database URL (sqlite:///..., postgresql://...) nor a journal "
                         f"file (journal:PATH or a path ending in {'/'.join(JOURNAL_SUFFIXES)})")
    engine: dict[str, Any] = {"pool_pre_ping": True}
    url = _with_installed_driver(url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = {"creator": functools.partial(_sqlite_connection, str(path))}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=heartbeat_s or None,
            grace_period=2 * heartbeat_s if heartbeat_s else None,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
            if heartbeat_s else None)


def _with_installed_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy 2.1 then imports psycopg (3): with only psycopg2 installed
    (the ``[test]`` extra's ``psycopg2-binary``) the README's ``--storage postgresql://...`` would fail to import."""
    if (url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None
            and importlib.util.find_spec("psycopg2") is not None):
        return "postgresql+psycopg2://" + url.removeprefix("postgresql://")
    return url


def _sqlite_connection(path: str) -> sqlite3.Connection:
    """SQLite in WAL mode with synchronous=NORMAL: several local worker processes read while one writes, and a
    commit does not wait for an fsync (safe against a crashed process; only a power cut can lose the last
    commits). The 60 s timeout rides out other workers' write locks. See docs/design.md#9-engineering-measurements.
    """
    connection = sqlite3.connect(path, timeout=60, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """tpe (multivariate, constant liar for parallel workers), nsga2, or gp (Optuna 5's GPSampler handles
    several objectives and ``set_constraint`` constraints: logCEHVI)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "tpe":
            return optuna.samplers.TPESampler(seed=seed, multivariate=True, constant_liar=True)
        if name == "nsga2":
            return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
        if name == "gp":
            return optuna.samplers.GPSampler(seed=seed, warn_independent_sampling=False)
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {name!r}")

"""``RunDirectory``: the paths of one run, its ``run.json`` (the run's :class:`RunConfig`) and its lock.

A run folder holds the results of one configuration: :meth:`RunDirectory.start` refuses a command whose
result options differ from ``run.json`` (see :mod:`.run_identity`) unless told to start over, and
:meth:`RunDirectory.lock` keeps a second command off the folder while one runs.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from ..hparams_log import HPARAMS_FOLDER
from ..json_files import read_json_object
from ..run_config import RunConfig, with_fields
from ..training import write_json
from .run_identity import absolute_paths, option_differences, path_options

__all__ = ["RunDirectory", "RunLockedError", "embedding_rows"]

# What ``start(restart=True)`` clears: the stages of ``ihas run`` and ``ihas retrain``, and their summary.
# Other commands' folders in DIR (supernet/, pim/, transfer/) are left alone.
_RUN_STAGES = ("search", "cluster", "retrain", "separate", "baseline", "baseline_matched")
_ROOT_KEY = "run_root"     # run.json: the folder's absolute path when it was written (to detect a moved run)


class RunLockedError(RuntimeError):
    """Another command holds the run folder's lock."""


class RunDirectory:
    """Paths and saved configuration of one run; a stage is done when its ``metrics.json`` is readable."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> bool:
        """Whether the stage finished: its ``metrics.json`` holds a JSON object with entries. An unreadable
        one (a crash while the disk was full, a hand edit) counts as not done, with a warning: the stage is
        redone, resuming from its last checkpoint."""
        path = self.stage(name) / "metrics.json"
        if not path.exists():
            return False
        try:
            self.metrics(name)
        except ValueError as error:
            warnings.warn(f"{error}: redoing the {name} stage", stacklevel=2)
            return False
        return True

    def metrics(self, name: str) -> dict:
        path = self.stage(name) / "metrics.json"
        metrics = read_json_object(path, f"the {name} stage's metrics")
        if not metrics:
            raise ValueError(f"'{path}' (the {name} stage's metrics) is empty")
        return metrics

    def save_config(self, config: RunConfig) -> None:
        write_json(self.root / "run.json", {**config.to_dict(), _ROOT_KEY: str(self.root.resolve())})

    def load_config(self, quiet: bool | None = None) -> RunConfig:
        """The run's config (``run.json``, either form :meth:`RunConfig.from_dict` reads); ``quiet`` other
        than None replaces the saved one. A ValueError names the file when a saved value is refused.

        Paths inside the folder follow it when it was moved; a relative path (an older ``run.json``) is
        refused, since it would be read from wherever the command starts.
        """
        path = self.root / "run.json"
        if not path.exists():
            raise FileNotFoundError(f"'{self.root}' is not a run directory (no run.json): start it with `ihas run`")
        saved = read_json_object(path, "a run's configuration")
        if not saved:
            raise ValueError(f"'{path}' (a run's configuration) is empty: restore it, or start the run over with "
                             "`ihas run --restart`")
        recorded_root = saved.pop(_ROOT_KEY, None)
        try:
            config = RunConfig.from_dict(saved)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{error} (run.json of {self.root})") from None
        config = self._follow_move(config, recorded_root)
        relative = {name: value for name, value in path_options(config).items() if not Path(value).is_absolute()}
        if relative:
            name, value = next(iter(relative.items()))
            raise ValueError(f"{path} holds the relative path {name}='{value}' (written by an older version), "
                             "which would be read from the current folder: edit it to an absolute path")
        if quiet is not None:
            config = replace(config, trainer=replace(config.trainer, quiet=quiet))
        return config

    def _follow_move(self, config: RunConfig, recorded_root: str | None) -> RunConfig:
        """``config`` with the paths under the folder's recorded location moved to where it is now."""
        here = self.root.resolve()
        if recorded_root is None or Path(recorded_root) == here:
            return config
        moved = {}
        for name, value in path_options(config).items():
            inside = _relative_to(Path(value), Path(recorded_root))
            if inside is not None:
                moved[name] = str(here / inside)
        return replace(with_fields(config, moved), out=str(here))

    def start(self, config: RunConfig, restart: bool = False) -> RunConfig:
        """Make the folder the run of ``config`` (paths made absolute): write ``run.json`` for a new folder,
        check a finished or interrupted one is the same run, or with ``restart`` clear its stages first.

        A folder whose ``run.json`` holds other result options for a stage already started raises a ValueError
        naming them, and nothing in it changes (an option of a stage not yet begun may change: see
        ``option_differences``). Returns the config as written.
        """
        config = absolute_paths(config)
        if (self.root / "run.json").exists() and not restart:
            differences = option_differences(self.load_config(), config, self.started())
            if differences:
                raise ValueError(f"'{self.root}' holds a run with other options ({'; '.join(differences)}); its "
                                 "results would be relabelled: use a new --out, or --restart to clear its stages "
                                 "and start over")
        elif restart:
            self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        self.save_config(config)
        return config

    def started(self) -> frozenset[str]:
        """The run's stages that have a folder (finished or interrupted); ``retrain_*`` count as ``retrain``."""
        return frozenset("retrain" if entry.name.startswith("retrain_") else entry.name
                         for entry in self.root.iterdir() if entry.is_dir()
                         and (entry.name in _RUN_STAGES or entry.name.startswith("retrain_")))

    def clear(self) -> None:
        """Remove the run's stages, ``metrics.json``, its hparams and ``run.json`` (see ``_RUN_STAGES``)."""
        for entry in (self.root.iterdir() if self.root.is_dir() else ()):
            if entry.is_dir() and (entry.name in (*_RUN_STAGES, HPARAMS_FOLDER) or entry.name.startswith("retrain_")):
                shutil.rmtree(entry)
            elif entry.name in ("run.json", "metrics.json"):
                entry.unlink()

    @contextmanager
    def lock(self, command: str = "ihas") -> Iterator[None]:
        """Hold an exclusive lock on ``DIR/.lock`` for the block (the OS drops it when the process dies).

        A second command on the folder raises :class:`RunLockedError` at once. Ranks other than 0 of a
        distributed run (which start the same command) do not take it.
        """
        if _distributed_rank():
            yield
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / ".lock"
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                raise RunLockedError(f"'{self.root}' is in use by {holder}: wait for it to finish, or use another "
                                     "--out") from None
            handle.seek(0)
            handle.truncate()
            handle.write(f"{command} (pid {os.getpid()})")
            handle.flush()
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def checkpoint(self, name: str) -> Path:
        return self.stage(name) / "checkpoints" / "last.ckpt"

    def resume_path(self, name: str) -> str | None:
        path = self.checkpoint(name)
        return str(path) if path.exists() else None


def _relative_to(path: Path, root: Path) -> Path | None:
    try:
        return path.relative_to(root)
    except ValueError:
        return None


def _distributed_rank() -> int:
    """0 for the process that owns the command; 1 for another rank (or node) of a distributed run, as torchrun,
    SLURM or Lightning's launcher number them."""
    names = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    return int(any(os.environ.get(name, "0") not in ("", "0") for name in names))


def embedding_rows(vocab_sizes: dict[str, int]) -> int:
    """Rows of all embedding tables: a uniform model at dimension d holds ``d`` times as many parameters."""
    return int(sum(vocab_sizes.values()))

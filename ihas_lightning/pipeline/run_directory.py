"""``RunDirectory``: the paths of one run and its ``run.json`` (the run's :class:`RunConfig`)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..run_config import RunConfig
from ..training import write_json

__all__ = ["RunDirectory", "embedding_rows"]


class RunDirectory:
    """Paths and saved configuration of one run; a stage is done when its ``metrics.json`` exists."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> bool:
        return (self.stage(name) / "metrics.json").exists()

    def metrics(self, name: str) -> dict:
        return json.loads((self.stage(name) / "metrics.json").read_text())

    def save_config(self, config: RunConfig) -> None:
        write_json(self.root / "run.json", config.to_dict())

    def load_config(self, quiet: bool | None = None) -> RunConfig:
        """The run's config (``run.json``, either form :meth:`RunConfig.from_dict` reads); ``quiet`` other
        than None replaces the saved one. A ValueError names the file when a saved value is refused."""
        path = self.root / "run.json"
        if not path.exists():
            raise FileNotFoundError(f"'{self.root}' is not a run directory (no run.json): start it with `ihas run`")
        try:
            config = RunConfig.from_dict(json.loads(path.read_text()))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{error} (run.json of {self.root})") from None
        if quiet is not None:
            config = replace(config, trainer=replace(config.trainer, quiet=quiet))
        return config

    def checkpoint(self, name: str) -> Path:
        return self.stage(name) / "checkpoints" / "last.ckpt"

    def resume_path(self, name: str) -> str | None:
        path = self.checkpoint(name)
        return str(path) if path.exists() else None


def embedding_rows(vocab_sizes: dict[str, int]) -> int:
    """Rows of all embedding tables: a uniform model at dimension d holds ``d`` times as many parameters."""
    return int(sum(vocab_sizes.values()))

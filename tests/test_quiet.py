"""``--quiet`` hides Lightning's INFO banners and the known-benign warnings, and puts everything back after."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import pytest

from ihas_lightning.cli import build_parser, main, wants_quiet
from ihas_lightning.cli.quiet import CHATTY_LOGGERS, quiet_output
from ihas_lightning.pipeline import RunDirectory
from ihas_lightning.run_config import RunConfig, TrainerConfig


def _train(tmp_path: Path, *extra: str) -> int:
    return main(["train", "--rows", "2000", "--epochs", "1", "--dim", "4", "--dnn", "8", "--batch-size", "512",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), *extra])


def _lightning_info(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith(("pytorch_lightning", "lightning_fabric")) and r.levelno < logging.WARNING]


def test_quiet_run_hides_lightning_info_lines(tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    assert _train(tmp_path / "loud") == 0
    assert any("GPU available" in line for line in _lightning_info(caplog))     # the control: a banner
    caplog.clear()
    assert _train(tmp_path / "quiet", "--quiet") == 0
    assert _lightning_info(caplog) == []
    assert (tmp_path / "quiet" / "run" / "metrics.json").exists()


def test_quiet_output_restores_levels_and_filters() -> None:
    loggers = [logging.getLogger(name) for name in CHATTY_LOGGERS]
    before = [logger.level for logger in loggers]
    with quiet_output(True):
        assert all(logger.level == logging.WARNING for logger in loggers)
        with pytest.warns(UserWarning, match="a real problem"):   # other warnings still reach the user
            warnings.warn("a real problem", UserWarning)
    assert [logger.level for logger in loggers] == before
    with quiet_output(False):
        assert [logger.level for logger in loggers] == before


def test_benign_warnings_are_dropped_inside_only() -> None:
    message = "Your `IterableDataset` has `__len__` defined. In combination with multi-process data loading"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        with quiet_output(False):
            warnings.warn(message, UserWarning)
        warnings.warn(message + " (outside)", UserWarning)
    assert [str(w.message) for w in seen] == [message + " (outside)"]


@pytest.mark.parametrize("command", ["cluster", "retrain", "transfer"])
def test_commands_on_a_run_are_as_quiet_as_the_run(tmp_path: Path, command: str) -> None:
    extra = ["--backbones", "DCN"] if command == "transfer" else []
    for run_quiet in (True, False):
        run = RunDirectory(tmp_path / str(run_quiet))
        run.root.mkdir()
        if run_quiet:
            run.save_config(RunConfig(trainer=TrainerConfig(quiet=True)))
        else:                                                             # a run.json of older code: flat options
            (run.root / "run.json").write_text(json.dumps({"quiet": False, "backbone": "DeepFM"}))
        args = build_parser().parse_args([command, "--run", str(run.root), *extra])
        assert wants_quiet(args) is run_quiet                             # no flag: as the run was started
        assert wants_quiet(build_parser().parse_args([command, "--run", str(run.root), "--quiet", *extra])) is True
    missing = build_parser().parse_args([command, "--run", str(tmp_path / "missing"), *extra])
    assert wants_quiet(missing) is False                # the command itself then reports the missing run

"""A run folder is one run (issue 20): absolute paths in ``run.json``, other result options refused, ``restart``
clears only the run's stages, a moved folder's own paths follow it, one command at a time."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ihas_lightning import DataConfig, RunConfig
from ihas_lightning.pipeline import RunDirectory
from ihas_lightning.pipeline.run_directory import RunLockedError
from ihas_lightning.pipeline.run_identity import option_differences
from ihas_lightning.run_config import RetrainConfig


def _config(root: Path, **data) -> RunConfig:
    return RunConfig(out=str(root), data=DataConfig(**{"data": "train.txt", "format": "criteo", **data}))


def test_start_stores_absolute_paths_resolved_from_the_current_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = RunDirectory(tmp_path / "run").start(_config(tmp_path / "run", cache_dir="cache", schema="s/x.json"))
    saved = json.loads((tmp_path / "run" / "run.json").read_text())
    assert saved["data"]["data"] == str(tmp_path / "train.txt") == config.data.data
    assert (saved["data"]["cache_dir"], saved["data"]["schema"]) == (str(tmp_path / "cache"),
                                                                      str(tmp_path / "s/x.json"))
    monkeypatch.chdir(tmp_path / "run")                    # elsewhere: the same files, the same run
    assert RunDirectory(tmp_path / "run").load_config().data.data == str(tmp_path / "train.txt")
    RunDirectory(tmp_path / "run").start(_config(tmp_path / "run", data=str(tmp_path / "train.txt"),
                                                 cache_dir=str(tmp_path / "cache"), schema="../s/x.json"))


def test_other_result_options_are_refused_and_nothing_changes(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    first = run.start(_config(tmp_path))
    (tmp_path / "retrain_DCN").mkdir()                         # a stage begun: the options it depends on are set
    before = (tmp_path / "run.json").read_bytes()
    other = replace(first, retrain=RetrainConfig(epochs=7), data=replace(first.data, seed=4))
    with pytest.raises(ValueError, match=r"other options \(--seed 0 -> 4; --retrain-epochs 4 -> 7\); its results "
                                         r"would be relabelled: use a new --out, or --restart"):
        run.start(other)
    assert (tmp_path / "run.json").read_bytes() == before
    (tmp_path / "retrain_DCN").rmdir()
    (tmp_path / "search").mkdir()                              # the retraining not begun: its options may change
    with pytest.raises(ValueError, match=r"other options \(--seed 0 -> 4\);"):
        run.start(other)
    assert run.start(replace(first, retrain=RetrainConfig(epochs=7))).retrain.epochs == 7
    # how it runs may change: threads, quiet, cache, devices, extra stages
    execution = replace(first, trainer=replace(first.trainer, threads=4, quiet=True, devices=2, accelerator="cpu"),
                        data=replace(first.data, cache_dir=str(tmp_path / "c")), separate=True)
    assert option_differences(first, execution) == []
    assert run.start(execution).trainer.threads == 4


def test_restart_clears_the_run_s_stages_only(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    run.start(_config(tmp_path))
    for stage in ("search", "cluster", "retrain", "retrain_DCN", "baseline", "supernet"):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "metrics.json").write_text('{"x": 1}')
    (tmp_path / "metrics.json").write_text("{}")
    run.start(_config(tmp_path, seed=5), restart=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json", "supernet"]
    assert run.load_config().data.seed == 5


def test_a_moved_run_follows_its_own_paths_and_keeps_the_others(tmp_path: Path) -> None:
    old = tmp_path / "old"
    config = replace(_config(old, data=str(tmp_path / "train.txt")),
                     retrain=RetrainConfig(init_from=str(old / "supernet" / "last.ckpt")))
    RunDirectory(old).start(config)
    old.rename(tmp_path / "new")
    moved = RunDirectory(tmp_path / "new").load_config()
    assert moved.retrain.init_from == str(tmp_path / "new" / "supernet" / "last.ckpt")
    assert moved.data.data == str(tmp_path / "train.txt") and moved.out == str(tmp_path / "new")


def test_one_command_at_a_time_and_the_lock_is_released(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    with run.lock("ihas run"):
        with pytest.raises(RunLockedError, match=r"is in use by ihas run \(pid \d+\): wait for it to finish"):
            with RunDirectory(tmp_path / "run").lock("ihas retrain"):
                pass
    with pytest.raises(RuntimeError, match="crash"):
        with run.lock():
            raise RuntimeError("crash")
    with RunDirectory(tmp_path / "run").lock():                   # released after a crash too
        pass


def test_an_unreadable_stage_metrics_file_is_not_done(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    (tmp_path / "search").mkdir()
    for text in ("", "{}", "[1]", '{"val_auc": 0.7'):
        (tmp_path / "search" / "metrics.json").write_text(text)
        with pytest.warns(UserWarning, match=r"search.metrics.json.*: redoing the search stage"):
            assert not run.done("search")
    (tmp_path / "search" / "metrics.json").write_text('{"val_auc": 0.7}')
    assert run.done("search") and run.metrics("search") == {"val_auc": 0.7}

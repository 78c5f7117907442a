"""``ihas run`` killed in each stage and run again: it resumes the stage from its checkpoint (or redoes the step
that died), redoes none of the stages before it, and ends as the uninterrupted run (the harness: ``_pipeline_run``).
"""

from __future__ import annotations

import json

import pytest
import torch

import ihas_lightning.pipeline.cluster as cluster_stage
from ihas_lightning.cli import main

from _pipeline_run import STAGES, STEPS_PER_EPOCH, Crash, Harness, copy_until, global_step, stamps, tiny_run


def test_resume_after_a_kill_in_search(run_cache, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    harness = Harness(monkeypatch)
    harness.crash("search", STEPS_PER_EPOCH + 5)                   # after step 18, in the gated epoch
    with pytest.raises(Crash):
        main(tiny_run(run, run_cache))
    last = run / "search" / "checkpoints" / "last.ckpt"
    assert global_step(last) == STEPS_PER_EPOCH                   # the stage's own end-of-epoch checkpoint
    assert not (run / "search" / "metrics.json").exists() and not (run / "cluster").exists()
    harness.starts.clear()
    assert main(tiny_run(run, run_cache)) == 0
    assert harness.starts == [("search", 13), ("retrain", 0), ("baseline", 0), ("baseline_matched", 0)]
    assert global_step(last) == 2 * STEPS_PER_EPOCH == 26
    best = torch.load(run / "search" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["epoch"] == 1                                      # the one gated epoch, written after the resume
    assert json.loads((run / "search" / "metrics.json").read_text())["checkpoint"] == "best.ckpt"
    assert (run / "metrics.json").exists()


def test_resume_after_a_kill_in_cluster(finished, run_cache, tmp_path, monkeypatch) -> None:
    run = copy_until(finished[0], tmp_path, "cluster")
    search = stamps(run)
    harness = Harness(monkeypatch)
    calls = []
    original = cluster_stage.cluster

    def cluster_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise Crash("killed in k-means")
        return original(*args, **kwargs)

    monkeypatch.setattr(cluster_stage, "cluster", cluster_once)
    with pytest.raises(Crash):
        main(tiny_run(run, run_cache))
    assert not (run / "cluster" / "metrics.json").exists()
    assert main(["cluster", "--run", str(run)]) == 0                   # `ihas cluster --run` finishes the stage
    assert main(tiny_run(run, run_cache)) == 0
    assert len(calls) == 2 and harness.starts == [("retrain", 0), ("baseline", 0), ("baseline_matched", 0)]
    assert {k: v for k, v in stamps(run).items() if k.startswith("search")} == search   # search not redone
    expected = json.loads((finished[0] / "cluster" / "metrics.json").read_text())
    got = json.loads((run / "cluster" / "metrics.json").read_text())
    assert got["dims"] == expected["dims"] and got["group_sizes"] == expected["group_sizes"]  # deterministic


@pytest.mark.parametrize("stage", ["retrain", "baseline"])
def test_resume_after_a_kill_in_training(stage, finished, run_cache, tmp_path, monkeypatch) -> None:
    run = copy_until(finished[0], tmp_path, stage)
    kept = stamps(run)
    harness = Harness(monkeypatch)
    harness.crash(stage, 7, checkpoint_first=True)                 # mid-epoch: the stage has one epoch
    with pytest.raises(Crash):
        main(tiny_run(run, run_cache))
    last = run / stage / "checkpoints" / "last.ckpt"
    assert global_step(last) == 7 and not (run / stage / "metrics.json").exists()
    harness.starts.clear()
    assert main(tiny_run(run, run_cache)) == 0
    redone = STAGES[STAGES.index(stage):]
    assert harness.starts == [(stage, 7), *((s, 0) for s in redone[1:])]      # resumed, not restarted
    assert global_step(last) == STEPS_PER_EPOCH
    assert {k: v for k, v in stamps(run).items() if k.split("/")[0] not in redone} == kept
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.3 < metrics["ihas"]["test_auc"] < 0.8 and 0.3 < metrics["baseline"]["test_auc"] < 0.8

"""Fixtures of the pipeline tests (test_pipeline.py, test_pipeline_resume.py): one encoded-data cache and one finished
tiny ``ihas run`` per test module (see ``_pipeline_run``)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

import ihas_lightning.training as training
from ihas_lightning.cli import main

from _pipeline_run import TRAIN_START_EVAL_MODULES, EvalModeRecorder, tiny_run


@pytest.fixture(scope="module")
def run_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def finished(tmp_path_factory, run_cache) -> tuple[Path, float]:
    """One complete tiny run (shared by the tests that only read it or copy it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    original = training.make_trainer

    def make_trainer(config, stage_dir, callbacks=(), **kwargs):
        recorder = EvalModeRecorder(TRAIN_START_EVAL_MODULES, Path(stage_dir).name)
        return original(config, stage_dir, [*callbacks, recorder], **kwargs)

    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "make_trainer", make_trainer)
        assert main(tiny_run(run, run_cache)) == 0
    return run, time.perf_counter() - start

"""``stage_losses``: validation AUC step by step from the gated search to the retrained model, on a tiny run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from ihas_lightning.cli import main
from ihas_lightning.clustering import ClusterResult
from ihas_lightning.modules.retrain_module import prefix_masks
from ihas_lightning.pipeline import LOSS_STEPS, RunDirectory, load_searched_module, searched_masks
from ihas_lightning.training import datamodule_from_config


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDirectory:
    out, cache = tmp_path_factory.mktemp("run") / "run", tmp_path_factory.mktemp("cache")
    torch.set_num_threads(1)
    assert main(["run", "--rows", "3000", "--epochs", "2", "--warmup-epochs", "1", "--retrain-epochs", "1",
                 "--baseline-epochs", "1", "--dnn", "16", "--dim", "8", "--batch-size", "256", "--quiet",
                 "--candidate-dims", "0,2,4,8", "--cache-dir", str(cache), "--no-matched-baseline",
                 "--out", str(out)]) == 0
    return RunDirectory(out)


def test_every_step_is_reported_in_pipeline_order(run: RunDirectory) -> None:
    steps = run.metrics("losses")["steps"]
    assert [s["step"] for s in steps] == list(LOSS_STEPS)
    assert all(0.0 <= s["val_auc"] <= 1.0 for s in steps)
    for before, after in zip(steps, steps[1:]):
        assert after["change"] == pytest.approx(after["val_auc"] - before["val_auc"])
    assert steps[-1]["val_auc"] == run.metrics("retrain")["val_auc"]
    summary = {s["step"]: s["val_auc"] for s in json.loads((run.root / "metrics.json").read_text())["losses"]}
    assert summary == {s["step"]: s["val_auc"] for s in steps}


def test_the_gated_step_is_what_the_search_validated(run: RunDirectory) -> None:
    gated = run.metrics("losses")["steps"][0]
    assert gated["val_auc"] == pytest.approx(run.metrics("search")["val_auc"], abs=1e-6)


def test_the_budget_fit_step_runs_each_group_at_its_prefix_dims(run: RunDirectory) -> None:
    """Recomputed by hand: every validation row keeps the first d[c, f] columns of its group c."""
    config = run.load_config()
    dm = datamodule_from_config(config.data, 1)
    search = load_searched_module(run)
    clusters = ClusterResult.load(run.stage("cluster") / "clusters.json")
    masks = prefix_masks(clusters.dims, search.hparams.dim)
    total, rows = 0.0, 0
    with torch.no_grad():
        for batch in dm.stream("val", shuffle=False):
            groups = clusters.predict(searched_masks(search, batch).flatten(1))
            embeddings = search.backbone.field_embeddings(batch)
            search.backbone.embedding_transform = lambda e, m=masks[groups]: e * m
            total += float(F.binary_cross_entropy_with_logits(search.backbone(batch), batch["label"],
                                                              reduction="sum"))
            rows += len(groups)
            assert embeddings.shape[1:] == masks.shape[1:]
    step = {s["step"]: s for s in run.metrics("losses")["steps"]}["budget_fit"]
    assert step["val_logloss"] == pytest.approx(total / rows, rel=1e-5)

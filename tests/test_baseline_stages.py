"""The equal-footprint stages of ``ihas run`` on a tiny synthetic run: ``baseline_matched`` (d or d+1 at iHAS's
footprint), ``baseline_mde`` (alpha kept by validation AUC, every candidate recorded) and ``fieldwise`` (the
search clustered with K = 1, no router), and their flags."""

from __future__ import annotations

import json

import pytest
import torch

from ihas_lightning.cli import build_parser, main
from ihas_lightning.cli.common import run_config_from_args
from ihas_lightning.footprint_dims import footprint_gap, table_params
from ihas_lightning.model import IHASModel
from ihas_lightning.pipeline import MDE_ALPHAS, RunDirectory
from ihas_lightning.training import datamodule_from_config

# --budget 0.3 keeps iHAS's footprint (tables + router) below uniform-8's tables, so the mixed-dimension
# candidates differ instead of all sitting at --dim.
TINY = ["--data", "synthetic", "--rows", "2000", "--epochs", "1", "--warmup-epochs", "0", "--retrain-epochs", "1",
        "--baseline-epochs", "1", "--dnn", "16", "--dim", "8", "--k", "2", "--budget", "0.3", "--min-dim", "1",
        "--seed", "1", "--quiet"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunDirectory:
    root = tmp_path_factory.mktemp("baselines")
    assert main(["run", *TINY, "--cache-dir", str(root / "cache"), "--out", str(root / "run"), "--mde-baseline",
                 "--fieldwise"]) == 0
    return RunDirectory(root / "run")


def _vocab(run: RunDirectory) -> dict[str, int]:
    """The run's vocabulary sizes (its split, from the encoded-data cache)."""
    config = run.load_config()
    return datamodule_from_config(config.data, config.trainer.threads).vocab_sizes


def test_the_flags_reach_the_run_config() -> None:
    parser = build_parser()
    default = run_config_from_args(parser.parse_args(["run"]))
    assert (default.mde_baseline, default.fieldwise, default.matched_baseline) == (False, True, True)
    both = run_config_from_args(parser.parse_args(["run", "--mde-baseline", "--no-fieldwise"]))
    assert both.mde_baseline and not both.fieldwise


def test_matched_baseline_meets_ihas_footprint(run: RunDirectory) -> None:
    ihas, matched = run.metrics("retrain"), run.metrics("baseline_matched")
    assert matched["target_footprint"] == ihas["footprint_params"] == ihas["embedding_params"] + ihas["router_params"]
    widths = set(matched["dims"].values())
    assert len(widths) <= 2 and max(widths) - min(widths) <= 1
    assert matched["router_params"] == 0 and matched["footprint_params"] == matched["embedding_params"]
    assert matched["footprint_gap"] == footprint_gap(matched["embedding_params"], matched["target_footprint"])
    assert abs(matched["footprint_gap"]) <= 0.01
    assert matched["embedding_params"] == table_params(matched["dims"], _vocab(run))


def test_mde_keeps_the_candidate_with_the_best_validation_auc(run: RunDirectory) -> None:
    mde = run.metrics("baseline_mde")
    candidates = mde["candidates"]
    assert [c["alpha"] for c in candidates] == list(MDE_ALPHAS)
    assert len({c["trained_in"] for c in candidates}) >= 3          # a real choice between trained models
    for c in candidates:                        # each figure is its own training's
        trained = run.metrics(c["trained_in"])
        assert c["val_auc"] == trained["val_auc"] and c["dims"] == trained["dims"]
        assert 1 <= min(c["dims"].values()) and max(c["dims"].values()) <= 8
    best = max(candidates, key=lambda c: c["val_auc"])
    assert mde["kept_alpha"] == best["alpha"] and mde["val_auc"] == best["val_auc"]
    kept = run.metrics(best["trained_in"])
    assert (mde["test_auc"], mde["embedding_params"], mde["dims"]) == (kept["test_auc"], kept["embedding_params"],
                                                                       best["dims"])
    assert mde["embedding_params"] == table_params(mde["dims"], _vocab(run))
    assert mde["target_footprint"] == run.metrics("retrain")["footprint_params"]
    assert mde["footprint_gap"] == footprint_gap(mde["embedding_params"], mde["target_footprint"])
    # within 1% of the target, unless the target lies beyond every field at --dim (then all fields are at 8)
    assert abs(mde["footprint_gap"]) <= 0.01 or set(mde["dims"].values()) == {8}
    # alpha 0 is uniform: every field d or d + 1, except that the fit onto the target may move one field a column
    # further (footprint_dims: the target wins over the power law's order); seen on a GPU run's target
    uniform = next(c for c in candidates if c["alpha"] == 0.0)
    assert max(uniform["dims"].values()) - min(uniform["dims"].values()) <= 2


def test_fieldwise_is_one_group_without_a_router(run: RunDirectory) -> None:
    clusters = json.loads((run.stage("fieldwise_cluster") / "metrics.json").read_text())
    assert clusters["k"] == 1 and clusters["budget_fit"] == run.metrics("cluster")["budget_fit"]
    fieldwise = run.metrics("fieldwise")
    assert fieldwise["groups"] == 1 and fieldwise["group_share_test"] == [1.0]
    assert fieldwise["router_params"] == 0 and fieldwise["router_flops_per_sample"] == 0.0
    assert fieldwise["footprint_params"] == fieldwise["embedding_params"]
    assert list(fieldwise["dims"]["0"].values()) == list(clusters["dims"]["0"].values())
    # the tables are stored at the one group's widths
    assert fieldwise["table_widths"] == clusters["dims"]["0"]
    assert run.metrics("retrain")["groups"] == 2                       # the run's own groups are untouched
    # its tables are fitted to iHAS's footprint (tables + router): that share is its budget, and it stays within
    ihas = run.metrics("retrain")
    vocab = _vocab(run)
    uniform = sum(vocab.values()) * 8
    assert clusters["budget"] == pytest.approx(ihas["footprint_params"] / uniform)
    assert fieldwise["footprint_params"] <= ihas["footprint_params"]


def test_collected_metrics_list_the_new_stages(run: RunDirectory) -> None:
    metrics = json.loads((run.root / "metrics.json").read_text())
    assert metrics["baseline_mde"]["kept_alpha"] == run.metrics("baseline_mde")["kept_alpha"]
    assert metrics["baseline_mde"]["candidates"] == run.metrics("baseline_mde")["candidates"]
    assert metrics["fieldwise"]["router_params"] == 0 and metrics["fieldwise"]["groups"] == 1
    assert metrics["baseline_matched"]["dims"] == run.metrics("baseline_matched")["dims"]
    for name in ("baseline_mde", "fieldwise"):
        assert metrics["seconds"][name] > 0
    assert metrics["baseline"]["embedding_params"] == 8 * sum(_vocab(run).values())


def test_a_one_group_model_routes_without_its_router(run: RunDirectory) -> None:
    model = IHASModel.load(run.stage("fieldwise") / "ihas_model.pt")
    module = model.module
    assert module.num_groups == 1 and module.router_params == 0 and module.router_flops_per_sample == 0.0
    assert module.router.num_params > 0                      # stored for the checkpoint format, never run
    config = run.load_config()
    batch = next(iter(datamodule_from_config(config.data, config.trainer.threads).val_dataloader()))
    calls = []
    module.router.register_forward_hook(lambda *args: calls.append(1))
    with torch.no_grad():
        groups = module.route(module.backbone.field_embeddings(batch))
        model(batch)
    assert groups.tolist() == [0] * len(batch["label"]) and calls == []

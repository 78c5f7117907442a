"""``ihas run`` end to end on tiny synthetic data (``_pipeline_run``): the run directory's files and the report, every
stage training in train mode, the budget fit, no redone stages, and later commands on a finished run (retraining
on another backbone or from a supernet, an older run.json). Killed and resumed stages: test_pipeline_resume.py.
"""

from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

import ihas_lightning.pipeline as pipeline
import ihas_lightning.pipeline.cluster as cluster_stage
import ihas_lightning.training as training
from ihas_lightning.cli import main
from ihas_lightning.clustering import ClusterResult
from ihas_lightning.model import IHASModel

from _pipeline_run import BATCH, FIELDS, ROWS, TRAIN_START_EVAL_MODULES, Harness, copy_until, stamps, tiny_run


def test_run_writes_metrics_and_report(finished) -> None:
    run, _ = finished
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"dataset", "backbone", "baseline", "ihas", "search", "seconds"} <= metrics.keys()
    assert metrics["dataset"] == "synthetic" and metrics["backbone"] == "DeepFM"
    uniform = {"test_auc", "test_logloss", "embedding_params", "flops_per_sample"}
    assert uniform <= metrics["baseline"].keys()
    assert uniform | {"groups", "group_sizes", "dims"} <= metrics["ihas"].keys()
    assert {"val_auc", "mean_active_dims", "distinct_masks"} <= metrics["search"].keys()
    assert {"search", "cluster", "retrain", "baseline"} <= metrics["seconds"].keys()
    assert all(metrics["seconds"][s] > 0 for s in ("search", "cluster", "retrain", "baseline"))

    baseline, ihas = metrics["baseline"], metrics["ihas"]
    assert baseline["embedding_params"] == 8 * (1002 + 502 + 202 + 102 + 52 + 22 + 12 + 7) == 15208
    assert ihas["groups"] == 4 and len(ihas["group_sizes"]) == 4 and sum(ihas["group_sizes"]) == 3200
    assert sorted(ihas["dims"]) == ["0", "1", "2", "3"]
    for group in ihas["dims"].values():
        assert list(group) == FIELDS and set(group.values()) <= {2, 4, 8}     # --min-dim 2: no field dropped
    vocab = [1002, 502, 202, 102, 52, 22, 12, 7]
    widths = [max(ihas["dims"][g][f] for g in ihas["dims"]) for f in FIELDS]
    assert ihas["embedding_params"] == sum(v * w for v, w in zip(vocab, widths))   # shared tables, stored once
    assert ihas["embedding_params"] <= 0.5 * baseline["embedding_params"]         # --budget 0.5 (default)
    for entry in (baseline, ihas):
        assert 0.3 < entry["test_auc"] < 0.8 and 0.2 < entry["test_logloss"] < 1.0
        assert entry["flops_per_sample"] > 0
    matched = metrics["baseline_matched"]                      # every field d or d+1, at iHAS's footprint
    assert max(matched["dims"].values()) - min(matched["dims"].values()) <= 1
    assert matched["embedding_params"] == sum(v * matched["dims"][f] for v, f in zip(vocab, FIELDS))
    assert matched["target_footprint"] == ihas["footprint_params"] and abs(matched["footprint_gap"]) <= 0.01
    assert metrics["search"]["distinct_masks"] >= 1
    assert 2 <= metrics["search"]["mean_active_dims"]["overall"] <= 8
    model = IHASModel.load(run / "retrain" / "ihas_model.pt")
    assert model.embedding_params == ihas["embedding_params"]
    assert model.flops_per_sample == pytest.approx(ihas["flops_per_sample"])      # the router included
    routed = ihas["flops_per_sample"] - model.router_flops_per_sample
    assert 0 < routed < baseline["flops_per_sample"]                              # narrower inputs to the DNN
    # the retraining says which weights it tested: its starting point, or the epoch that beat it
    retrain = json.loads((run / "retrain" / "metrics.json").read_text())
    best = torch.load(run / "retrain" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert retrain["kept"] == ("start" if best["global_step"] == 0 else f"epoch {best['epoch']}")
    assert best["global_step"] == 0 or best["epoch"] == 0                          # --retrain-epochs 1

    assert main(["report", "--run", str(run)]) == 0
    report = (run / "report.md").read_text()
    for png in ("auc_vs_params.png", "dims_heatmap.png", "group_sizes.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({png})" in report
    assert f"{ihas['test_auc']:.4f}" in report and f"{ihas['embedding_params']:,}" in report
    # the whole served model (tables + router) and which model the run keeps on validation
    row = next(line for line in report.splitlines() if line.startswith("| iHAS, 4 groups |"))
    assert row.split(" | ")[5:7] == [f"{ihas['router_params']:,}", f"{ihas['footprint_params']:,}"]
    assert ihas["router_params"] > 0 and ihas["footprint_params"] == ihas["embedding_params"] + ihas["router_params"]
    assert "kept: " in report and metrics["selection"]["kept"] in {"ihas", "baseline_matched"}


@torch.no_grad()
def test_every_stage_trains_in_train_mode(finished) -> None:
    # The retraining used to start in the eval mode the linear router's fit left it in: dropout off and batch-norm
    # statistics frozen for all of it (Lightning only warned).
    assert set(TRAIN_START_EVAL_MODULES) == {"search", "retrain", "baseline", "baseline_matched"}
    assert TRAIN_START_EVAL_MODULES == {stage: [] for stage in TRAIN_START_EVAL_MODULES}


def test_the_budget_fit_scores_dimensions_by_validation_logloss(finished) -> None:
    """``--budget-fit loss`` scores candidate dimensions by the searched model's validation logloss, each row
    cut to its group's first columns; checked against zeroing embeddings by hand. ``auto`` (the default)
    keeps the fit whose narrowed searched model has the higher validation AUC."""
    run = pipeline.RunDirectory(finished[0])
    cluster = run.metrics("cluster")
    assert cluster["budget_fit_asked"] == "auto"
    candidates = {c["fit"]: c for c in cluster["budget_fit_candidates"]}
    assert set(candidates) == {"loss", "gates"}
    assert cluster["budget_fit"] == max(candidates, key=lambda fit: (candidates[fit]["val_auc"], fit == "loss"))
    assert candidates[cluster["budget_fit"]]["dims"] == [list(row.values()) for row in cluster["dims"].values()]
    dm = training.datamodule_from_config(run.load_config().data)
    search = pipeline.load_searched_module(run)
    clusters = ClusterResult.load(run.stage("cluster") / "clusters.json")
    logloss = cluster_stage.PrefixScorer(search, dm, clusters).logloss

    def by_hand(group: int | None = None, field: int = 0) -> float:
        """Validation logloss without gates; ``group``'s rows (as the clustering routes them) lose ``field``."""
        total, rows = 0.0, 0
        for batch in dm.stream("val", shuffle=False):
            routes = clusters.predict(search.gates.deterministic_mask(search.backbone.field_embeddings(batch))
                                      .flatten(1))
            keep = torch.ones(len(routes), len(FIELDS), 1)
            if group is not None:
                keep[routes == group, field] = 0.0
            search.backbone.embedding_transform = lambda e, keep=keep: e * keep
            logits = search.backbone(batch)
            total += float(torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"],
                                                                                 reduction="sum"))
            rows += len(routes)
        search.backbone.embedding_transform = search._gate_embeddings
        return total / rows

    full = torch.full_like(clusters.dims, 8)                      # --dim 8: every column of every field
    assert logloss(full) == pytest.approx(by_hand(), rel=1e-5)
    busiest = int(clusters.group_sizes.argmax())
    cut = full.clone()
    cut[busiest, 0] = 0                                           # field C1 dropped for one group's rows
    assert logloss(cut) == pytest.approx(by_hand(busiest, 0), rel=1e-5)
    assert logloss(cut) != pytest.approx(logloss(full), rel=1e-6)
    assert search.backbone.embedding_transform == search._gate_embeddings   # the gates are back in place


def test_an_unknown_budget_fit_is_refused_before_any_work(finished, tmp_path, capsys) -> None:
    run = copy_until(finished[0], tmp_path, "cluster")
    options = json.loads((run / "run.json").read_text())
    options["cluster"]["budget_fit"] = "entropy"
    (run / "run.json").write_text(json.dumps(options))
    assert main(["cluster", "--run", str(run)]) == 2
    assert f"budget_fit must be one of auto, loss, gates, got 'entropy' (run.json of {run})" in capsys.readouterr().err
    assert not (run / "cluster").exists()


def test_a_finished_run_is_not_redone(finished, run_cache, tmp_path, monkeypatch) -> None:
    source, first_seconds = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    harness = Harness(monkeypatch)
    before, metrics = stamps(run), json.loads((run / "metrics.json").read_text())
    start = time.perf_counter()
    assert main(tiny_run(run, run_cache)) == 0
    seconds = time.perf_counter() - start
    assert harness.starts == []                                   # no stage built a Trainer
    assert stamps(run) == before and len(before) == 15    # 5 stages: metrics, checkpoints (search: best, last), model
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert seconds < 0.3 * first_seconds, (seconds, first_seconds)


def test_retrain_on_another_backbone(finished, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    before = stamps(run)
    assert main(["retrain", "--run", str(run), "--backbone", "DCN"]) == 0
    assert stamps(run) == before                                  # the DeepFM stages are untouched
    dcn = json.loads((run / "retrain_DCN" / "metrics.json").read_text())
    deepfm = json.loads((run / "retrain" / "metrics.json").read_text())
    assert dcn["backbone"] == "DCN" and dcn["dims"] == deepfm["dims"] and dcn["groups"] == deepfm["groups"]
    assert dcn["embedding_params"] == deepfm["embedding_params"]     # same groups, same table widths
    assert dcn["flops_per_sample"] != deepfm["flops_per_sample"]
    assert 0.3 < dcn["test_auc"] < 0.8
    model = IHASModel.load(run / "retrain_DCN" / "ihas_model.pt")
    assert model.module.hparams.backbone == "DCN"
    assert type(model.module.backbone.model).__name__ == "DCN"
    assert (run / "retrain_DCN" / "checkpoints" / "last.ckpt").exists()
    assert main(["retrain", "--run", str(tmp_path / "missing")]) == 2             # not a run directory


def test_retraining_from_a_supernet(finished, run_cache, tmp_path, monkeypatch) -> None:
    """``--retrain-init-from``: the retraining starts from the supernet's backbone (its tables cut to their
    widths), the router from the search; the search and clustering stay as they were."""
    from ihas_lightning.modules import RetrainModule

    supernet_dir = tmp_path / "supernet"
    assert main(["supernet", "--rows", str(ROWS), "--epochs", "1", "--dnn", "32,16", "--dim", "8",
                 "--dim-choices", "2,4,8", "--batch-size", str(BATCH), "--quiet", "--cache-dir", str(run_cache),
                 "--seed", "0", "--out", str(supernet_dir)]) == 0
    checkpoint = supernet_dir / "supernet" / "checkpoints" / "last.ckpt"
    supernet = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    run = copy_until(finished[0], tmp_path, "retrain")
    seen = {}
    original = RetrainModule.warm_start

    def warm_start(self, search_state, tables_only=False, backbone_state=None):
        original(self, search_state, tables_only=tables_only, backbone_state=backbone_state)
        seen["state"] = {k: v.clone() for k, v in self.state_dict().items()}

    monkeypatch.setattr(RetrainModule, "warm_start", warm_start)
    before = stamps(run)
    # the gate router: its weights are the search's, whatever starts the tables and dense layers
    assert main(tiny_run(run, run_cache) + ["--retrain-init-from", str(checkpoint), "--router", "gates"]) == 0
    state = seen["state"]
    for key in ("backbone.model.dnn.linears.0.weight", "backbone.model.dnn_linear.weight"):
        assert torch.equal(state[key], supernet[key]), key
    table = "backbone.model.embedding_dict.C1.weight"
    assert torch.equal(state[table], supernet[table][:, :state[table].shape[1]])
    search = torch.load(run / "search" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert torch.equal(state["gates.out.weight"], search["state_dict"]["gates.out.weight"])
    assert all(before[k] == v for k, v in stamps(run).items() if k.startswith(("search/", "cluster/")))
    assert json.loads((run / "run.json").read_text())["retrain"]["init_from"] == str(checkpoint)


def test_a_run_with_an_older_flat_run_json_resumes(finished, tmp_path) -> None:
    """A run directory whose run.json holds the flat options older code wrote (the keys of an `ihas run` made
    before RunConfig) still drives `ihas cluster --run` and `ihas retrain --run`, to the same numbers."""
    run = copy_until(finished[0], tmp_path, "cluster")
    config = json.loads((run / "run.json").read_text())
    model, data, gate = config["model"], config["data"], config["gate"]
    flat = {"command": "run", "data": data["data"], "format": data["format"], "schema": None, "test": None,
            "rows": data["rows"], "min_count": 1, "batch_size": data["batch_size"], "seed": model["seed"],
            "cache_dir": data["cache_dir"], "backbone": model["backbone"], "dim": model["dim"],
            "dnn": ",".join(map(str, model["dnn_hidden_units"])), "lr": model["lr"],
            "epochs": config["trainer"]["epochs"], "accelerator": "auto", "devices": 1, "num_nodes": 1,
            "strategy": "auto", "out": str(run), "quiet": True, "threads": 1, "budget": gate["budget"],
            "sparsity_weight": None, "relaxation": "hard_concrete", "prefix": True, "min_dim": gate["min_dim"],
            "polarization": 0.1, "gate_lr": 0.003, "warmup_epochs": 1, "init_from": None,
            "search_checkpoint": "best", "config": None, "k": 4, "candidate_dims": "0,2,4,8",
            "retrain_epochs": 1, "baseline_epochs": 1, "no_matched_baseline": False,
            "group_dense": False, "retrain_init_from": None, "separate": False,
            # options whose defaults changed since: the flat file names the finished run's values
            "budget_fit": config["cluster"]["budget_fit"], "retrain_lr": config["retrain"]["lr"],
            "router": config["retrain"]["router"]}
    (run / "run.json").write_text(json.dumps(flat))
    assert main(["cluster", "--run", str(run)]) == 0
    assert main(["retrain", "--run", str(run)]) == 0
    for stage, keys in (("cluster", ("dims", "group_sizes")), ("retrain", ("test_auc", "test_logloss", "dims"))):
        expected = json.loads((finished[0] / stage / "metrics.json").read_text())
        got = json.loads((run / stage / "metrics.json").read_text())
        assert {k: got[k] for k in keys} == {k: expected[k] for k in keys}, stage

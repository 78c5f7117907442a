"""``ihas run`` end to end on tiny synthetic data: the run directory's files, the report, no redone stages,
resume after a crash in each stage, and retraining the groups on another backbone.

Tiny settings (3200 training rows, batches of 256: 13 steps per epoch), one torch thread, fixed seeds.
Crashes are simulated by wrapping the Trainer factory the stages use (``make_trainer``): the wrapper adds a
callback that records the step each fit starts from and, in the stage to kill, one that raises after a
chosen step, i.e. the process dies during the next one. The stages checkpoint ``last.ckpt`` at every epoch
end; the retrain and baseline stages here last one epoch, so their killer first writes ``last.ckpt`` itself
(as a ``ModelCheckpoint(every_n_train_steps=...)`` would).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import Callback

import ihas_lightning.pipeline as pipeline
import ihas_lightning.pipeline.cluster as cluster_stage
import ihas_lightning.training as training
from ihas_lightning.cli import main
from ihas_lightning.clustering import ClusterResult
from ihas_lightning.model import IHASModel

ROWS, BATCH = 4000, 256
STEPS_PER_EPOCH = math.ceil(int(ROWS * 0.8) / BATCH)  # 13
STAGES = ("search", "cluster", "retrain", "baseline", "baseline_matched")
FIELDS = [f"C{i}" for i in range(1, 9)]


def _tiny(out: Path, cache: Path) -> list[str]:
    return ["run", "--rows", str(ROWS), "--epochs", "2", "--warmup-epochs", "1", "--retrain-epochs", "1",
            "--baseline-epochs", "1", "--dnn", "32,16", "--dim", "8", "--batch-size", str(BATCH), "--quiet",
            "--cache-dir", str(cache), "--candidate-dims", "0,2,4,8", "--seed", "0", "--no-fieldwise",
            "--out", str(out)]


class Crash(RuntimeError):
    """The simulated kill."""


class _CrashAfter(Callback):
    """Dies after step ``step``; with ``last``, checkpoints there first (a mid-epoch checkpoint)."""

    def __init__(self, step: int, last: Path | None) -> None:
        self.step, self.last = step, last

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            if self.last is not None:
                trainer.save_checkpoint(self.last)
            raise Crash(f"killed after step {self.step}")


class _StartRecorder(Callback):
    def __init__(self, starts: list, stage: str) -> None:
        self.starts, self.stage = starts, stage

    def on_train_start(self, trainer, pl_module) -> None:
        self.starts.append((self.stage, trainer.global_step))


class Harness:
    """Wraps ``make_trainer``: records (stage, start step) of every fit; crashes ``crash_stage`` once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.starts: list[tuple[str, int]] = []
        self.crash_stage: str | None = None
        self.crash_step = 0
        self.crash_saves = False
        original = training.make_trainer

        def make_trainer(config, stage_dir, callbacks=(), **kwargs):
            stage = Path(stage_dir).name
            extra: list[Callback] = [_StartRecorder(self.starts, stage)]
            if stage == self.crash_stage:
                last = Path(stage_dir) / "checkpoints" / "last.ckpt"
                extra.append(_CrashAfter(self.crash_step, last if self.crash_saves else None))
                self.crash_stage = None
            return original(config, stage_dir, [*callbacks, *extra], **kwargs)

        monkeypatch.setattr(training, "make_trainer", make_trainer)

    def crash(self, stage: str, step: int, checkpoint_first: bool = False) -> None:
        self.crash_stage, self.crash_step, self.crash_saves = stage, step, checkpoint_first


def _global_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def _stamps(run: Path) -> dict[str, int]:
    """mtime (ns) of every stage's metrics and checkpoints."""
    files = [p for s in STAGES for p in (run / s).rglob("*") if p.suffix in (".json", ".ckpt", ".pt")]
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in files}


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


class _EvalModeRecorder(Callback):
    """Records, per stage, the modules in eval mode when training starts (Lightning keeps the modes it finds)."""

    def __init__(self, record: dict, stage: str) -> None:
        self.record, self.stage = record, stage

    def on_train_start(self, trainer, pl_module) -> None:
        self.record[self.stage] = [name for name, m in pl_module.named_modules() if not m.training]


TRAIN_START_EVAL_MODULES: dict[str, list[str]] = {}
"""Filled by the ``finished`` run: stage -> the modules in eval mode at the start of its training."""


@pytest.fixture(scope="module")
def finished(tmp_path_factory, cache) -> tuple[Path, float]:
    """One complete tiny run (shared by the tests that only read it or copy it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    original = training.make_trainer

    def make_trainer(config, stage_dir, callbacks=(), **kwargs):
        recorder = _EvalModeRecorder(TRAIN_START_EVAL_MODULES, Path(stage_dir).name)
        return original(config, stage_dir, [*callbacks, recorder], **kwargs)

    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training, "make_trainer", make_trainer)
        assert main(_tiny(run, cache)) == 0
    return run, time.perf_counter() - start


def _copy_until(finished: Path, tmp_path: Path, first_redone: str) -> Path:
    """A copy of the finished run without ``first_redone`` and the stages after it."""
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    for stage in STAGES[STAGES.index(first_redone):]:
        shutil.rmtree(run / stage)
    (run / "metrics.json").unlink()
    return run


# -- end to end -------------------------------------------------------------------------------------------

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
    run = _copy_until(finished[0], tmp_path, "cluster")
    options = json.loads((run / "run.json").read_text())
    options["cluster"]["budget_fit"] = "entropy"
    (run / "run.json").write_text(json.dumps(options))
    assert main(["cluster", "--run", str(run)]) == 2
    assert f"budget_fit must be one of auto, loss, gates, got 'entropy' (run.json of {run})" in capsys.readouterr().err
    assert not (run / "cluster").exists()


def test_a_finished_run_is_not_redone(finished, cache, tmp_path, monkeypatch) -> None:
    source, first_seconds = finished
    run = tmp_path / "run"
    shutil.copytree(source, run)
    harness = Harness(monkeypatch)
    before, metrics = _stamps(run), json.loads((run / "metrics.json").read_text())
    start = time.perf_counter()
    assert main(_tiny(run, cache)) == 0
    seconds = time.perf_counter() - start
    assert harness.starts == []                                   # no stage built a Trainer
    assert _stamps(run) == before and len(before) == 15    # 5 stages: metrics, checkpoints (search: best, last), model
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert seconds < 0.3 * first_seconds, (seconds, first_seconds)


def test_retrain_on_another_backbone(finished, tmp_path) -> None:
    run = tmp_path / "run"
    shutil.copytree(finished[0], run)
    before = _stamps(run)
    assert main(["retrain", "--run", str(run), "--backbone", "DCN"]) == 0
    assert _stamps(run) == before                                  # the DeepFM stages are untouched
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


# -- resume after a kill in each stage ----------------------------------------------------------------------

def test_resume_after_a_kill_in_search(cache, tmp_path, monkeypatch) -> None:
    run = tmp_path / "run"
    harness = Harness(monkeypatch)
    harness.crash("search", STEPS_PER_EPOCH + 5)                   # after step 18, in the gated epoch
    with pytest.raises(Crash):
        main(_tiny(run, cache))
    last = run / "search" / "checkpoints" / "last.ckpt"
    assert _global_step(last) == STEPS_PER_EPOCH                   # the stage's own end-of-epoch checkpoint
    assert not (run / "search" / "metrics.json").exists() and not (run / "cluster").exists()
    harness.starts.clear()
    assert main(_tiny(run, cache)) == 0
    assert harness.starts == [("search", 13), ("retrain", 0), ("baseline", 0), ("baseline_matched", 0)]
    assert _global_step(last) == 2 * STEPS_PER_EPOCH == 26
    best = torch.load(run / "search" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert best["epoch"] == 1                                      # the one gated epoch, written after the resume
    assert json.loads((run / "search" / "metrics.json").read_text())["checkpoint"] == "best.ckpt"
    assert (run / "metrics.json").exists()


def test_resume_after_a_kill_in_cluster(finished, cache, tmp_path, monkeypatch) -> None:
    run = _copy_until(finished[0], tmp_path, "cluster")
    search = _stamps(run)
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
        main(_tiny(run, cache))
    assert not (run / "cluster" / "metrics.json").exists()
    assert main(["cluster", "--run", str(run)]) == 0                   # `ihas cluster --run` finishes the stage
    assert main(_tiny(run, cache)) == 0
    assert len(calls) == 2 and harness.starts == [("retrain", 0), ("baseline", 0), ("baseline_matched", 0)]
    assert {k: v for k, v in _stamps(run).items() if k.startswith("search")} == search   # search not redone
    expected = json.loads((finished[0] / "cluster" / "metrics.json").read_text())
    got = json.loads((run / "cluster" / "metrics.json").read_text())
    assert got["dims"] == expected["dims"] and got["group_sizes"] == expected["group_sizes"]  # deterministic


@pytest.mark.parametrize("stage", ["retrain", "baseline"])
def test_resume_after_a_kill_in_training(stage, finished, cache, tmp_path, monkeypatch) -> None:
    run = _copy_until(finished[0], tmp_path, stage)
    kept = _stamps(run)
    harness = Harness(monkeypatch)
    harness.crash(stage, 7, checkpoint_first=True)                 # mid-epoch: the stage has one epoch
    with pytest.raises(Crash):
        main(_tiny(run, cache))
    last = run / stage / "checkpoints" / "last.ckpt"
    assert _global_step(last) == 7 and not (run / stage / "metrics.json").exists()
    harness.starts.clear()
    assert main(_tiny(run, cache)) == 0
    redone = STAGES[STAGES.index(stage):]
    assert harness.starts == [(stage, 7), *((s, 0) for s in redone[1:])]      # resumed, not restarted
    assert _global_step(last) == STEPS_PER_EPOCH
    assert {k: v for k, v in _stamps(run).items() if k.split("/")[0] not in redone} == kept
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.3 < metrics["ihas"]["test_auc"] < 0.8 and 0.3 < metrics["baseline"]["test_auc"] < 0.8


def test_retraining_from_a_supernet(finished, cache, tmp_path, monkeypatch) -> None:
    """``--retrain-init-from``: the retraining starts from the supernet's backbone (its tables cut to their
    widths), the router from the search; the search and clustering stay as they were."""
    from ihas_lightning.modules import RetrainModule

    supernet_dir = tmp_path / "supernet"
    assert main(["supernet", "--rows", str(ROWS), "--epochs", "1", "--dnn", "32,16", "--dim", "8",
                 "--dim-choices", "2,4,8", "--batch-size", str(BATCH), "--quiet", "--cache-dir", str(cache),
                 "--seed", "0", "--out", str(supernet_dir)]) == 0
    checkpoint = supernet_dir / "supernet" / "checkpoints" / "last.ckpt"
    supernet = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    run = _copy_until(finished[0], tmp_path, "retrain")
    seen = {}
    original = RetrainModule.warm_start

    def warm_start(self, search_state, tables_only=False, backbone_state=None):
        original(self, search_state, tables_only=tables_only, backbone_state=backbone_state)
        seen["state"] = {k: v.clone() for k, v in self.state_dict().items()}

    monkeypatch.setattr(RetrainModule, "warm_start", warm_start)
    stamps = _stamps(run)
    # the gate router: its weights are the search's, whatever starts the tables and dense layers
    assert main(_tiny(run, cache) + ["--retrain-init-from", str(checkpoint), "--router", "gates"]) == 0
    state = seen["state"]
    for key in ("backbone.model.dnn.linears.0.weight", "backbone.model.dnn_linear.weight"):
        assert torch.equal(state[key], supernet[key]), key
    table = "backbone.model.embedding_dict.C1.weight"
    assert torch.equal(state[table], supernet[table][:, :state[table].shape[1]])
    search = torch.load(run / "search" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=False)
    assert torch.equal(state["gates.out.weight"], search["state_dict"]["gates.out.weight"])
    assert all(stamps[k] == v for k, v in _stamps(run).items() if k.startswith(("search/", "cluster/")))
    assert json.loads((run / "run.json").read_text())["retrain"]["init_from"] == str(checkpoint)


def test_a_run_with_an_older_flat_run_json_resumes(finished, tmp_path) -> None:
    """A run directory whose run.json holds the flat options older code wrote (the keys of an `ihas run` made
    before RunConfig) still drives `ihas cluster --run` and `ihas retrain --run`, to the same numbers."""
    run = _copy_until(finished[0], tmp_path, "cluster")
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

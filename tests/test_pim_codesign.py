"""The co-design study's rules: host caches in the cost model, the table-size sweep and its host/PIM crossover,
points chosen on validation only, PIM-using front points counted, the baseline trained on its own, a
sub-architecture retrained on its own, candidates costed at other vocabulary sizes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from torchmetrics.functional.classification import binary_auroc

from ihas_lightning.cli import main
from ihas_lightning.modules import REFIT_ROWS
from ihas_lightning.modules.rowwise import RowwiseAdam
from ihas_lightning.pim import ModelSpec, PIMConfig, cache_hit_rate, estimate, zipf_hot_share
from ihas_lightning.pim.pareto import TORS_LIMITS, beats_host, choose_point, front_summary, host_only
from ihas_lightning.pim.search_space import Candidate, model_spec
from ihas_lightning.pim.standalone import train_standalone
from ihas_lightning.pim.study import (PIMObjective, StudySettings, build_objective, candidate_of, quantized_tables,
                                     run_study)
from ihas_lightning.pim.sweep import crossover, pim_configs, scaled, table_size_sweep
from ihas_lightning.subarchitecture import SubArchitecture

optuna.logging.set_verbosity(optuna.logging.WARNING)


# ------------------------------------------------------------------------------------------- host cache --

def test_cache_hit_rate_by_hand():
    assert cache_hit_rate(0.3, 1000) == pytest.approx(0.3)                  # uniform: the cached share
    assert cache_hit_rate(1.7, 1000, 0.5) == 1.0
    # top 1% = 10 rows take half the lookups
    assert cache_hit_rate(0.005, 1000, 0.5) == pytest.approx(0.25)         # half the hot rows
    assert cache_hit_rate(0.01, 1000, 0.5) == pytest.approx(0.5)           # all of them
    assert cache_hit_rate(0.505, 1000, 0.5) == pytest.approx(0.5 + 0.5 * 0.495 / 0.99)


def test_host_lookups_miss_the_cache_only_as_tables_outgrow_it():
    spec = ModelSpec((16,), (4000,), dnn_hidden=(), interaction="none")    # one 64 B line per row
    fits = estimate(spec, PIMConfig.baseline(host_cache_bytes=4000 * 64))
    assert (fits.bytes_breakdown["host_gather"], fits.bytes_breakdown["host_cache"]) == (0.0, 64.0)
    quarter = estimate(spec, PIMConfig.baseline(host_cache_bytes=1000 * 64))   # a quarter of the rows
    assert quarter.bytes_breakdown["host_gather"] == pytest.approx(48.0)
    assert quarter.bytes_breakdown["host_cache"] == pytest.approx(16.0)
    dram = estimate(spec, PIMConfig.baseline(host_cache_bytes=0))
    assert fits.latency_s_per_batch < quarter.latency_s_per_batch < dram.latency_s_per_batch
    assert fits.energy_j_per_sample < quarter.energy_j_per_sample < dram.energy_j_per_sample
    # skewed access: 10% of the rows cached (hottest first) serve more than 10% of the lookups
    hot = ModelSpec((16,), (4000,), hot_share=(0.6,), dnn_hidden=(), interaction="none")
    skewed = estimate(hot, PIMConfig.baseline(host_cache_bytes=400 * 64))
    assert skewed.bytes_breakdown["host_cache"] / 64 == pytest.approx(cache_hit_rate(0.1, 4000, 0.6))
    assert skewed.bytes_breakdown["host_cache"] / 64 > 0.5


def test_zipf_hot_share_against_the_sum():
    for vocab, s in ((100, 1.1), (50_000, 1.1), (30_000, 0.8), (20_000, 1.0)):
        weights = np.arange(1, vocab + 1, dtype=np.float64) ** -s
        top = math.ceil(0.01 * vocab)
        assert zipf_hot_share(vocab, s) == pytest.approx(weights[:top].sum() / weights.sum(), rel=1e-7)
    assert zipf_hot_share(10_000_000, 1.1) > zipf_hot_share(10_000, 1.1) > 0.5
    with pytest.raises(ValueError, match="exponent"):
        zipf_hot_share(10, 0.0)


# ------------------------------------------------------------------------------------ table-size sweep --

MULTI_HOT = ModelSpec((16,) * 4, (1_000_000,) * 4, lookups_per_sample=(40.0,) * 4, dnn_hidden=(),
                      interaction="none")
FACTORS = (1e-3, 1e-2, 0.1, 1.0)


def _configs(cache):
    return pim_configs(devices=("recnmp",), unit_shares=(1.0,), top_ks=(), in_memory=("pooling",),
                       batch_sizes=(1024,), host_cache_bytes=cache)


def test_sweep_finds_the_crossover_where_tables_outgrow_the_cache():
    rows = table_size_sweep(MULTI_HOT, _configs(None), FACTORS)
    assert [r["rows"] for r in rows] == [4000, 40_000, 400_000, 4_000_000]
    assert [r["table_bytes"] for r in rows] == [256e3, 256e4, 256e5, 256e6]
    # up to 25.6 MB every row sits in the 60 MiB LLC; at 256 MB the cache holds 60 MiB / 256 MB of it
    assert [r["host_cache_hit_rate"] for r in rows[:3]] == [1.0, 1.0, 1.0]
    assert rows[3]["host_cache_hit_rate"] == pytest.approx(60 * 2**20 / 256e6)
    assert all(r["latency"]["latency_ratio"] > 1 for r in rows[:3]) and rows[3]["latency"]["latency_ratio"] < 1
    cross = crossover(rows, "latency_ratio")
    assert cross["host_until"]["table_bytes"] == 256e5 and cross["pim_from"]["table_bytes"] == 256e6
    assert cross["pim_from"]["config"].startswith("recnmp x64 all_pim fp32 row")
    # without a host cache the same PIM configuration wins at every size: the cache is what moves the crossover
    flat = table_size_sweep(MULTI_HOT, _configs(0), FACTORS)
    assert crossover(flat, "latency_ratio")["host_until"] is None
    assert crossover(flat, "latency_ratio")["pim_from"]["factor"] == 1e-3
    # one-hot lookups: the per-batch offload costs more than the gathers it saves, at every size
    one_hot = table_size_sweep(ModelSpec((16,) * 4, (1_000_000,) * 4, dnn_hidden=(), interaction="none"),
                               _configs(None), FACTORS)
    assert crossover(one_hot, "energy_ratio")["pim_from"] is None


def test_scaled_and_configs():
    spec = scaled(MULTI_HOT, 1e-7, zipf=1.1)
    assert spec.vocab_sizes == (1, 1, 1, 1) and spec.hot_share == (1.0,) * 4
    assert scaled(MULTI_HOT, 0.5).hot_share is None and scaled(MULTI_HOT, 0.5).vocab_sizes == (500_000,) * 4
    configs = pim_configs(devices=("upmem",), unit_shares=(0.5,), top_ks=(2,), partitionings=("row",),
                          in_memory=("none",), batch_sizes=(64,))
    assert [(c.table_placement, c.pim_top_k, c.num_units) for c in configs] == [("all_pim", 0, 1280),
                                                                                ("top_k", 2, 1280)]
    with pytest.raises(ValueError, match="empty"):
        table_size_sweep(MULTI_HOT, [], FACTORS)


# -------------------------------------------------------------------------------- choosing on validation --

def _point(number, auc, latency, energy, flops, tables, test_auc, host=(1.0, 1.0)):
    return {"number": number, "auc": auc, "latency_ratio": latency, "energy_ratio": energy, "flops_ratio": flops,
            "pim_tables": tables, "test_auc": test_auc,
            "host_only": {"latency_ratio": host[0], "energy_ratio": host[1]}}


def test_choose_point_reads_validation_only():
    points = [_point(0, 0.80, 0.9, 0.9, 0.9, 0, 0.70, (0.9, 0.9)),     # best AUC, over the limits
              _point(1, 0.78, 0.5, 0.5, 0.4, 0, 0.75, (0.5, 0.5)),     # within, host-only
              _point(2, 0.77, 0.4, 0.4, 0.3, 3, 0.90, (0.45, 0.4)),    # within, PIM pays (latency); best test AUC
              _point(3, 0.78, 0.6, 0.5, 0.4, 2, 0.60, (0.5, 0.5)),     # ties point 1 on AUC, slower; PIM costs more
              _point(4, 0.785, 0.3, 0.3, 0.3, 1, 0.50, (0.2, 0.2))]    # within, PIM costs more than host-only
    assert choose_point(points, TORS_LIMITS)["number"] == 4
    assert choose_point(points, TORS_LIMITS, require_pim=True)["number"] == 2
    assert choose_point(points)["number"] == 0
    assert choose_point(points, {"latency_ratio": 0.1}) is None
    assert [beats_host(p) for p in points] == [False, False, True, False, False]
    summary = front_summary(points)
    assert summary["all"]["points"] == 5 and summary["pim"]["points"] == 3
    assert summary["pim"]["lowest"] == {"latency_ratio": 0.3, "energy_ratio": 0.3, "flops_ratio": 0.3}
    assert summary["all"]["within_limits"] == 4 and summary["pim"]["within_limits"] == 3
    assert (summary["pim_beats_host"], summary["verdict"]) == (1, "PIM")
    assert front_summary([p for p in points if p["number"] != 2])["verdict"] == "host only"


# ------------------------------------------------------------------------------- study on a tiny supernet --

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny trained supernet: synthetic 3000 rows, dim 8, DNN 16-8, one epoch."""
    root = tmp_path_factory.mktemp("codesign")
    torch.set_num_threads(1)
    assert main(["supernet", "--rows", "3000", "--dim", "8", "--dnn", "16,8", "--dim-choices", "2,4,8",
                 "--epochs", "1", "--batch-size", "256", "--out", str(root / "run"), "--quiet",
                 "--cache-dir", str(root / "cache")]) == 0
    return root / "run"


def test_cli_trains_the_baseline_and_reports_points_chosen_on_validation(run_dir):
    assert main(["pim", "--run", str(run_dir), "--trials", "12", "--seed", "2", "--baseline-epochs", "1",
                 "--study-name", "rules"]) == 0
    report = json.loads((run_dir / "pim" / "pareto.json").read_text())
    baseline = json.loads((run_dir / "pim_baseline" / "metrics.json").read_text())
    assert report["baseline_trained_auc"] == baseline["val_auc"]
    assert report["baseline_trained_test_auc"] == baseline["test_auc"]
    assert baseline["dim"] == 8 and baseline["dnn"] == [16, 8] and baseline["epochs"] == 1
    objective = build_objective(StudySettings(run_dir=str(run_dir)))
    for point in report["points"]:                         # tables in PIM, counted again from the configuration
        candidate = candidate_of(objective.space, point["params"])
        placement = candidate.config.placement_for(model_spec(objective.space, candidate.subarch))
        assert point["pim_tables"] == sum(p == "pim" for p in placement)
        assert point["host_only"] == pytest.approx(host_only(objective.space, candidate))
        assert point["pim_beats_host"] == beats_host(point)
    assert report["front_pim_points"] == sum(p["pim_tables"] > 0 for p in report["points"])
    assert report["front"]["pim_beats_host"] == sum(p["pim_beats_host"] for p in report["points"])
    assert report["front_size"] == len(report["points"])
    selection = report["selection"]
    assert selection["limits"] == pytest.approx(TORS_LIMITS)
    assert selection["chosen"] == choose_point(report["points"], TORS_LIMITS)
    assert selection["chosen_pim"] == choose_point(report["points"], TORS_LIMITS, require_pim=True)
    assert "baseline trained on its own" in (run_dir / "pim" / "pareto.md").read_text()


def test_validation_aucs_are_computed_once_per_candidate(run_dir, monkeypatch):
    built = build_objective(StudySettings(run_dir=str(run_dir)))
    objective = PIMObjective(built.module, built.space, built.batches)                    # a fresh memo
    calls = []
    score = objective.module.evaluate_subnet
    monkeypatch.setattr(objective.module, "evaluate_subnet", lambda *a, **k: calls.append(a[0]) or score(*a, **k))
    sub = SubArchitecture(objective.space.fields, (2,) * len(objective.space.fields), (8, 4))
    first = objective.accuracy(sub, "fp16")
    assert objective.accuracy(sub, "fp16") == first and len(calls) == 1
    objective.accuracy(sub, "fp32")
    objective.accuracy(sub, "fp16", batches=objective.batches[:1])   # other batches: never from the memo
    assert len(calls) == 3
    # objectives built on one supernet share their memo, whatever their cost vocabulary
    other = SubArchitecture(objective.space.fields, (4,) * len(objective.space.fields), (4, 2))
    auc = built.accuracy(other, "int8")
    big = {f: 10**6 for f in built.space.fields}
    assert build_objective(StudySettings(run_dir=str(run_dir), cost_vocab=big)).accuracy(other, "int8") == auc
    assert len(calls) == 4                                                        # built's own call, once


def test_cost_vocabulary_changes_costs_not_accuracy(run_dir, tmp_path):
    base = build_objective(StudySettings(run_dir=str(run_dir)))
    big = {f: 5_000_000 for f in base.space.fields}
    objective = build_objective(StudySettings(run_dir=str(run_dir), cost_vocab=big, cost_zipf=1.1))
    assert objective.space.vocab_sizes == (5_000_000,) * len(base.space.fields)
    assert objective.space.hot_share == (zipf_hot_share(5_000_000, 1.1),) * len(base.space.fields)
    assert objective.space.lookups_per_sample == base.space.lookups_per_sample
    assert objective.baseline_auc == base.baseline_auc
    candidate = Candidate(base.space.full, PIMConfig.for_device("recnmp", partitioning="row", batch_size=1024))
    small, large = base.evaluate(candidate), objective.evaluate(candidate)
    assert small["auc"] == large["auc"] and large["latency_ratio"] < small["latency_ratio"]
    study = run_study(StudySettings(run_dir=str(run_dir), trials=3, storage=f"journal:{tmp_path / 'v.log'}",
                                    heartbeat_s=0, cost_vocab=big), objective)
    assert len(study.trials) == 3
    with pytest.raises(ValueError, match="cost_vocab"):
        StudySettings(run_dir=str(run_dir), cost_zipf=1.1)
    with pytest.raises(ValueError, match="no size for fields"):
        base.space.at_vocabulary({})


def test_standalone_retrain_of_a_sub_architecture(run_dir):
    objective = build_objective(StudySettings(run_dir=str(run_dir)))
    fields = objective.space.fields
    dims = tuple(2 if i % 2 else 4 for i in range(len(fields)))
    sub = SubArchitecture(fields, dims, (8, 4))
    metrics = train_standalone(run_dir, sub, stage="pim_trial_x", epochs=1, precision="fp16")
    assert metrics["dims"] == dict(zip(fields, dims)) and metrics["dnn"] == [8, 4] and metrics["epochs"] == 1
    assert 0.5 < metrics["test_auc"] <= 1.0
    # the same weights with fp16 tables: within rounding of the fp32 scores
    assert metrics["val_auc_at_precision"] == pytest.approx(metrics["val_auc"], abs=2e-3)
    assert metrics["test_auc_at_precision"] == pytest.approx(metrics["test_auc"], abs=2e-3)
    again = train_standalone(run_dir, sub, stage="pim_trial_x", epochs=1, precision="fp16")  # done: reused
    assert again == metrics
    with pytest.raises(ValueError, match="dim >= 1"):
        train_standalone(run_dir, SubArchitecture(fields, (0,) * len(fields), (8, 4)), stage="bad")


def test_cli_costs_at_given_vocabularies_and_refuses_malformed_ones(run_dir, capsys):
    fields = build_objective(StudySettings(run_dir=str(run_dir))).space.fields
    sizes = ",".join(f"{f}={10**6 + i}" for i, f in enumerate(fields))
    assert main(["pim", "--run", str(run_dir), "--trials", "2", "--baseline-epochs", "0", "--study-name", "big",
                 "--cost-vocab", sizes, "--cost-zipf", "1.2"]) == 0
    study = optuna.load_study(study_name="big", storage=f"sqlite:///{run_dir / 'pim' / 'study.db'}")
    space = study.user_attrs["search_space"]
    assert space["vocab_sizes"] == [10**6 + i for i in range(len(fields))]
    assert space["hot_share"][0] == pytest.approx(zipf_hot_share(10**6, 1.2))
    assert main(["pim", "--run", str(run_dir), "--trials", "1", "--baseline-epochs", "0",
                 "--cost-vocab", "C1=many"]) == 2
    assert "FIELD=ROWS" in capsys.readouterr().err


def test_candidates_are_fine_tuned_in_fp32_then_rounded_and_scored(run_dir):
    built = build_objective(StudySettings(run_dir=str(run_dir), finetune_steps=3, finetune_lr=1e-2, refit_sweeps=0))
    module = built.module
    assert len(built.finetune_batches) == 3 and built.finetune_lr == 1e-2
    assert build_objective(StudySettings(run_dir=str(run_dir))).finetune_lr == module.hparams.lr   # default
    before = {k: v.clone() for k, v in module.state_dict().items()}
    sub = SubArchitecture(built.space.fields, (4,) * len(built.space.fields), (8, 4))
    tuned = built.accuracy(sub, "int8")
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key                                   # the supernet is restored
    plain = build_objective(StudySettings(run_dir=str(run_dir), finetune_steps=0, refit_sweeps=0))
    assert plain.finetune_batches == []
    assert plain.accuracy(sub, "fp32") == module.evaluate_subnet(sub, built.batches).auc

    # by hand: 3 Adam steps of every parameter under the candidate's masks in fp32, then int8 tables, then the AUC
    module.eval()
    module.supernet_masks.apply(sub)
    optimizer = RowwiseAdam(module.parameters(), lr=1e-2)
    for batch in built.finetune_batches:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(module(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad(), quantized_tables(module, "int8"):
        logits = torch.cat([module(b) for b in built.batches])
    labels = torch.cat([b["label"] for b in built.batches])
    assert tuned == pytest.approx(float(binary_auroc(logits, labels.long())), abs=1e-6)
    module.supernet_masks.clear()
    module.load_state_dict(before)
    assert tuned != plain.accuracy(sub, "int8")
    # the default also refits the first-order weights first, on the first REFIT_ROWS training rows (all of them here)
    refit = build_objective(StudySettings(run_dir=str(run_dir), finetune_steps=3, finetune_lr=1e-2))
    rows = sum(len(b["label"]) for b in refit.finetune_batches)
    assert (refit.finetune_steps, refit.refit_sweeps) == (3, 5) and rows == 2400 < REFIT_ROWS   # 80% of 3000
    by_hand = module.evaluate_subnet(sub, built.batches, 3, finetune_data=refit.finetune_batches, finetune_lr=1e-2,
                                     finetune_scope="all", refit_sweeps=5,
                                     score_context=lambda: quantized_tables(module, "int8"))
    assert by_hand.refit_sweeps == 5 and refit.accuracy(sub, "int8") == by_hand.auc != tuned
    # refit_rows: the refit fits the first batches holding that many rows (2 of 256 rows here; the 3 fine-tune steps
    # read 3 batches); the default fitted all 2400
    few = build_objective(StudySettings(run_dir=str(run_dir), finetune_steps=3, finetune_lr=1e-2, refit_rows=300))
    assert len(few.finetune_batches) == 3 and few.refit_rows == 300
    assert module.evaluate_subnet(sub, built.batches, 0, finetune_data=few.finetune_batches, refit_sweeps=5,
                                  refit_rows=300).refit_rows == 512
    assert few.accuracy(sub, "int8") != refit.accuracy(sub, "int8")
    with pytest.raises(ValueError, match="refit_rows >= 1, got -1, 5 and 40000"):
        StudySettings(run_dir=str(run_dir), finetune_steps=-1)
    with pytest.raises(ValueError, match="refit_rows >= 1, got 10, 5 and 0"):
        StudySettings(run_dir=str(run_dir), refit_rows=0)
    with pytest.raises(ValueError, match="refit_prior must be > 0, got 0"):
        StudySettings(run_dir=str(run_dir), refit_prior=0.0)
    with pytest.raises(ValueError, match="finetune_lr must be > 0, got 0"):
        StudySettings(run_dir=str(run_dir), finetune_lr=0.0)

"""``ihas transfer``: a tiny DeepFM run's groups on DeepFM and DCN over two model seeds, against the uniform
baselines; the JSON/Markdown/PNG outputs, statistics recomputed from the stages' own metrics files, the split
kept fixed across model seeds, the run's own stages reused, no stage redone, and the refusal of unsupported
backbones.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ihas_lightning.backbones import UNSUPPORTED_BACKBONES
from ihas_lightning.cli import main
from ihas_lightning.experiments.transfer import TransferConfig, matched_dim
from ihas_lightning.pipeline import RunDirectory, stage_baseline
from ihas_lightning.training import datamodule_from_config

TINY = ["--data", "synthetic", "--rows", "3000", "--epochs", "2", "--warmup-epochs", "1", "--retrain-epochs", "1",
        "--baseline-epochs", "1", "--dnn", "16,8", "--dim", "8", "--quiet"]
TARGETS = ("DeepFM", "DCN")
VARIANT_STAGES = {"ihas": "ihas", "uniform": "uniform16", "matched": "matched"}


@pytest.fixture(scope="module")
def transferred(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("transfer") / "run"
    assert main(["run", *TINY, "--out", str(run)]) == 0
    assert main(["transfer", "--run", str(run), "--backbones", ",".join(TARGETS), "--seeds", "2", "--quiet"]) == 0
    return run


def test_transfer_json_structure(transferred: Path) -> None:
    result = json.loads((transferred / "transfer" / "transfer.json").read_text())
    assert result["source_backbone"] == "DeepFM"
    assert result["model_seeds"] == [0, 1] and result["split_seed"] == 0
    assert [row["backbone"] for row in result["rows"]] == list(TARGETS)
    clusters = json.loads((transferred / "cluster" / "metrics.json").read_text())
    for row in result["rows"]:
        assert set(row) == {"backbone", "ihas", "uniform", "matched"}
        ihas, uniform, matched = row["ihas"], row["uniform"], row["matched"]
        assert uniform["dim"] == 16 and ihas["dim"] is None
        # matched: iHAS's embedding parameters at one uniform dimension
        assert matched["dim"] == matched_dim(ihas["embedding_params"], result["embedding_rows"], row["backbone"])
        assert abs(matched["dim"] - ihas["embedding_params"] / result["embedding_rows"]) <= 0.5
        assert uniform["embedding_params"] == 16 * result["embedding_rows"]
        assert ihas["embedding_params"] < uniform["embedding_params"]
        # DeepFM and DCN are counted by flops_per_sample
        assert all(v["flops_per_sample"] > 0 for v in (ihas, uniform, matched))
        for variant in (ihas, uniform, matched):
            assert variant["seeds"] == [0, 1]
            assert 0.0 <= variant["test_auc"]["mean"] <= 1.0 and variant["test_logloss"]["mean"] > 0
        assert len(clusters["dims"]) == json.loads(
            (transferred / f"transfer/{row['backbone']}/seed0/ihas/metrics.json").read_text())["groups"]
    for name in ("transfer.md", "transfer.png"):
        assert (transferred / "transfer" / name).stat().st_size > 0
    assert (transferred / "transfer/DCN/seed1/ihas/tensorboard").is_dir()


def test_transfer_statistics_from_per_seed_metrics(transferred: Path) -> None:
    result = json.loads((transferred / "transfer" / "transfer.json").read_text())
    for row in result["rows"]:
        for variant, stage in VARIANT_STAGES.items():
            per_seed = [json.loads((transferred / f"transfer/{row['backbone']}/seed{k}/{stage}/metrics.json")
                                   .read_text()) for k in (0, 1)]
            for metric in ("test_auc", "test_logloss"):
                values = np.array([m[metric] for m in per_seed])
                stats = row[variant][metric]
                assert stats["per_seed"] == pytest.approx(values.tolist(), abs=1e-12)
                assert stats["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert stats["std"] == pytest.approx(values.std(ddof=1), abs=1e-12)
            assert row[variant]["embedding_params"] == per_seed[0]["embedding_params"]
    md = (transferred / "transfer" / "transfer.md").read_text()
    dcn = result["rows"][1]["ihas"]["test_auc"]
    assert f"{dcn['mean']:.4f} ± {dcn['std']:.4f}" in md


def test_transfer_seeds_vary_the_model_not_the_split(transferred: Path) -> None:
    # Model seed 0 of DCN, retrained here by hand on the run's own data module (split seed 0), is the
    # transfer's stage: same split, same initialization, same batch order -> the same numbers.
    config = RunDirectory(transferred).load_config(quiet=True)
    config = replace(config, model=replace(config.model, seed=0))
    check = stage_baseline(RunDirectory(transferred), config, 16, "check", datamodule_from_config(config.data),
                           backbone="DCN")
    seed0 = json.loads((transferred / "transfer/DCN/seed0/uniform16/metrics.json").read_text())
    assert check["test_auc"] == pytest.approx(seed0["test_auc"], abs=1e-6)
    assert check["test_logloss"] == pytest.approx(seed0["test_logloss"], rel=1e-6)
    # Another model seed gives another model.
    seed1 = json.loads((transferred / "transfer/DCN/seed1/uniform16/metrics.json").read_text())
    assert seed1["test_logloss"] != seed0["test_logloss"]


def test_the_runs_own_stages_are_reused_not_retrained(transferred: Path) -> None:
    # On the searched backbone at the run's seed, `ihas run` already trained all three variants.
    for variant, own in (("ihas", "retrain"), ("uniform16", None), ("matched", "baseline_matched")):
        metrics = json.loads((transferred / f"transfer/DeepFM/seed0/{variant}/metrics.json").read_text())
        if own is None:  # the run's `baseline` is at --dim 8, not 16: trained here
            assert "reused_from" not in metrics
        else:
            assert metrics["reused_from"] == str(transferred / own)
            assert metrics["test_auc"] == json.loads((transferred / own / "metrics.json").read_text())["test_auc"]
    assert "reused_from" not in json.loads((transferred / "transfer/DeepFM/seed1/ihas/metrics.json").read_text())


def test_finished_stages_are_not_redone(transferred: Path) -> None:
    stamp = {p: p.stat().st_mtime_ns for p in (transferred / "transfer").glob("*/seed*/*/metrics.json")}
    assert len(stamp) == len(TARGETS) * 2 * 3
    before = json.loads((transferred / "transfer/transfer.json").read_text())
    assert main(["transfer", "--run", str(transferred), "--backbones", ",".join(TARGETS), "--seeds", "2",
                 "--quiet"]) == 0
    assert all(p.stat().st_mtime_ns == t for p, t in stamp.items())
    assert json.loads((transferred / "transfer/transfer.json").read_text()) == before


@pytest.mark.parametrize("name", sorted(UNSUPPORTED_BACKBONES))
def test_unsupported_backbone_is_refused_with_the_reason(name: str, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match=f"'{name}' cannot be a transfer target: it "
                                         f"{UNSUPPORTED_BACKBONES[name][:30]}"):
        TransferConfig(backbones=("DCN", name))
    (tmp_path / "run.json").write_text("{}")
    assert main(["transfer", "--run", str(tmp_path), "--backbones", f"DCN,{name}"]) == 2
    assert f"'{name}' cannot be a transfer target" in capsys.readouterr().err
    assert not (tmp_path / "transfer").exists()  # refused before any training


def test_unknown_backbone_and_bad_seeds() -> None:
    with pytest.raises(ValueError, match="unknown backbone 'DeepFMM'"):
        TransferConfig(backbones=("DeepFMM",))
    with pytest.raises(ValueError, match="seeds must be >= 1, got 0"):
        TransferConfig(backbones=("DCN",), seeds=0)


@pytest.mark.parametrize(("params", "rows", "backbone", "expected"), [
    (28776, 3910, "DCN", 7),      # 7.36 -> 7
    (28776, 3910, "AutoInt", 8),  # AutoInt's two attention heads need an even dimension: 8 is nearer than 6
    (100, 1000, "DCN", 1),        # never below 1
    (100, 1000, "AutoInt", 2),
])
def test_matched_dim_is_the_nearest_dimension_the_backbone_accepts(params: int, rows: int, backbone: str,
                                                                  expected: int) -> None:
    assert matched_dim(params, rows, backbone) == expected

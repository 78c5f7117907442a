"""``ihas transfer``: a tiny DeepFM run's groups on DeepFM and DCN over two model seeds, against the uniform
baselines; the JSON/Markdown/PNG outputs, statistics recomputed from the stages' own metrics files, the split
kept fixed across model seeds, every variant started from the searched tables with fresh dense layers and
trained for the same steps, no stage redone, and the refusal of unsupported backbones.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import torch

from ihas_lightning.backbones import UNSUPPORTED_BACKBONES
from ihas_lightning.cli import main
from ihas_lightning.experiments.transfer import TransferConfig
from ihas_lightning.footprint_dims import footprint_gap, matched_field_dims
from ihas_lightning.modules import BackboneModule
from ihas_lightning.pipeline import RunDirectory, build_retrain_module, stage_baseline
from ihas_lightning.pipeline.retrain import TABLE_PREFIXES, load_tables
from ihas_lightning.pipeline.search import load_searched_module
from ihas_lightning.safe_load import load_torch_file
from ihas_lightning.training import datamodule_from_config

TINY = ["--data", "synthetic", "--rows", "3000", "--epochs", "2", "--warmup-epochs", "1", "--retrain-epochs", "1",
        "--baseline-epochs", "1", "--dnn", "16,8", "--dim", "8", "--quiet"]
TARGETS = ("DeepFM", "DCN")
VARIANT_STAGES = {"ihas": "ihas", "uniform": "uniform8", "matched": "matched"}  # uniform: the search's dim


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
        assert uniform["dim"] == 8 and ihas["dim"] is None and result["uniform_dim"] == 8
        # matched: every field d or d + 1 columns, tables at iHAS's whole footprint (tables + router)
        assert ihas["footprint_params"] > ihas["embedding_params"]          # the router counts
        assert matched["dims"] is not None and max(matched["dims"].values()) - min(matched["dims"].values()) <= 1
        assert abs(footprint_gap(matched["footprint_params"], ihas["footprint_params"])) <= 0.01
        assert uniform["embedding_params"] == 8 * result["embedding_rows"]
        assert ihas["footprint_params"] < uniform["footprint_params"]
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
            assert row[variant]["footprint_params"] == per_seed[0]["footprint_params"]
    md = (transferred / "transfer" / "transfer.md").read_text()
    dcn = result["rows"][1]["ihas"]["test_auc"]
    assert f"{dcn['mean']:.4f} ± {dcn['std']:.4f}" in md


def test_transfer_seeds_vary_the_model_not_the_split(transferred: Path) -> None:
    # Model seed 0 of DCN, retrained here by hand on the run's own data module (split seed 0) from the searched
    # tables, is the transfer's stage: same split, same start, same batch order -> the same numbers.
    run = RunDirectory(transferred)
    config = run.load_config(quiet=True)
    config = replace(config, model=replace(config.model, seed=0))
    check = stage_baseline(run, config, 8, "check", datamodule_from_config(config.data), backbone="DCN",
                           init_tables=load_searched_module(run).state_dict())
    seed0 = json.loads((transferred / "transfer/DCN/seed0/uniform8/metrics.json").read_text())
    assert check["test_auc"] == pytest.approx(seed0["test_auc"], abs=1e-6)
    assert check["test_logloss"] == pytest.approx(seed0["test_logloss"], rel=1e-6)
    # Another model seed gives another model.
    seed1 = json.loads((transferred / "transfer/DCN/seed1/uniform8/metrics.json").read_text())
    assert seed1["test_logloss"] != seed0["test_logloss"]


def test_every_variant_trains_the_same_steps(transferred: Path) -> None:
    # The same epochs for all three variants of a target, on the searched backbone too (no short fine-tuning).
    for backbone in TARGETS:
        steps = {stage: load_torch_file(transferred / f"transfer/{backbone}/seed0/{stage}/checkpoints/last.ckpt",
                                        "a test checkpoint")["global_step"] for stage in VARIANT_STAGES.values()}
        assert len(set(steps.values())) == 1 and min(steps.values()) > 0, steps


def test_every_variant_starts_from_the_searched_tables_with_fresh_dense_layers(transferred: Path) -> None:
    run = RunDirectory(transferred)
    config = run.load_config(quiet=True)
    dm = datamodule_from_config(config.data)
    searched = load_searched_module(run).state_dict()
    # matched baseline: tables cut to d / d + 1 columns, dense layers those of a fresh module with its seed
    dims = matched_field_dims(int(5.5 * sum(dm.vocab_sizes.values())), dm.vocab_sizes, dm.schema.embedded_fields)
    assert set(dims.values()) == {5, 6}
    fresh = BackboneModule(dm.schema, dm.vocab_sizes, config=config.model, field_dims=dims)
    started = BackboneModule(dm.schema, dm.vocab_sizes, config=config.model, field_dims=dims)
    load_tables(started, searched)
    tables = [k for k in started.state_dict() if k.startswith(TABLE_PREFIXES)]
    assert tables
    for key, value in started.state_dict().items():
        if key in tables:
            assert torch.equal(value, searched[key][:, :value.shape[1]]), key
        else:
            assert torch.equal(value, fresh.state_dict()[key]), key
    # iHAS on the searched backbone itself: the searched tables, not the searched dense layers
    module = build_retrain_module(run, config, dm, "DeepFM", tables_only=True)
    dnn = "backbone.model.dnn.linears.0.weight"
    assert not torch.equal(module.state_dict()[dnn], searched[dnn])
    table = next(k for k in module.state_dict() if k.startswith(TABLE_PREFIXES[0]))
    width = module.state_dict()[table].shape[1]
    assert torch.equal(module.state_dict()[table], searched[table][:, :width])
    # wider than the search (a matched model whose footprint outweighs the searched width's tables): every searched
    # column, then the module's own initialisation
    searched_width = searched[table].shape[1]
    wide_config = replace(config.model, dim=searched_width + 3)
    wide, fresh_wide = (BackboneModule(dm.schema, dm.vocab_sizes, config=wide_config) for _ in range(2))
    load_tables(wide, searched)
    value = wide.state_dict()[table]
    assert value.shape[1] == searched_width + 3 and torch.equal(value[:, :searched_width], searched[table])
    assert torch.equal(value[:, searched_width:], fresh_wide.state_dict()[table][:, searched_width:])
    missing = {k: v for k, v in searched.items() if k != table}
    with pytest.raises(ValueError, match=f"cannot start table '{table}' .* \\(missing\\)"):
        load_tables(wide, missing)
    fewer_rows = {**searched, table: searched[table][:-1]}
    with pytest.raises(ValueError, match=f"cannot start table '{table}'"):
        load_tables(wide, fewer_rows)


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


def test_uniform_dim_above_the_searched_one_is_refused(transferred: Path) -> None:
    with pytest.raises(ValueError, match="exceeds the search's dimension 8"):
        from ihas_lightning.experiments.transfer import run_transfer
        run_transfer(transferred, TransferConfig(backbones=("DCN",), uniform_dim=16), quiet=True)


def test_autoint_at_odd_field_widths_pads_to_its_heads(transferred: Path) -> None:
    # AutoInt splits the common width into 2 attention heads: widths 3/4 build at 4, 6/7 at 8, and it predicts.
    config = RunDirectory(transferred).load_config(quiet=True)
    dm = datamodule_from_config(config.data)
    fields = dm.schema.embedded_fields
    for widths, built in (((3, 4), 4), ((6, 7), 8)):
        dims = {f: widths[i % 2] for i, f in enumerate(fields)}
        module = BackboneModule(dm.schema, dm.vocab_sizes, config=replace(config.model, backbone="AutoInt"),
                                field_dims=dims)
        assert module.hparams.dim == built and module.field_dims == dims
        batch = next(iter(dm.stream("val", shuffle=False)))
        assert torch.isfinite(module(batch)).all()



def test_difm_pads_to_its_four_heads_and_a_bad_uniform_dim_is_refused_by_name(transferred: Path) -> None:
    # DIFM's self-attention splits the width into 4 heads (DeepCTR-Torch's default): a matched model at widths 5/6
    # builds at 8, and a uniform one at 6 is refused before DeepCTR-Torch says "not an integer multiple of head_num".
    config = RunDirectory(transferred).load_config(quiet=True)
    dm = datamodule_from_config(config.data)
    difm = replace(config.model, backbone="DIFM")
    dims = {f: (5, 6)[i % 2] for i, f in enumerate(dm.schema.embedded_fields)}
    module = BackboneModule(dm.schema, dm.vocab_sizes, config=difm, field_dims=dims)
    assert module.hparams.dim == 8 and module.field_dims == dims
    assert torch.isfinite(module(next(iter(dm.stream("val", shuffle=False))))).all()
    with pytest.raises(ValueError, match=r"DIFM splits .* att_head_num=4 .* multiple of 4, got 6: choose 4 or 8"):
        BackboneModule(dm.schema, dm.vocab_sizes, config=replace(difm, dim=6))
    with pytest.raises(ValueError, match=r"AutoInt .* att_head_num=2 .* got 3: choose 2 or 4"):
        BackboneModule(dm.schema, dm.vocab_sizes, config=replace(difm, backbone="AutoInt", dim=3))
    three_heads = BackboneModule(dm.schema, dm.vocab_sizes, config=replace(difm, dim=6, options={"att_head_num": 3}))
    assert three_heads.hparams.dim == 6

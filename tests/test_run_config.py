"""Configs: ``RunConfig`` from the CLI's options and from an older flat ``run.json``, its round trip through
``run.json``, ``BackboneConfig`` validation, and modules built from a config or from flat arguments alike."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ihas_lightning import BackboneConfig, BackboneModule, DataConfig, RunConfig, SearchModule
from ihas_lightning.cli import build_parser
from ihas_lightning.cli.common import run_config_from_args
from ihas_lightning.data.schema import Schema
from ihas_lightning.modules import RetrainModule, SupernetModule
from ihas_lightning.pipeline import RunDirectory

# The run.json of `ihas run ... --seed 3 --separate` written before RunConfig existed (flat argparse options).
FLAT_RUN_JSON = {
    "command": "run", "data": "synthetic", "format": None, "schema": None, "test": None, "rows": 6000,
    "min_count": 1, "batch_size": 1024, "seed": 3, "cache_dir": "/tmp/base/cache", "backbone": "DeepFM", "dim": 16,
    "dnn": "32,16", "lr": 0.001, "epochs": 2, "accelerator": "auto", "devices": 1, "num_nodes": 1, "strategy": "auto",
    "out": "/tmp/base/run", "quiet": True, "threads": 1, "budget": 0.5, "sparsity_weight": None,
    "relaxation": "hard_concrete", "prefix": True, "min_dim": 2, "polarization": 0.1, "gate_lr": 0.003,
    "warmup_epochs": 1, "init_from": None, "search_checkpoint": "best", "config": None, "k": 4,
    "candidate_dims": "0,2,4,8,16", "budget_fit": "loss", "retrain_epochs": 1, "retrain_lr": 0.0005,
    "baseline_epochs": 3, "no_matched_baseline": False, "group_dense": False, "retrain_init_from": None,
    "separate": True,
}
SCHEMA = Schema(label="label", sparse=("C1", "C2", "C3"))
VOCAB = {"C1": 10, "C2": 10, "C3": 10}


def test_a_flat_run_json_of_older_code_loads_into_a_run_config(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps(FLAT_RUN_JSON))
    config = RunDirectory(tmp_path).load_config()
    assert config.data == DataConfig("synthetic", rows=6000, seed=3, cache_dir="/tmp/base/cache")
    assert config.model == BackboneConfig("DeepFM", 16, (32, 16), lr=1e-3, seed=3)
    assert (config.gate.prefix, config.gate.budget, config.gate.min_dim, config.gate.polarization_weight) == (
        True, 0.5, 2, 0.1)
    assert (config.search.gate_lr, config.search.warmup_epochs, config.search.checkpoint) == (0.003, 1, "best")
    assert config.cluster.candidate_dims == (0, 2, 4, 8, 16) and config.cluster.k == 4
    assert (config.retrain.epochs, config.retrain.lr, config.baseline_epochs) == (1, 5e-4, 3)
    assert config.trainer.quiet and config.trainer.epochs == 2 and config.separate and config.matched_baseline
    assert RunDirectory(tmp_path).load_config(quiet=False).trainer.quiet is False


def test_the_cli_options_give_the_flat_run_json_s_config() -> None:
    argv = ["run", "--rows", "6000", "--epochs", "2", "--retrain-epochs", "1", "--dnn", "32,16", "--out",
            "/tmp/base/run", "--separate", "--quiet", "--cache-dir", "/tmp/base/cache", "--seed", "3",
            "--budget-fit", "loss", "--no-fieldwise", "--retrain-lr", "5e-4",
            "--candidate-dims", "0,2,4,8,16"]                                 # that run's defaults, changed since
    old = RunConfig.from_dict(FLAT_RUN_JSON)
    assert old.retrain.router == "gates"                            # what the run was made with
    new = run_config_from_args(build_parser().parse_args(argv))
    assert new.retrain.router == "linear"                           # today's default
    assert new == replace(old, retrain=replace(old.retrain, router="linear"))
    nested = RunConfig().to_dict()
    del nested["retrain"]["router"]                                 # a nested run.json from before the choice
    assert RunConfig.from_dict(nested).retrain.router == "gates"


def test_run_json_round_trip_and_k_zero(tmp_path: Path) -> None:
    config = RunConfig.from_options({**FLAT_RUN_JSON, "k": 0, "sparsity_weight": 0.2, "baseline_epochs": None})
    assert config.cluster.k is None                                 # 0: chosen on validation data
    assert config.gate.budget is None and config.gate.sparsity_weight == 0.2
    assert config.baseline_epochs == 3                              # search + retraining epochs
    RunDirectory(tmp_path).save_config(config)
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["model"]["dnn_hidden_units"] == [32, 16] and saved["cluster"]["k"] is None
    assert RunDirectory(tmp_path).load_config() == config


def test_a_refused_value_names_run_json(tmp_path: Path) -> None:
    (tmp_path / "run.json").write_text(json.dumps({**FLAT_RUN_JSON, "budget_fit": "entropy"}))
    with pytest.raises(ValueError, match=r"budget_fit must be one of auto, loss, gates, got 'entropy' \(run.json of "):
        RunDirectory(tmp_path).load_config()
    with pytest.raises(ValueError, match="--dnn must be comma-separated integers, got '32,x'"):
        RunConfig.from_options({"dnn": "32,x"})


@pytest.mark.parametrize("kwargs, message", [
    ({"dim": 0}, "dim must be an int >= 1, got 0"),
    ({"lr": 0.0}, "lr must be > 0, got 0.0"),
    ({"dnn_dropout": 1.0}, r"dnn_dropout must be in \[0, 1\), got 1.0"),
    ({"l2_reg_embedding": -1.0}, "l2_reg_embedding must be finite and >= 0, got -1.0"),
    ({"dnn_hidden_units": (8, 0)}, r"dnn_hidden_units must be positive widths, got \(8, 0\)"),
])
def test_backbone_config_refuses_bad_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BackboneConfig(**kwargs)


def test_modules_from_a_config_equal_those_from_flat_arguments() -> None:
    config = BackboneConfig("DCN", dim=4, dnn_hidden_units=(8,), lr=2e-3, seed=5)
    flat = dict(backbone="DCN", dim=4, dnn_hidden_units=(8,), lr=2e-3, seed=5)
    pairs = [(BackboneModule(SCHEMA, VOCAB, config=config), BackboneModule(SCHEMA, VOCAB, **flat)),
             (SearchModule(SCHEMA, VOCAB, config=config, gate={"budget": 0.5}),
              SearchModule(SCHEMA, VOCAB, gate={"budget": 0.5}, **flat))]
    for made, flat_made in pairs:
        assert dict(made.hparams) == dict(flat_made.hparams)
        assert all(torch.equal(v, flat_made.state_dict()[k]) for k, v in made.state_dict().items())
    # The keys a checkpoint holds stay flat, as before the config (load_from_checkpoint calls cls(**hparams)).
    assert set(pairs[0][0].hparams) == {"schema", "vocab_sizes", "backbone", "dim", "dnn_hidden_units", "lr",
                                        "dnn_dropout", "l2_reg_embedding", "seed", "options", "embedding_updates"}
    assert pairs[0][0].hparams.dnn_hidden_units == [8]
    assert SupernetModule(SCHEMA, VOCAB, dim=4).hparams.l2_reg_embedding == 0.0      # its own default
    assert SearchModule(SCHEMA, VOCAB, dim=4).hparams.l2_reg_embedding == 1e-5       # build_backbone's, as before


def test_hparams_of_older_checkpoints_still_build_every_module() -> None:
    """Hyperparameters as the modules saved them before BackboneConfig (Search/Retrain without dnn_dropout and
    l2_reg_embedding) rebuild the modules with the values those used (build_backbone's defaults)."""
    base = {"schema": SCHEMA.to_dict(), "vocab_sizes": VOCAB, "backbone": "DeepFM", "dim": 4,
            "dnn_hidden_units": [8], "lr": 1e-3, "seed": 7, "options": {}}
    search = SearchModule(**base, gate_lr=3e-3, warmup_epochs=1, gate={"budget": 0.5, "prefix": True})
    retrain = RetrainModule(**base, group_dims=[[4, 2, 0]], centroids=[[1.0] * 12], gate={"prefix": True},
                            groups_from="router", group_dense=False)
    plain = BackboneModule(**base, dnn_dropout=0.0, l2_reg_embedding=1e-5)
    for module in (search, retrain):
        assert (module.hparams.dnn_dropout, module.hparams.l2_reg_embedding) == (0.0, 1e-5)
    table = "backbone.model.embedding_dict.C1.weight"
    assert torch.equal(search.state_dict()[table], plain.state_dict()[table])    # same seed, same tables



def test_split_seed_fixes_the_split_while_seed_draws_the_initialization() -> None:
    args = build_parser().parse_args(["run", "--seed", "3", "--split-seed", "0"])
    config = run_config_from_args(args)
    assert (config.data.seed, config.model.seed) == (0, 3)
    config = run_config_from_args(build_parser().parse_args(["run", "--seed", "3"]))
    assert (config.data.seed, config.model.seed) == (3, 3)

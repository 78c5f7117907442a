"""TensorBoard's HPARAMS tab (issue 18.5): a tiny ``ihas run`` (started from a ``--config`` file) and a tiny
``ihas train`` write one hparams session each, whose hyperparameters are their ``run.json`` / options and whose
metrics are the figures of their ``metrics.json``; ``tensorboard --logdir`` on their parent folder finds exactly
those two sessions (the stages write none), and a rerun replaces a run's session instead of adding one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.plugins.hparams import plugin_data_pb2

from ihas_lightning.cli import main
from ihas_lightning.hparams_log import METRIC_KEYS, run_metrics

RUN_FILE = {"data": {"rows": 2000, "batch_size": 256}, "model": {"dim": 4, "dnn_hidden_units": [8]},
            "trainer": {"epochs": 2, "quiet": True}, "search": {"warmup_epochs": 1}, "retrain": {"epochs": 1},
            "cluster": {"candidate_dims": [0, 2, 4]}, "baseline_epochs": 1}


def _run_argv(root: Path) -> list[str]:
    return ["run", "--config", str(root / "run.yaml"), "--out", str(root / "run"), "--cache-dir", str(root / "cache")]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    (root / "run.yaml").write_text(yaml.safe_dump(RUN_FILE))
    assert main(_run_argv(root)) == 0
    assert main(["train", "--rows", "2000", "--epochs", "1", "--dim", "4", "--dnn", "8", "--batch-size", "256",
                 "--quiet", "--seed", "2", "--cache-dir", str(root / "cache"), "--out", str(root / "train")]) == 0
    return root


def _session(folder: Path) -> tuple[dict, dict[str, float]]:
    """The hparams of the one session in ``folder`` and its metrics' scalars at step 0."""
    events = list(folder.glob("events.out.tfevents.*"))
    assert len(events) == 1, events
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    content = accumulator.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    hparams = {name: getattr(value, value.WhichOneof("kind"))
               for name, value in start.session_start_info.hparams.items()}
    tags = [info.name.tag for info in experiment.metric_infos]
    scalars = {}
    for tag in tags:
        (event,) = accumulator.Scalars(tag)
        assert event.step == 0
        scalars[tag] = event.value
    return hparams, scalars


def _flat(config: dict) -> dict:
    """run.json's nested config as the hparams should hold it (a list "a,b", a dict as JSON, None "None")."""
    out = {}
    for key, value in config.items():
        items = value.items() if isinstance(value, dict) else [("", value)]
        for name, item in items:
            if isinstance(item, list):
                item = ",".join(map(str, item))
            elif isinstance(item, dict):
                item = json.dumps(item, sort_keys=True)
            elif item is None:
                item = "None"
            out[f"{key}.{name}" if name else key] = item
    return out


def test_a_run_s_hparams_are_its_run_json_and_its_metrics_json(runs: Path) -> None:
    hparams, scalars = _session(runs / "run" / "hparams")
    run_json = json.loads((runs / "run" / "run.json").read_text())
    del run_json["run_root"]                                  # where the folder was: not a setting
    assert hparams == _flat(run_json)
    assert (hparams["model.dim"], hparams["model.dnn_hidden_units"], hparams["cluster.candidate_dims"]) == (
        4, "8", "0,2,4")                                      # the --config file's values
    assert hparams["data.cache_dir"] == str(runs / "cache")  # a flag beside the file
    metrics = json.loads((runs / "run" / "metrics.json").read_text())
    kept = metrics["selection"]["kept"]
    expected = {f"{name}/{key}": metrics[model][key]
                for name, model in (("kept", kept), ("ihas", "ihas"), ("baseline", "baseline"),
                                    ("baseline_matched", "baseline_matched"), ("fieldwise", "fieldwise"))
                for key in METRIC_KEYS if metrics[model].get(key) is not None}
    assert {"kept/test_auc", "ihas/footprint_params", "baseline/flops_per_sample", "fieldwise/test_logloss"} <= set(
        expected)
    assert sorted(scalars) == sorted(expected)
    for tag, value in expected.items():
        assert scalars[tag] == pytest.approx(value, rel=1e-6), tag   # float32 in the event file
    assert 0.0 < scalars["ihas/test_auc"] < 1.0 and scalars["baseline/embedding_params"] > 1000


def test_train_s_hparams_are_its_options_and_its_test_figures(runs: Path) -> None:
    hparams, scalars = _session(runs / "train" / "hparams")
    assert (hparams["model.dim"], hparams["model.seed"], hparams["data.seed"], hparams["trainer.epochs"]) == (
        4, 2, 2, 1)
    assert not any(key.startswith(("gate.", "cluster.")) for key in hparams)
    metrics = json.loads((runs / "train" / "metrics.json").read_text())
    assert sorted(scalars) == ["kept/embedding_params", "kept/test_auc", "kept/test_logloss", "kept/val_auc"]
    for tag, value in scalars.items():
        assert value == pytest.approx(metrics[tag.removeprefix("kept/")], rel=1e-6), tag


def test_tensorboard_on_the_parent_folder_lists_the_two_runs_and_no_stage(runs: Path) -> None:
    multiplexer = EventMultiplexer()
    multiplexer.AddRunsFromDirectory(str(runs))
    multiplexer.Reload()
    sessions = {run for run, tags in multiplexer.PluginRunToTagToContent("hparams").items()
                if "_hparams_/session_start_info" in tags}
    assert sessions == {"run/hparams", "train/hparams"}
    assert "run/search/tensorboard" in multiplexer.Runs()     # the stages still log their curves


def test_a_rerun_replaces_the_run_s_session(runs: Path) -> None:
    before = _session(runs / "run" / "hparams")
    assert main(_run_argv(runs)) == 0                        # every stage done: only the summaries are rewritten
    assert _session(runs / "run" / "hparams") == before      # one events file, the same values


def test_every_variant_a_run_trained_is_logged_and_a_missing_figure_is_left_out(runs: Path) -> None:
    metrics = json.loads((runs / "run" / "metrics.json").read_text())
    metrics["baseline_mde"] = {**metrics["baseline_matched"], "test_auc": 0.61, "flops_per_sample": None}
    metrics["ihas_separate"] = {**metrics["ihas"], "test_logloss": 0.52}
    logged = run_metrics(metrics)
    assert (logged["baseline_mde/test_auc"], logged["ihas_separate/test_logloss"]) == (0.61, 0.52)
    assert "baseline_mde/flops_per_sample" not in logged and "ihas_separate/flops_per_sample" in logged
    assert logged["kept/test_auc"] == metrics[metrics["selection"]["kept"]]["test_auc"]

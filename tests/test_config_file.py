"""``--config FILE.yaml`` and ``--print-config`` on every ``ihas`` command (issue 18.5): the printed config
reads back to the same configuration, a flag on the command line beats the file, and a file is refused (exit
code 2, one line naming the file and the key) for an unknown key, a wrong type, a non-mapping or a YAML tag,
without running anything. All in-process through ``ihas_lightning.cli``; nothing trains here."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ihas_lightning.cli import build_parser, main, parse_run_config
from ihas_lightning.cli.config_file import apply_config_file, parse_command_line
from ihas_lightning.run_config import RunConfig

# Each RunConfig command with options moved off their defaults (so a round trip that dropped one would show).
RUN_CONFIG_ARGV = {
    "run": ["run", "--dim", "8", "--k", "0", "--sparsity-weight", "0.01", "--min-dim", "0", "--seed", "3",
            "--split-seed", "5", "--no-matched-baseline", "--rows", "500", "--dnn", "32,16", "--router", "gates",
            "--candidate-dims", "0,4,8", "--no-fieldwise", "--callbacks", "search_fast_anneal", "--epochs", "3"],
    "demo": ["demo", "--epochs", "2", "--retrain-lr", "0.002", "--quiet", "--seed", "4"],
    "search": ["search", "--budget", "0.3", "--relaxation", "gaussian", "--prefix", "--format", "synthetic"],
    "train": ["train", "--backbone", "DCN", "--lr", "0.01", "--threads", "0", "--embedding-updates", "dense"],
    "supernet": ["supernet", "--dim-choices", "2,8", "--per-sample", "--warmup-steps", "7", "--dim", "8"],
}
# Commands whose config is their options by name, with required ones given.
OTHER_ARGV = {
    "export": ["export", "--run", "runs/x", "--format", "onnx", "--model", "baseline"],
    "pim": ["pim", "--run", "runs/x", "--trials", "7", "--sampler", "nsga2", "--max-auc-drop", "0.01"],
    "subnet": ["subnet", "--run", "runs/x", "--dims", "C1=4", "--finetune-steps", "3"],
    "transfer": ["transfer", "--run", "runs/x", "--backbones", "DCN,WDL", "--seeds", "2"],
    "cluster": ["cluster", "--run", "runs/x"],
    "retrain": ["retrain", "--run", "runs/x", "--backbone", "DCN", "--group-dense"],
    "report": ["report", "--run", "runs/x"],
}


def _printed(argv: list[str], capsys) -> str:
    assert main([*argv, "--print-config"]) == 0
    return capsys.readouterr().out


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _args(argv: list[str]):
    parser = build_parser()
    return apply_config_file(parser, argv, parse_command_line(parser, argv))


def test_every_command_takes_config_and_print_config() -> None:
    commands = next(a.choices for a in build_parser()._actions if hasattr(a, "choices") and a.choices)
    assert set(commands) == set(RUN_CONFIG_ARGV) | set(OTHER_ARGV)
    for name, command in commands.items():
        flags = {flag for action in command._actions for flag in action.option_strings}
        assert {"--config", "--print-config"} <= flags, name


@pytest.mark.parametrize("command", sorted(RUN_CONFIG_ARGV))
def test_a_printed_run_config_reads_back_to_the_same_config(command: str, tmp_path: Path, capsys) -> None:
    argv = RUN_CONFIG_ARGV[command]
    text = _printed(argv, capsys)
    data = yaml.safe_load(text)
    config = parse_run_config(argv)
    nested = config.to_dict()
    assert {k: v for k, v in data.items() if k in nested} == yaml.safe_load(yaml.safe_dump(
        {k: nested[k] for k in data if k in nested}))          # the RunConfig's own nested form (lists for tuples)
    assert "model" in data and "trainer" in data and ("gate" in data) == (command in ("run", "demo", "search"))
    assert ("cluster" in data) == (command in ("run", "demo"))
    path = _write(tmp_path, text)
    assert parse_run_config([command, "--config", str(path)]) == config
    assert _printed([command, "--config", str(path)], capsys) == text
    if command == "supernet":                                  # its own options, by name beside the RunConfig
        assert (data["dim_choices"], data["per_sample"], data["warmup_steps"]) == ("2,8", True, 7)


def test_run_s_printed_config_holds_what_its_flags_set(capsys) -> None:
    data = yaml.safe_load(_printed(RUN_CONFIG_ARGV["run"], capsys))
    assert data["model"]["dim"] == 8 and data["model"]["dnn_hidden_units"] == [32, 16]
    assert data["cluster"] == {"k": None, "candidate_dims": [0, 4, 8], "budget_fit": "auto"}
    assert (data["gate"]["budget"], data["gate"]["sparsity_weight"], data["gate"]["allow_drop_field"]) == (
        None, 0.01, True)
    assert (data["model"]["seed"], data["data"]["seed"], data["data"]["rows"]) == (3, 5, 500)
    assert (data["matched_baseline"], data["fieldwise"], data["search"]["callbacks"]) == (
        False, False, "search_fast_anneal")
    assert data["baseline_epochs"] == 3 + 4                    # resolved, as run.json holds it
    assert "restart" not in data and "config_file" not in data


@pytest.mark.parametrize("command", sorted(OTHER_ARGV))
def test_other_commands_print_their_options_by_name_and_read_them_back(command: str, tmp_path: Path,
                                                                       capsys) -> None:
    argv = OTHER_ARGV[command]
    text = _printed(argv, capsys)
    data = yaml.safe_load(text)
    assert data["run"] == "runs/x"
    path = _write(tmp_path, text)
    assert _printed([command, "--config", str(path)], capsys) == text
    first, second = vars(_args(argv)), vars(_args([command, "--config", str(path)]))
    assert {k: v for k, v in first.items() if k != "config_file"} == {
        k: v for k, v in second.items() if k not in ("config_file", "config_fields")}


def test_pim_s_printed_options(capsys) -> None:
    data = yaml.safe_load(_printed(OTHER_ARGV["pim"], capsys))
    assert data == {"run": "runs/x", "trials": 7, "storage": None, "sampler": "nsga2", "workers": 1,
                    "max_auc_drop": 0.01, "mode": "per_field", "baseline_epochs": None, "cost_vocab": None,
                    "cost_zipf": None, "finetune_steps": 10, "finetune_lr": None, "refit_sweeps": 5,
                    "refit_prior": 1.0, "refit_rows": 40000, "device": "cpu", "quiet": False, "study_name": "pim",
                    "seed": 0}


def test_print_config_runs_nothing_and_prints_a_missing_required_option_as_null(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["run", "--out", str(out), "--rows", "300", "--print-config"]) == 0
    assert not out.exists()
    assert yaml.safe_load(_printed(["export"], capsys))["run"] is None


def test_a_flag_on_the_command_line_beats_the_file(tmp_path: Path) -> None:
    nested = _write(tmp_path, "model:\n  dim: 8\n  lr: 0.01\ntrainer: {epochs: 2}\n")
    for argv in (["run", "--config", str(nested), "--dim", "16"], ["run", "--dim", "16", "--config", str(nested)]):
        config = parse_run_config(argv)                        # 16 is --dim's default: given, it still wins
        assert (config.model.dim, config.model.lr, config.trainer.epochs) == (16, 0.01, 2)
    flat = _write(tmp_path, "dim: 8\nbatch_size: 64\n", "flat.yaml")
    config = parse_run_config(["search", "--config", str(flat), "--batch-size", "32"])
    assert (config.model.dim, config.data.batch_size) == (8, 32)
    export = _write(tmp_path, "run: runs/a\nformat: onnx\n", "export.yaml")
    args = _args(["export", "--config", str(export), "--format", "torchscript"])
    assert (args.run, args.format) == ("runs/a", "torchscript")  # a required option given by the file


def test_a_file_sets_fields_no_option_sets(tmp_path: Path) -> None:
    path = _write(tmp_path, "data: {val_share: 0.2}\nmodel: {dnn_dropout: 0.1, options: {cross_num: 3}}\n"
                            "gate: {hidden: 16}\n")
    config = parse_run_config(["run", "--config", str(path), "--dim", "4"])
    assert (config.data.val_share, config.model.dnn_dropout, config.model.options, config.gate.hidden) == (
        0.2, 0.1, {"cross_num": 3}, 16)
    assert config.model.dim == 4 and config.data.test_share == RunConfig().data.test_share


def test_a_file_s_seeds_follow_the_options_as_flags_do(tmp_path: Path) -> None:
    same = _write(tmp_path, "data: {seed: 2}\nmodel: {seed: 2}\n")
    config = parse_run_config(["run", "--config", str(same), "--seed", "7"])
    assert (config.data.seed, config.model.seed) == (7, 7)     # equal seeds: the split follows --seed
    apart = _write(tmp_path, "data: {seed: 2}\nmodel: {seed: 1}\n", "apart.yaml")
    config = parse_run_config(["run", "--config", str(apart), "--seed", "7"])
    assert (config.data.seed, config.model.seed) == (2, 7)     # set apart: as --split-seed


@pytest.mark.parametrize(("command", "text", "message"), [
    ("run", "model:\n  dimm: 8\n", "unknown key 'model.dimm' for `ihas run` (model takes: backbone, dim"),
    ("run", "epochz: 3\n", "unknown key 'epochz' for `ihas run`"),
    ("train", "gate: {budget: 0.3}\n", "unknown key 'gate' for `ihas train`"),
    ("pim", "trials: 5\nsamplr: tpe\n", "unknown key 'samplr' for `ihas pim` (it takes run, trials"),
    ("run", "restart: true\n", "unknown key 'restart'"),
    ("run", "trainer: {epochs: '3'}\n", "'trainer.epochs' must be an integer, got '3'"),
    ("run", "model: {dnn_hidden_units: [64, x]}\n", "'model.dnn_hidden_units' must be a list of integers"),
    ("run", "model: DeepFM\n", "'model' must be a mapping of model settings"),
    ("pim", "sampler: random\n", "'sampler' must be one of 'tpe', 'nsga2', 'gp', got 'random'"),
    ("export", "run: [a, b]\n", "'run' must be a string or null"),
    ("search", "callbacks:\n  - class_path: os.system\n", "a callbacks file itself is given with --callbacks"),
    ("run", "- dim: 8\n", "a config file holds a mapping of settings to values"),
    ("run", "", "got nothing"),
    ("run", "model: {dim: 8\n", "not valid YAML"),
    ("run", "dim: 8\nmodel: {dim: 4}\n", "'dim' and 'model.dim' both set --dim: keep one"),
    ("run", "gate: {min_dim: 0, allow_drop_field: false}\n", "it is true exactly when gate.min_dim is 0"),
    ("run", "model: {dim: 0}\n", "dim must be an int >= 1, got 0 (with the settings of"),
])
def test_a_bad_file_is_refused_naming_the_file_and_the_key(command: str, text: str, message: str, tmp_path: Path,
                                                           capsys) -> None:
    path = _write(tmp_path, text)
    argv = [command, "--config", str(path), "--out", str(tmp_path / "out")] if command in ("run", "train") else [
        command, "--config", str(path)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ihas {command}: error: ") and message in err and str(path) in err, err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["!!python/object/apply:os.system ['touch {marker}']\n",
                                  "out: !!python/object/apply:os.system ['touch {marker}']\n",
                                  "model: !!python/object/new:subprocess.Popen [['touch', '{marker}']]\n"])
def test_a_python_tag_is_refused_and_nothing_runs(text: str, tmp_path: Path, capsys) -> None:
    marker = tmp_path / "ran"
    path = _write(tmp_path, text.format(marker=marker))
    for argv in (["run", "--config", str(path), "--out", str(tmp_path / "out")], ["export", "--config", str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{path}: refusing YAML tag 'tag:yaml.org,2002:python/object" in err, err
        assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_required_option_neither_the_file_nor_a_flag_gives_is_argparse_s_error(tmp_path: Path, capsys) -> None:
    path = _write(tmp_path, "format: onnx\n")
    with pytest.raises(SystemExit) as stop:
        main(["export", "--config", str(path)])
    assert stop.value.code == 2
    assert "the following arguments are required: --run" in capsys.readouterr().err
    with pytest.raises(SystemExit):                            # without --config: argparse as before
        main(["export", "--format", "onnx"])
    assert "the following arguments are required: --run" in capsys.readouterr().err


def test_a_callbacks_preset_given_to_config_points_to_callbacks(capsys) -> None:
    assert main(["search", "--config", "search_fast_anneal"]) == 2
    assert "'search_fast_anneal' is a callbacks preset, given with --callbacks search_fast_anneal" in (
        capsys.readouterr().err)
    assert parse_run_config(["search", "--callbacks", "search_fast_anneal"]).search.callbacks == "search_fast_anneal"

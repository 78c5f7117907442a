"""Callback presets: the packaged YAML sets load with their arguments, and a callbacks YAML can never run
code (issue 20): only ``Callback`` classes from the allowed modules are resolved and called."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch
from pytorch_lightning.callbacks import EarlyStopping

from ihas_lightning.callbacks import (GateStatisticsLogger, RegularizerWarmup, SupernetSampler, TemperatureAnnealing,
                                      load_callbacks, preset_names)
from ihas_lightning.cli import main

EXPECTED = {
    "search": [(TemperatureAnnealing, {"start": 0.6667, "end": 0.1, "steps": 600}),
               (RegularizerWarmup, {"steps": 100, "start": 0.0}),
               (GateStatisticsLogger, {"every_n_epochs": 1})],
    "search_fast_anneal": [(TemperatureAnnealing, {"start": 0.6667, "end": 0.2, "steps": 150}),
                           (RegularizerWarmup, {"steps": 30, "start": 0.0}),
                           (GateStatisticsLogger, {"every_n_epochs": 1})],
}


def _yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "callbacks.yaml"
    path.write_text(text)
    return path


def test_every_packaged_preset_loads_with_the_right_classes_and_args() -> None:
    assert preset_names() == ["search", "search_fast_anneal", "supernet"], "a new preset needs expectations here"
    for name, expected in EXPECTED.items():
        callbacks = load_callbacks(name)
        assert [type(c) for c in callbacks] == [cls for cls, _ in expected], name
        for callback, (_, args) in zip(callbacks, expected):
            for key, value in args.items():
                assert getattr(callback, key) == pytest.approx(value), (name, key)
    (sampler,) = load_callbacks("supernet")
    assert isinstance(sampler, SupernetSampler)
    assert sampler.config.dim_choices == (2, 4, 8, 16) and sampler.config.warmup_steps == 500
    assert sampler.config.width_choices == (0.25, 0.5, 0.75, 1.0) and sampler.seed == 0
    assert sampler.config.per_sample is False and sampler.config.sample_widths is True


def test_presets_live_in_the_package_not_the_clone() -> None:
    import ihas_lightning

    folder = Path(ihas_lightning.__file__).parent / "configs" / "callbacks"
    assert sorted(p.stem for p in folder.glob("*.yaml")) == preset_names()


def test_a_file_loads_by_path_and_a_bare_list_is_accepted(tmp_path) -> None:
    path = _yaml(tmp_path, "- class_path: pytorch_lightning.callbacks.EarlyStopping\n"
                           "  init_args: {monitor: val_auc, mode: max, patience: 4}\n"
                           "- class_path: ihas_lightning.callbacks.temperature_annealing.TemperatureAnnealing\n")
    stopping, annealing = load_callbacks(str(path))
    assert isinstance(stopping, EarlyStopping) and stopping.monitor == "val_auc" and stopping.patience == 4
    assert isinstance(annealing, TemperatureAnnealing) and annealing.steps == TemperatureAnnealing().steps
    assert [type(c) for c in load_callbacks(path)] == [EarlyStopping, TemperatureAnnealing]    # a Path too


@pytest.mark.parametrize("class_path", ["os.system", "subprocess.Popen", "builtins.eval", "posix.system"])
def test_code_running_class_paths_are_refused_and_never_run(tmp_path, class_path) -> None:
    marker = tmp_path / "ran"
    command = f"touch {marker}"
    argument = {"os.system": "command", "posix.system": "command", "subprocess.Popen": "args",
                "builtins.eval": "source"}[class_path]
    value = f"__import__('os').system('{command}')" if class_path == "builtins.eval" else command
    path = _yaml(tmp_path, f"callbacks:\n  - class_path: {class_path}\n    init_args:\n      {argument}: \"{value}\"\n")
    message = (rf"{re.escape(str(path))}: callback #1: refusing class_path '{class_path}'.*"
               r"ihas_lightning\.callbacks or pytorch_lightning\.callbacks")
    with pytest.raises(ValueError, match=message):
        load_callbacks(path)
    assert not marker.exists()


def test_a_module_outside_the_allow_list_is_never_imported(tmp_path, monkeypatch) -> None:
    marker = tmp_path / "imported"
    package = tmp_path / "evil_callbacks_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from pytorch_lightning import Callback\nclass Sneaky(Callback):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _yaml(tmp_path, "callbacks:\n  - class_path: evil_callbacks_pkg.Sneaky\n")
    with pytest.raises(ValueError, match="refusing class_path 'evil_callbacks_pkg.Sneaky'"):
        load_callbacks(path)
    assert not marker.exists() and "evil_callbacks_pkg" not in sys.modules
    # a look-alike prefix is outside too
    path = _yaml(tmp_path, "callbacks:\n  - class_path: ihas_lightning.callbacksX.Sneaky\n")
    with pytest.raises(ValueError, match="refusing class_path 'ihas_lightning.callbacksX.Sneaky'"):
        load_callbacks(path)
    # a Python caller may widen the allow-list explicitly
    (callback,) = load_callbacks(_yaml(tmp_path, "- class_path: evil_callbacks_pkg.Sneaky\n"),
                                 allowed_modules=("evil_callbacks_pkg",))
    assert type(callback).__name__ == "Sneaky" and marker.exists()
    del sys.modules["evil_callbacks_pkg"]
    with pytest.raises(ValueError, match="sequence of module prefixes"):
        load_callbacks("search", allowed_modules="ihas_lightning.callbacks")


@pytest.mark.parametrize("class_path", ["ihas_lightning.callbacks.presets.Path",     # a class, not a Callback
                                        "ihas_lightning.callbacks.load_callbacks",    # a function
                                        "ihas_lightning.callbacks.presets.importlib",  # a module
                                        "pytorch_lightning.callbacks.early_stopping.torch"])
def test_a_non_callback_in_an_allowed_module_is_refused(tmp_path, class_path) -> None:
    path = _yaml(tmp_path, f"callbacks:\n  - class_path: {class_path}\n    init_args: {{path: {tmp_path}}}\n")
    message = rf"{re.escape(str(path))}: callback #1: refusing class_path '{class_path}': not a Callback"
    with pytest.raises(ValueError, match=message):
        load_callbacks(path)


def test_malformed_files_give_errors_that_name_the_file(tmp_path) -> None:
    cases = {
        "callbacks: [unclosed\n": "not valid YAML",
        "": "expected a list of callbacks",
        "callbacks:\n  - init_args: {steps: 3}\n": r"callback #1 needs a 'class_path'",
        "callbacks:\n  - class_path: ihas_lightning.callbacks.NoSuchCallback\n": "has no 'NoSuchCallback'",
        "callbacks:\n  - class_path: ihas_lightning.callbacks.nosuchmodule.X\n": "cannot import",
        "callbacks:\n  - class_path: TemperatureAnnealing\n": "refusing class_path 'TemperatureAnnealing'",
        "callbacks:\n  - class_path: [1, 2]\n": "class_path must be a dotted name",
        "callbacks:\n  - class_path: ihas_lightning.callbacks.TemperatureAnnealing\n    init_arg: {steps: 3}\n":
            r"unknown keys \['init_arg'\]",
        "trainer: {max_epochs: 3}\ncallbacks: []\n": "expected one top-level key 'callbacks'",
        "- class_path: ihas_lightning.callbacks.GateStatisticsLogger\n"
        "- class_path: ihas_lightning.callbacks.TemperatureAnnealing\n  init_args: {steps: -7}\n":
            r"callback #2 \(TemperatureAnnealing\): bad init_args .*-7",
        "- class_path: ihas_lightning.callbacks.TemperatureAnnealing\n  init_args: {stepz: 7}\n":
            r"callback #1 \(TemperatureAnnealing\): bad init_args .*stepz",
        "- class_path: ihas_lightning.callbacks.TemperatureAnnealing\n  init_args: [7]\n":
            "'init_args' must map argument names to values",
    }
    for text, message in cases.items():
        path = _yaml(tmp_path, text)
        with pytest.raises(ValueError, match=message) as error:
            load_callbacks(path)
        assert str(error.value).startswith(f"{path}:"), (text, str(error.value))


def test_a_missing_file_lists_the_presets(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"no such callbacks file.*search, search_fast_anneal, supernet"):
        load_callbacks(tmp_path / "search")              # a Path is always a path, never a preset name
    with pytest.raises(ValueError, match="no such callbacks file"):
        load_callbacks("callbacks/search.yaml")


def test_the_search_cli_refuses_a_code_running_config(tmp_path, capsys) -> None:
    marker = tmp_path / "ran"
    config = _yaml(tmp_path, f"callbacks:\n  - class_path: os.system\n    init_args: {{command: 'touch {marker}'}}\n")
    code = main(["search", "--data", "synthetic", "--rows", "400", "--epochs", "1", "--warmup-epochs", "0",
                 "--dnn", "8",
                 "--out", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--quiet",
                 "--callbacks", str(config)])
    assert code == 2 and not marker.exists()
    assert "refusing class_path 'os.system'" in capsys.readouterr().err


def test_the_search_cli_takes_a_preset_name_from_any_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)                          # no clone around: the preset comes from the package
    code = main(["search", "--data", "synthetic", "--rows", "600", "--epochs", "2", "--dnn", "8", "--out", "run",
                 "--cache-dir", "cache", "--quiet", "--callbacks", "search_fast_anneal"])
    assert code == 0
    state = torch.load(tmp_path / "run" / "search" / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    assert "TemperatureAnnealing{'start': 0.6667, 'end': 0.2, 'steps': 150}" in state
    assert "RegularizerWarmup{'steps': 30, 'start': 0.0}" in state

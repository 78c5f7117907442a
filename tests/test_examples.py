"""The examples run as documented (tiny settings)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_drop_in_existing_trainer_runs(tmp_path, capsys) -> None:
    example = _load("drop_in_existing_trainer")
    results = example.main(["--rows", "3000", "--epochs", "2", "--batch-size", "256", "--out", str(tmp_path / "run"),
                            "--cache-dir", str(tmp_path / "cache")])
    plain, search = results["plain"], results["search"]
    assert 0.0 < plain["val_auc"] < 1.0 and 0.0 < search["val_auc"] < 1.0
    assert 2.0 <= search["mean_active_dims"] <= 16.0 and not math.isnan(search["mean_active_dims"])
    assert list(search["mean_active_dims_per_field"]) == [f"C{i}" for i in range(1, 9)]
    assert search["distinct_masks"] >= 1
    checkpoint = torch.load(search["checkpoint"], weights_only=True)
    assert "gates.out.weight" in checkpoint["state_dict"]
    assert (tmp_path / "run" / "checkpoints" / "plain" / "last.ckpt").exists()
    assert any((tmp_path / "run" / "search").rglob("events.out.tfevents*"))
    assert '"search"' in capsys.readouterr().out

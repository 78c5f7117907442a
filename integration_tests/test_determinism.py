"""The same seed twice gives bit-identical gates and metrics on CPU; another seed does not (issue 8)."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from _tiny import STAGES, model_state, tiny_dm, trainer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ihas_cache")


def _search(root: Path, cache_dir: Path, seed: int) -> tuple[dict, dict, torch.Tensor]:
    pl.seed_everything(seed)
    dm = tiny_dm(cache_dir)
    module, callbacks = STAGES["search"](dm, seed=seed)
    tr = trainer(root, callbacks, max_epochs=2)
    tr.fit(module, dm)
    metrics = {k: v.clone() for k, v in tr.callback_metrics.items()}
    gates = {k: v.clone() for k, v in model_state(module).items() if k.startswith("gates.")}
    return gates, metrics, module.last_val_summary["mean_prob"].clone()


def test_same_seed_is_bit_identical_and_another_seed_is_not(tmp_path: Path, cache_dir: Path) -> None:
    gates_a, metrics_a, prob_a = _search(tmp_path / "a", cache_dir, seed=3)
    gates_b, metrics_b, prob_b = _search(tmp_path / "b", cache_dir, seed=3)
    gates_c, metrics_c, prob_c = _search(tmp_path / "c", cache_dir, seed=4)

    assert set(gates_a) >= {"gates.hidden.weight", "gates.out.weight", "gates.temperature",
                            "gates.controller.lam", "gates.norm.running_mean"}
    assert sorted(metrics_a) == sorted(metrics_b) and "val_auc" in metrics_a
    for key in gates_a:                                   # bit-identical: torch.equal, no tolerance
        assert torch.equal(gates_a[key], gates_b[key]), key
    for key in metrics_a:
        assert torch.equal(metrics_a[key], metrics_b[key]), key
    assert torch.equal(prob_a, prob_b)

    assert not torch.equal(gates_a["gates.out.weight"], gates_c["gates.out.weight"])
    assert not torch.equal(prob_a, prob_c)
    assert metrics_a["val_auc"] != metrics_c["val_auc"]

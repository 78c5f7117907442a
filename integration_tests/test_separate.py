"""``ihas run --separate``: the separate-models variant (one model per group, trained on its own rows only).

Tiny settings as in ``test_pipeline.py`` (3200 training rows, DeepFM at dimension 8), one torch thread.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ihas_lightning.cli import main
from ihas_lightning.data.datamodule import CTRDataModule

ROWS, BATCH = 4000, 256


def test_separate_models_partition_the_data_and_sum_their_tables(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    out, cache = tmp_path / "run", tmp_path / "cache"
    code = main(["run", "--rows", str(ROWS), "--epochs", "2", "--warmup-epochs", "1", "--retrain-epochs", "1",
                 "--baseline-epochs", "1", "--dnn", "32,16", "--dim", "8", "--batch-size", str(BATCH), "--quiet",
                 "--cache-dir", str(cache), "--candidate-dims", "0,2,4,8", "--seed", "0", "--k", "2",
                 "--separate", "--out", str(out)])
    assert code == 0
    separate = json.loads((out / "separate" / "metrics.json").read_text())
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["ihas_separate"]["test_auc"] == separate["test_auc"]
    assert 0.5 < separate["test_auc"] <= 1.0 and separate["test_logloss"] > 0
    dm = CTRDataModule("synthetic", rows=ROWS, batch_size=BATCH, seed=0, cache_dir=str(cache))
    dm.prepare_data()
    dm.setup("fit")
    trained = [g for g in separate["per_group"] if "skipped" not in g]
    # every training row went to exactly one group; each model holds full-vocabulary tables at its dims
    assert sum(g["train_rows"] for g in separate["per_group"]) == len(dm.split("train"))
    assert sum(g["test_rows"] for g in trained) == len(dm.split("test"))
    for g in trained:
        dims = separate["dims"][str(g["group"])]
        assert g["embedding_params"] == sum(dm.vocab_sizes[f] * d for f, d in dims.items())
    assert separate["embedding_params"] == sum(g["embedding_params"] for g in trained)
    assert abs(sum(separate["group_share_test"]) - 1.0) < 1e-9
    # a finished stage is not redone
    before = (out / "separate" / "metrics.json").stat().st_mtime_ns
    assert main(["run", "--rows", str(ROWS), "--epochs", "2", "--warmup-epochs", "1", "--retrain-epochs", "1",
                 "--baseline-epochs", "1", "--dnn", "32,16", "--dim", "8", "--batch-size", str(BATCH), "--quiet",
                 "--cache-dir", str(cache), "--candidate-dims", "0,2,4,8", "--seed", "0", "--k", "2",
                 "--separate", "--out", str(out)]) == 0
    assert (out / "separate" / "metrics.json").stat().st_mtime_ns == before

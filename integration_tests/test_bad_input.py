"""Bad input fails at the boundary with a message naming the column, the value and the limit, never inside
torch (issue 8); large ids pass exactly; a non-finite loss says where; unseen categories go to OOV."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from ihas_lightning.backbones import build_backbone
from ihas_lightning.data.loader import to_batch
from ihas_lightning.data.schema import DataFormatError, RawColumns, Schema
from ihas_lightning.modules import NonFiniteLossError, SearchModule

from _tiny import STAGES, tiny_dm, trainer


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ihas_cache")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cache_dir):
    """A search module after one epoch, its checkpoint and a validation batch."""
    root = tmp_path_factory.mktemp("run")
    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, callbacks = STAGES["search"](dm)
    tr = trainer(root, callbacks, max_epochs=2)
    tr.fit(module, dm)
    tr.save_checkpoint(root / "run.ckpt")
    batch = to_batch(dm.split("val").take(np.arange(32)))
    return module.eval(), root / "run.ckpt", batch, dm


def _bad(batch: dict, key: str, row: int, col: int, value) -> dict:
    bad = {k: v.clone() for k, v in batch.items()}
    bad[key][row, col] = value
    return bad


def test_id_at_or_above_the_vocabulary_names_column_value_and_limit(trained) -> None:
    module, _, batch, dm = trained
    size = dm.vocab_sizes["C3"]
    with pytest.raises(IndexError, match=rf"column 'C3': id {size + 7} >= vocabulary size {size} \(batch row 5\)"):
        module(_bad(batch, "sparse", 5, 2, size + 7))
    with pytest.raises(IndexError, match=rf"column 'C1': id {dm.vocab_sizes['C1']} >= vocabulary size"):
        module(_bad(batch, "sparse", 0, 0, dm.vocab_sizes["C1"]))              # the first id past the end


def test_negative_id_names_the_column(trained) -> None:
    module, _, batch, _ = trained
    with pytest.raises(IndexError, match=r"column 'C8': id -3 is negative \(batch row 1\)"):
        module(_bad(batch, "sparse", 1, 7, -3))


def test_out_of_range_ids_go_to_the_oov_bucket_where_configured(trained) -> None:
    module, _, batch, dm = trained
    bad = _bad(batch, "sparse", 5, 2, dm.vocab_sizes["C3"] + 7)
    bad["sparse"][6, 0] = -1
    oov = _bad(_bad(batch, "sparse", 5, 2, 1), "sparse", 6, 0, 1)                 # what "oov" must mean
    module.backbone.out_of_range = "oov"
    try:
        with torch.no_grad():
            torch.testing.assert_close(module(bad), module(oov), rtol=0, atol=0)
    finally:
        module.backbone.out_of_range = "error"


def test_nan_in_a_dense_or_sparse_column(trained) -> None:
    module, _, batch, _ = trained
    with pytest.raises(ValueError, match=r"column 'I2': value nan in batch row 3 is not finite"):
        module(_bad(batch, "dense", 3, 1, float("nan")))
    with pytest.raises(ValueError, match=r"column 'I4': value inf in batch row 0 is not finite"):
        module(_bad(batch, "dense", 0, 3, float("inf")))
    floats = dict(batch, sparse=batch["sparse"].double())
    floats["sparse"][4, 1] = float("nan")
    with pytest.raises(TypeError, match=r"column 'C2': ids must be an integer tensor \(int64\), got torch.float64 "
                                        r"\(value nan in batch row 4\)"):
        module(floats)


def test_missing_or_extra_column(trained) -> None:
    module, _, batch, dm = trained
    with pytest.raises(ValueError, match=r"batch\['sparse'\] must be \(B, 8\) for columns \['C1', .*'C8'\], got "
                                         r"shape \(32, 7\): a column is missing or extra"):
        module(dict(batch, sparse=batch["sparse"][:, :7]))
    with pytest.raises(ValueError, match=r"batch\['dense'\] must be \(B, 4\) .* got shape \(32, 5\)"):
        module(dict(batch, dense=torch.cat([batch["dense"], batch["dense"][:, :1]], 1)))
    # raw rows: the schema's columns must all be there, and no others
    schema = dm.schema
    n = 3
    sparse = {c: np.array(["1"] * n, dtype=object) for c in schema.sparse}
    dense = {c: np.ones(n) for c in schema.dense}
    with pytest.raises(DataFormatError, match=r"columns \['C5'\] of the schema are missing"):
        RawColumns(schema, np.zeros(n, np.float32), {k: v for k, v in sparse.items() if k != "C5"}, dense)
    with pytest.raises(DataFormatError, match=r"columns \['C99'\] are not in the schema"):
        RawColumns(schema, np.zeros(n, np.float32), {**sparse, "C99": sparse["C1"]}, dense)


def test_label_outside_zero_one(trained, tmp_path: Path) -> None:
    module, _, batch, _ = trained
    with pytest.raises(ValueError, match=r"column 'label': label must be 0 or 1, got 2.0 \(training batch row 4\)"):
        module.training_step(dict(batch, label=torch.where(torch.arange(32) == 4, 2.0, batch["label"])), 0)
    with pytest.raises(ValueError, match=r"column 'label': label must be 0 or 1, got nan \(val batch row 0\)"):
        module.validation_step(dict(batch, label=torch.where(torch.arange(32) == 0, float("nan"),
                                                             batch["label"])), 0)


def test_checkpoint_against_a_different_schema(trained, tmp_path: Path, cache_dir: Path) -> None:
    module, path, _, dm = trained
    # other columns: drop dense I4
    schema = Schema(label="label", sparse=dm.schema.sparse, dense=dm.schema.dense[:3],
                    log_dense=dm.schema.log_dense[:3])
    other = SearchModule(schema, dm.vocab_sizes, dim=4, dnn_hidden_units=(8,))
    with pytest.raises(ValueError, match=r"columns only in the checkpoint: \['I4'\], only in this module: \[\]"):
        other.on_load_checkpoint(torch.load(path, weights_only=True))
    # same columns, another vocabulary (data of another size)
    vocab = dict(dm.vocab_sizes, C2=dm.vocab_sizes["C2"] + 10)
    other = SearchModule(dm.schema, vocab, dim=4, dnn_hidden_units=(8,))
    with pytest.raises(ValueError, match=rf"column 'C2': the checkpoint's vocabulary size is "
                                         rf"{dm.vocab_sizes['C2']}, this module's table has {vocab['C2']} rows"):
        other.on_load_checkpoint(torch.load(path, weights_only=True))
    # ... and through Trainer.fit(ckpt_path=...) the same error, before any weight is loaded
    with pytest.raises(ValueError, match="column 'C2': the checkpoint's vocabulary size"):
        trainer(tmp_path, [], max_epochs=3).fit(other, tiny_dm(cache_dir), ckpt_path=str(path))


def test_ids_above_2_pow_24_pass_exactly() -> None:
    """float32 (DeepCTR-Torch's own input) maps 2**24 + 1 to 2**24; our int64 path reads the right row."""
    schema = Schema(label="label", sparse=("big", "small"), dense=())
    vocab = {"big": 2**24 + 8, "small": 10}
    backbone = build_backbone("DeepFM", schema, vocab, dim=2, dnn_hidden_units=(4,), seed=0)
    ids = torch.tensor([[2**24, 1], [2**24 + 1, 2], [2**24 + 7, 3]])
    batch = {"sparse": ids, "dense": torch.zeros(3, 0), "multi": torch.zeros(3, 0, dtype=torch.long),
             "label": torch.zeros(3)}
    embeddings = backbone.field_embeddings(backbone.check_batch(batch))                      # (3, 2, 2)
    table = backbone.model.embedding_dict["big"].weight
    for row, id_ in enumerate(ids[:, 0].tolist()):
        assert torch.equal(embeddings[row, 0], table[id_])
    assert not torch.equal(table[2**24], table[2**24 + 1])
    assert torch.isfinite(backbone(batch)).all()
    with pytest.raises(IndexError, match=rf"column 'big': id {2**24 + 8} >= vocabulary size {2**24 + 8}"):
        backbone(dict(batch, sparse=torch.tensor([[2**24 + 8, 1]]), label=torch.zeros(1), dense=torch.zeros(1, 0),
                      multi=torch.zeros(1, 0, dtype=torch.long)))


class _PoisonAt(Callback):
    """Sets one output weight to NaN before training step ``step`` (a diverged optimizer, reproducibly)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                pl_module.backbone.model.dnn_linear.weight[0, 0] = float("nan")


def test_non_finite_loss_stops_training_and_says_where(tmp_path: Path, cache_dir: Path) -> None:
    pl.seed_everything(0)
    dm = tiny_dm(cache_dir)
    module, callbacks = STAGES["search"](dm)
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss nan at epoch 1, step 15 \(batch 3\)"):
        trainer(tmp_path, [*callbacks, _PoisonAt(15)], max_epochs=3).fit(module, dm)


def test_unseen_categories_map_to_oov_with_finite_predictions_and_a_logged_rate(trained, caplog) -> None:
    module, _, _, dm = trained
    schema = dm.schema
    n = 8
    rng = np.random.default_rng(0)
    vocabularies = module.encoder.vocabularies

    def known(column: str) -> list[str]:
        tokens = vocabularies[column].tokens
        return list(tokens[:3]) if tokens is not None else ["0", "1", "2"]

    sparse = {c: np.array([known(c)[v] for v in rng.integers(0, 3, n)], dtype=object) for c in schema.sparse}
    sparse["C1"][:4] = ["never-seen", "zzzzzzzzzz", "-5", "nan"]               # 4 of 64 values are unseen
    dense = {c: rng.random(n) for c in schema.dense}
    dense["I1"][0] = np.nan                                                    # raw NaN = missing: allowed
    raw = RawColumns(schema, np.zeros(n, np.float32), sparse, dense)
    with caplog.at_level(logging.INFO, logger="ihas_lightning.modules.base"):
        probs = module.predict_raw(raw)
    assert probs.shape == (n,) and np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
    assert module.last_oov_rate == pytest.approx(4 / (n * len(schema.sparse)))
    assert "OOV rate 0.0625" in caplog.text
    encoded = module.encoder.transform(raw)
    assert (encoded.sparse[:4, 0] == 1).all()                                  # the OOV id

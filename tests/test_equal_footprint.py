"""Per-field widths at a parameter target: the matched (d or d+1) and mixed-dimension rules by hand and on real
vocabularies, and a ``BackboneModule`` with ``field_dims``: stored widths, counts, checkpoints old and new."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.flops import backbone_flops, uniform_counts
from ihas_lightning.footprint_dims import (footprint_gap, matched_field_dims, mde_field_dims, remainder_fields,
                                           table_params)
from ihas_lightning.modules import BackboneModule

VOCAB = {"a": 10, "b": 30, "c": 60}


def test_matched_dims_by_hand() -> None:
    # rows 100, d = 2, remainder 40 = a + b ("fits" pass); the "closer" pass would take c (60) alone
    assert matched_field_dims(240, VOCAB) == {"a": 3, "b": 3, "c": 2}
    assert remainder_fields(40, VOCAB, list(VOCAB)) == ["b", "a"]
    # remainder 55: "fits" reaches 40 (b + a), "closer" 60 (c): |55-60| < |55-40| keeps c
    assert matched_field_dims(255, VOCAB) == {"a": 2, "b": 2, "c": 3}
    assert matched_field_dims(300, VOCAB) == {"a": 3, "b": 3, "c": 3}          # a multiple: uniform
    assert matched_field_dims(50, VOCAB) == {"a": 1, "b": 1, "c": 1}           # never below 1 column


def test_a_coarse_vocabulary_gives_the_closest_and_its_gap() -> None:
    vocab = {"big": 1000, "small": 5}
    dims = matched_field_dims(1500, vocab)                                     # d = 1, remainder 495
    assert dims == {"big": 1, "small": 2}
    assert table_params(dims, vocab) == 1010
    assert footprint_gap(1010, 1500) == pytest.approx(-490 / 1500)


def test_mde_dims_by_hand() -> None:
    assert mde_field_dims(300, VOCAB, 0.0, 16) == {"a": 3, "b": 3, "c": 3}     # alpha 0: uniform
    # alpha 0.5: widths lambda / sqrt(vocab), lambda = 300 / sum(sqrt(vocab)) = 18.97 -> 6.0, 3.46, 2.45;
    # floored 6, 3, 2 = 270; the remainder 30 goes to b
    assert mde_field_dims(300, VOCAB, 0.5, 16) == {"a": 6, "b": 4, "c": 2}
    assert table_params(mde_field_dims(300, VOCAB, 0.5, 16), VOCAB) == 300
    # a larger alpha gives the large-vocabulary field fewer columns, within [1, max_dim]
    dims = mde_field_dims(500, VOCAB, 1.0, 16)
    assert dims["c"] < dims["b"] < dims["a"] <= 16 and min(dims.values()) >= 1
    assert mde_field_dims(10_000, VOCAB, 0.3, 8) == {"a": 8, "b": 8, "c": 8}   # capped at max_dim
    with pytest.raises(ValueError, match="alpha"):
        mde_field_dims(300, VOCAB, -0.1, 16)


def _vocab(path: Path, format: str, cache: Path) -> dict[str, int]:
    dm = CTRDataModule(str(path), format=format, cache_dir=str(cache), seed=0)
    dm.prepare_data()
    dm.setup("fit")
    return {f: dm.vocab_sizes[f] for f in dm.schema.embedded_fields}


@pytest.mark.parametrize("name, format", [("criteo/train-10k.txt", "criteo"), ("movielens/ml-100k", "movielens-100k")])
def test_real_vocabularies_are_matched_within_one_percent(name: str, format: str, data_dir: Path,
                                                          tmp_path: Path) -> None:
    vocab = _vocab(data_dir / name, format, tmp_path)
    rows = sum(vocab.values())
    for share in (0.3, 0.45, 0.52, 0.6, 0.85, 1.3):                        # of uniform-16's tables
        target = round(share * 16 * rows) + 977                             # a router's odd count on top
        dims = matched_field_dims(target, vocab)
        assert len(set(dims.values())) <= 2 and max(dims.values()) - min(dims.values()) <= 1
        assert abs(footprint_gap(table_params(dims, vocab), target)) <= 0.01, (share, dims)
        for alpha in (0.0, 0.2, 0.5):
            mixed = mde_field_dims(target, vocab, alpha, 16)
            if share <= 0.85:                                               # reachable under max_dim 16
                assert abs(footprint_gap(table_params(mixed, vocab), target)) <= 0.01, (share, alpha, mixed)
            assert 1 <= min(mixed.values()) and max(mixed.values()) <= 16


def _tiny_datamodule(cache: Path) -> CTRDataModule:
    dm = CTRDataModule("synthetic", rows=600, batch_size=128, seed=0, cache_dir=str(cache))
    dm.prepare_data()
    dm.setup("fit")
    return dm


def test_backbone_module_stores_the_field_dims_and_counts_them(tmp_path: Path) -> None:
    dm = _tiny_datamodule(tmp_path)
    fields = dm.schema.embedded_fields
    dims = {f: 3 + (i % 2) for i, f in enumerate(fields)}
    module = BackboneModule(dm.schema, dm.vocab_sizes, dim=16, dnn_hidden_units=(8,), seed=1, field_dims=dims)
    tables = module.backbone.model.embedding_dict
    assert {f: tables[f].weight.shape[1] for f in fields} == dims and module.field_dims == dims
    assert module.hparams.dim == 4 and module.backbone.dim == 4                # built at the widest field
    expected = sum(dm.vocab_sizes[f] * d for f, d in dims.items())
    counts = uniform_counts(module.backbone)
    assert counts.embedding_params == expected == module.backbone.embedding_params
    assert counts.router_params == 0 and counts.footprint_params == expected
    assert counts.flops_per_sample == backbone_flops(module.backbone, dims=tuple(dims.values()))
    assert counts.flops_per_sample < backbone_flops(module.backbone)          # below all fields at 4
    batch = next(iter(dm.train_dataloader()))
    assert module(batch).shape == (len(batch["label"]),)
    with pytest.raises(ValueError, match="missing"):
        BackboneModule(dm.schema, dm.vocab_sizes, field_dims={fields[0]: 2})
    with pytest.raises(ValueError, match=">= 1"):
        BackboneModule(dm.schema, dm.vocab_sizes, field_dims={f: 0 for f in fields})


def _saved(module: BackboneModule, dm: CTRDataModule, path: Path) -> Path:
    trainer = pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, dm)
    trainer.save_checkpoint(path)
    return path


def test_checkpoints_with_and_without_field_dims_reload(tmp_path: Path) -> None:
    dm = _tiny_datamodule(tmp_path)
    batch = next(iter(dm.val_dataloader()))
    dims = {f: 2 + (i % 3) for i, f in enumerate(dm.schema.embedded_fields)}
    for field_dims in (dims, None):                        # None: a checkpoint as written before field_dims
        module = BackboneModule(dm.schema, dm.vocab_sizes, dim=6, dnn_hidden_units=(8,), seed=1,
                                field_dims=field_dims)
        path = _saved(module, dm, tmp_path / f"{field_dims is None}.ckpt")
        saved = torch.load(path, weights_only=False)["hyper_parameters"]
        assert ("field_dims" in saved) == (field_dims is not None)
        loaded = BackboneModule.load_from_checkpoint(path)
        assert loaded.field_dims == (field_dims or {f: 6 for f in dm.schema.embedded_fields})
        module.eval()
        loaded.eval()
        with torch.no_grad():
            assert torch.equal(loaded(batch), module(batch))

"""A search (or any module) can start its backbone from another module's checkpoint (e.g. a supernet)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ihas_lightning.data.schema import Schema
from ihas_lightning.modules import SearchModule, SupernetModule

SCHEMA = Schema(label="y", sparse=("a", "b", "c"), dense=("x",))
VOCAB = {"a": 12, "b": 12, "c": 12}


def _checkpoint(tmp_path: Path, dim: int) -> Path:
    supernet = SupernetModule(SCHEMA, VOCAB, dim=dim, dnn_hidden_units=(8, 4), seed=7)
    path = tmp_path / f"supernet{dim}.ckpt"
    torch.save({"state_dict": supernet.state_dict()}, path)
    return path


def test_search_starts_from_the_supernet_backbone(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, dim=8)
    search = SearchModule(SCHEMA, VOCAB, dim=8, dnn_hidden_units=(8, 4), seed=1)
    source = torch.load(path, weights_only=True)["state_dict"]
    before = search.state_dict()["backbone.model.embedding_dict.a.weight"].clone()
    copied = search.init_backbone_from(str(path))
    after = search.state_dict()
    assert copied == sum(k.startswith("backbone.") for k in source)
    assert not torch.equal(before, after["backbone.model.embedding_dict.a.weight"])
    for key, value in source.items():
        if key.startswith("backbone."):
            assert torch.equal(after[key], value), key
    gates_before = SearchModule(SCHEMA, VOCAB, dim=8, dnn_hidden_units=(8, 4), seed=1).gates.state_dict()
    assert all(torch.equal(gates_before[k], v) for k, v in search.gates.state_dict().items())  # gates untouched


def test_a_checkpoint_of_another_dimension_is_refused(tmp_path: Path) -> None:
    path = _checkpoint(tmp_path, dim=4)
    search = SearchModule(SCHEMA, VOCAB, dim=8, dnn_hidden_units=(8, 4))
    with pytest.raises(ValueError, match="shape mismatch"):
        search.init_backbone_from(str(path))


def test_retraining_starts_from_the_supernet_with_the_searched_router(tmp_path: Path) -> None:
    from ihas_lightning.modules import RetrainModule

    dims = [[2, 8, 4], [8, 2, 0]]                            # table widths 8, 8, 4
    search = SearchModule(SCHEMA, VOCAB, dim=8, dnn_hidden_units=(8, 4), seed=1, gate={"prefix": True})
    supernet = torch.load(_checkpoint(tmp_path, dim=8), weights_only=True)["state_dict"]
    retrain = RetrainModule(SCHEMA, VOCAB, group_dims=dims, centroids=torch.rand(2, 24).tolist(),
                            gate=dict(search.hparams.gate), dim=8, dnn_hidden_units=(8, 4), seed=2)
    retrain.warm_start(search.state_dict(), backbone_state=supernet)
    state = retrain.state_dict()
    for key, value in state.items():
        if key.startswith("backbone."):
            assert torch.equal(value, supernet[key][:, :value.shape[1]] if value.ndim == 2 and "embedding_dict" in key
                               and value.shape != supernet[key].shape else supernet[key]), key
        elif key.startswith("gates."):
            assert torch.equal(value, search.state_dict()[key]), key
    assert state["backbone.model.embedding_dict.c.weight"].shape == (12, 4)
    other = torch.load(_checkpoint(tmp_path, dim=4), weights_only=True)["state_dict"]
    with pytest.raises(ValueError, match="shape mismatch"):
        retrain.warm_start(search.state_dict(), backbone_state=other)

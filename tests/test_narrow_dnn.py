"""The supernet's DNN cut to a sub-architecture: the masked network's outputs and gradients, restored on exit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ihas_lightning.callbacks import SupernetSampler
from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.data.loader import to_batch
from ihas_lightning.modules import SupernetModule
from ihas_lightning.narrow_dnn import NARROW_DNN_BACKBONES, NarrowDNN, narrow_dnn_columns
from ihas_lightning.subarchitecture import SubArchitecture

from _supernet_fixtures import tiny_datamodule

DIM = 8
HIDDEN = (16, 8)


@pytest.fixture(scope="module")
def dm() -> CTRDataModule:
    return tiny_datamodule()


def _module(dm: CTRDataModule, backbone: str = "DeepFM", **kwargs) -> SupernetModule:
    torch.manual_seed(0)
    module = SupernetModule(dm.schema, dm.vocab_sizes, backbone=backbone, dim=DIM, dnn_hidden_units=HIDDEN, seed=7,
                            **kwargs)
    with torch.no_grad():                        # DeepCTR-Torch starts the DNN at std 1e-4: make it matter
        for layer in module.backbone.model.dnn.linears:
            layer.weight.normal_(0, 0.3)
            layer.bias.normal_(0, 0.1)
    return module.eval()


def _batch(dm: CTRDataModule, n: int = 64) -> dict:
    return to_batch(dm.split("train").take(np.arange(n)))


def test_columns_are_each_fields_prefix_then_the_dense_values() -> None:
    assert narrow_dnn_columns((2, 0, 3), 4, 1).tolist() == [0, 1, 8, 9, 10, 12]
    assert narrow_dnn_columns((0, 0), 4, 0).tolist() == []


@pytest.mark.parametrize("backbone", NARROW_DNN_BACKBONES)
def test_narrowed_equals_the_masked_network_and_restores_it(dm, backbone: str) -> None:
    module = _module(dm, backbone)
    masks, batch = module.supernet_masks, _batch(dm)
    full = masks.full
    masks.apply(full)
    dnn = module.backbone.model.dnn
    for dims, widths in [((2, 0, 8), (4, 3)), ((1, 1, 1), (16, 8)), ((8, 8, 8), (1, 1)), ((0, 0, 0), (5, 2))]:
        sub = SubArchitecture(masks.fields, dims, widths)
        masks.apply(sub)
        with torch.no_grad():
            masked = module(batch)
            with masks.narrowed(sub) as cut:
                assert cut and isinstance(module.backbone.model.dnn, NarrowDNN)
                assert [w.shape for w in module.backbone.model.dnn.weights] == \
                    [(widths[0], sum(dims) + 1), (widths[1], widths[0])]
                narrow = module(batch)
        torch.testing.assert_close(narrow, masked, rtol=1e-5, atol=1e-6)
        assert module.backbone.model.dnn is dnn and masks.active is sub    # the DNN and what was applied before
    masks.apply(full)
    with torch.no_grad():
        assert not torch.equal(module(batch), masked)                       # the masks really came back


def test_narrow_gradients_are_the_masked_networks_on_the_kept_weights(dm) -> None:
    module = _module(dm)
    masks, batch = module.supernet_masks, _batch(dm)
    sub = SubArchitecture(masks.fields, (2, 8, 4), (8, 5))
    masks.apply(sub)
    F.binary_cross_entropy_with_logits(module(batch), batch["label"]).backward()
    linears = module.backbone.model.dnn.linears
    expected = [linears[0].weight.grad[:8][:, narrow_dnn_columns(sub.dims, DIM, 1)], linears[1].weight.grad[:5, :8]]
    table = module.backbone.model.embedding_dict["A"].weight.grad.to_dense()
    module.zero_grad(set_to_none=True)
    with masks.narrowed(sub):
        narrow = module.backbone.model.dnn
        F.binary_cross_entropy_with_logits(module(batch), batch["label"]).backward()
        narrow_table = module.backbone.model.embedding_dict["A"].weight.grad.to_dense()
    for got, want in zip(narrow.weights, expected):
        torch.testing.assert_close(got.grad, want, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(narrow_table, table, rtol=1e-4, atol=1e-7)
    assert narrow_table[:, 2:].abs().sum() == 0                              # A's masked coordinates: nothing
    assert all(p.grad is None for layer in linears for p in layer.parameters())   # the supernet's DNN untouched


@pytest.mark.parametrize("backbone, kwargs", [("NFM", {}), ("DeepFM", {"options": {"dnn_use_bn": True}})])
def test_a_dnn_it_cannot_cut_runs_masked(dm, backbone: str, kwargs: dict) -> None:
    module = SupernetModule(dm.schema, dm.vocab_sizes, backbone=backbone, dim=DIM, dnn_hidden_units=HIDDEN, seed=7,
                            **kwargs).eval()
    assert module.backbone.model.dnn.use_bn == ("options" in kwargs)
    masks, batch = module.supernet_masks, _batch(dm)
    sub = SubArchitecture(masks.fields, (2, 4, 8), (4, 2))
    masks.apply(sub)
    with torch.no_grad():
        masked = module(batch)
        masks.clear()
        with masks.narrowed(sub) as cut:
            assert not cut and masks.active is sub
            assert torch.equal(module(batch), masked)
    assert masks.active is None


def test_widths_that_do_not_fit_are_refused(dm) -> None:
    dnn = _module(dm).backbone.model.dnn
    with pytest.raises(ValueError, match=r"widths \[17, 8\] do not fit the DNN's layers \[16, 8\]"):
        NarrowDNN(dnn, narrow_dnn_columns((8, 8, 8), DIM, 1), (17, 8))
    with pytest.raises(ValueError, match=r"widths \[4\] do not fit"):
        NarrowDNN(dnn, narrow_dnn_columns((8, 8, 8), DIM, 1), (4,))


@pytest.mark.parametrize("backbone", ["DeepFM", "DCN"])
def test_evaluate_subnet_scores_the_same_narrow_or_masked(tmp_path, dm, backbone: str) -> None:
    pl.seed_everything(0)
    module = SupernetModule(dm.schema, dm.vocab_sizes, backbone=backbone, dim=DIM, dnn_hidden_units=HIDDEN, seed=7,
                            lr=1e-2)
    pl.Trainer(max_epochs=3, callbacks=[SupernetSampler(dim_choices=(2, 4, 8), seed=0)], logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=str(tmp_path), accelerator="cpu").fit(module, dm)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    train, val = list(itertools.islice(dm.stream("train"), 4)), list(dm.stream("val"))
    for dims, widths in [("A=2,B=0", "0.5,0.25"), ("C=1", "1.0,0.5")]:
        sub = module.parse_subarch(dims, widths)
        scores = [module.evaluate_subnet(sub, val, 4, finetune_data=train, finetune_lr=1e-2, finetune_scope="all",
                                         refit_sweeps=2, refit_rows=256, narrow=narrow) for narrow in (True, False)]
        assert scores[0].refit_sweeps == 2 and scores[0].finetune_steps == 4
        assert scores[0].auc == pytest.approx(scores[1].auc, abs=1e-6)
        assert scores[0].logloss == pytest.approx(scores[1].logloss, rel=1e-5)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert module.supernet_masks.active is None and not isinstance(module.backbone.model.dnn, NarrowDNN)

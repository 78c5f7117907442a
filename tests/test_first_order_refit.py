"""The first-order refit before a sub-architecture is scored: its design is the backbone's first-order logit, its
result is the maximum a posteriori fit of those weights with the rest frozen, and the supernet is put back."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from ihas_lightning.callbacks import SupernetSampler
from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.modules import FirstOrderRefit, SupernetModule
from ihas_lightning.subarchitecture import SubArchitecture

from _supernet_fixtures import tiny_datamodule


def _trained(tmp_path: Path, dm: CTRDataModule, backbone: str = "DeepFM") -> SupernetModule:
    pl.seed_everything(0)
    module = SupernetModule(dm.schema, dm.vocab_sizes, backbone=backbone, dim=8, dnn_hidden_units=(16, 8), lr=1e-2,
                            seed=7)
    pl.Trainer(max_epochs=5, callbacks=[SupernetSampler(dim_choices=(0, 2, 4, 8), seed=0)], logger=False,
               enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
               limit_val_batches=0, default_root_dir=str(tmp_path), accelerator="cpu").fit(module, dm)
    return module


def _real(data_dir: Path, tmp_path: Path, name: str) -> CTRDataModule:
    if name == "synthetic":                           # dense features: the first-order part's dense weight
        dm = CTRDataModule("synthetic", rows=3000, batch_size=256, cache_dir=str(tmp_path))
    else:                                             # genres: multi-valued, mean-pooled
        dm = CTRDataModule(str(data_dir / "movielens" / "ml-100k"), format="movielens-100k", cache_dir=str(tmp_path),
                           batch_size=256)
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("name", ["movielens-100k", "synthetic"])
def test_design_is_the_backbones_first_order_logit(data_dir: Path, tmp_path: Path, name: str) -> None:
    dm = _real(data_dir, tmp_path, name)
    module = SupernetModule(dm.schema, dm.vocab_sizes, dim=8, dnn_hidden_units=(16,), seed=3)
    torch.manual_seed(0)
    for p in module.backbone.model.linear_model.parameters():
        torch.nn.init.normal_(p)                          # DeepCTR's init (std 1e-4) would hide a wrong term
    torch.nn.init.zeros_(module.backbone.model.dnn_linear.weight)   # the DNN also reads the dense features
    module.eval()
    batches = list(itertools.islice(dm.stream("train"), 2))
    refit = FirstOrderRefit(module.backbone, batches)
    assert refit.available and refit.size == sum(p.numel() for p in module.backbone.model.linear_model.parameters())
    # every embedding dropped and no DNN output: DeepFM's logit is the first-order logit plus its bias
    masks = module.supernet_masks
    masks.apply(SubArchitecture(masks.fields, (0,) * len(masks.fields), masks.hidden_units))
    with torch.no_grad():
        for index, batch in enumerate(batches):
            rest = module(batch) - refit.logit(refit.read(), index)
            assert rest.std().item() < 1e-5 and refit.logit(refit.read(), index).std().item() > 0.5


def _objective(module: SupernetModule, batches: list, linear: list, inherited: list, prior: float) -> torch.Tensor:
    """The refit's objective: summed logloss of the batches plus prior / 2 * ||w - w_inherited||^2."""
    loss = sum(F.binary_cross_entropy_with_logits(module(b), b["label"], reduction="sum") for b in batches)
    return loss + prior / 2 * sum(((p - p0) ** 2).sum() for p, p0 in zip(linear, inherited))


def test_refit_is_the_map_fit_of_the_first_order_weights_with_the_rest_frozen(tmp_path: Path) -> None:
    dm = tiny_datamodule()
    module = _trained(tmp_path, dm)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    sub = module.parse_subarch("A=0,B=4,C=2", "0.5")        # the click depends on A x B: A's embedding dropped
    train, val = list(itertools.islice(dm.stream("train"), 3)), list(dm.stream("val"))
    refit = module.evaluate_subnet(sub, val, finetune_data=train, refit_sweeps=40, refit_prior=2.0, refit_rows=128)
    both = module.evaluate_subnet(sub, val, 3, finetune_data=train, finetune_lr=1e-2, finetune_scope="all",
                                  refit_sweeps=40, refit_prior=2.0, refit_rows=128)
    plain = module.evaluate_subnet(sub, val)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key                     # the supernet is restored, refit or not
    assert (refit.refit_sweeps, both.refit_sweeps, plain.refit_sweeps) == (40, 40, 0)
    assert both.logloss != refit.logloss                                 # the fine-tune ran after the refit

    # by hand: the refit's weights are a stationary point of its objective on the first 128 rows (2 batches of 64)
    module.eval()
    module.supernet_masks.apply(sub)
    linear = list(module.backbone.model.linear_model.parameters())
    inherited = [p.detach().clone() for p in linear]
    fitter = FirstOrderRefit(module.backbone, train[:2])
    objective = [_objective(module, train[:2], linear, inherited, 2.0).item()]
    for sweeps in (1, 3, 40):                                            # every sweep lowers the objective
        fitter.write(fitter.fit(sweeps, 2.0))
        objective.append(_objective(module, train[:2], linear, inherited, 2.0).item())
        for p, p0 in zip(linear, inherited):
            p.data.copy_(p0)
    assert objective[0] > objective[1] > objective[2] > objective[3]
    fitter.write(fitter.fit(40, 2.0))
    for p in module.parameters():
        p.requires_grad_(False)
    for p in linear:
        p.requires_grad_(True)
    _objective(module, train[:2], linear, inherited, 2.0).backward()
    assert max(float(p.grad.to_dense().abs().max()) for p in linear) < 1e-3
    with torch.no_grad():
        logits = torch.cat([module(b) for b in val])
    labels = torch.cat([b["label"] for b in val])
    assert refit.logloss == pytest.approx(F.binary_cross_entropy_with_logits(logits, labels).item(), rel=1e-5)
    for p in module.parameters():
        p.requires_grad_(True)
        p.grad = None
    module.supernet_masks.clear()
    module.load_state_dict(before)
    with pytest.raises(ValueError, match="refit_sweeps must be >= 0"):
        module.evaluate_subnet(sub, val, finetune_data=train, refit_sweeps=-1)
    with pytest.raises(ValueError, match="refit_prior > 0"):
        module.evaluate_subnet(sub, val, finetune_data=train, refit_sweeps=1, refit_prior=0.0)
    with pytest.raises(ValueError, match="needs training batches"):
        module.evaluate_subnet(sub, val, refit_sweeps=5)


def test_backbone_that_never_reads_first_order_weights_is_not_refit(tmp_path: Path) -> None:
    dm = tiny_datamodule()
    module = _trained(tmp_path, dm, backbone="PNN")                # PNN's forward has no first-order term
    sub = module.parse_subarch("A=2", "0.5")
    train, val = list(itertools.islice(dm.stream("train"), 2)), list(dm.stream("val"))
    score = module.evaluate_subnet(sub, val, finetune_data=train, refit_sweeps=5)
    assert score.refit_sweeps == 0 and score.auc == module.evaluate_subnet(sub, val).auc


def test_refit_of_some_fields_moves_only_their_tables_with_their_own_prior(tmp_path: Path) -> None:
    dm = tiny_datamodule()
    module = _trained(tmp_path, dm)
    module.eval()
    sub = module.parse_subarch("A=0,B=4", "0.5")                     # C keeps the full dim
    module.supernet_masks.apply(sub)
    train, val = list(itertools.islice(dm.stream("train"), 2)), list(dm.stream("val"))
    fitter = FirstOrderRefit(module.backbone, train)
    inherited = fitter.read()
    spans, offset = {}, 0
    for name, p in zip(fitter.names, fitter.params):
        spans[name], offset = slice(offset, offset + p.numel()), offset + p.numel()
    some = fitter.fit(10, 1.0, {"A": 1.0, "B": 3.0})
    assert torch.equal(some[spans["C"]], inherited[spans["C"]])     # not named: as the supernet left it
    assert not torch.equal(some[spans["A"]], inherited[spans["A"]]) and not torch.equal(some[spans["B"]],
                                                                                       inherited[spans["B"]])
    # B's factor is its prior: the same as fitting B alone at prior 3 once A is where the joint fit put it
    start = inherited.clone()
    start[spans["A"]] = some[spans["A"]]
    fitter.write(start)
    alone = fitter.fit(200, 3.0, {"B": 1.0})
    fitter.write(inherited)
    torch.testing.assert_close(alone[spans["B"]], some[spans["B"]], atol=2e-3, rtol=0)
    module.supernet_masks.clear()
    full = module.parse_subarch("", None)                             # nothing narrowed: "narrowed" refits nothing
    plain = module.evaluate_subnet(full, val)
    narrowed = module.evaluate_subnet(full, val, finetune_data=train, refit_sweeps=5, refit_fields="narrowed")
    refit_all = module.evaluate_subnet(full, val, finetune_data=train, refit_sweeps=5)
    assert narrowed.auc == plain.auc and narrowed.logloss == plain.logloss and refit_all.logloss != plain.logloss
    with pytest.raises(ValueError, match="refit_fields must be one of all, narrowed, scaled, got 'some'"):
        module.evaluate_subnet(sub, val, finetune_data=train, refit_sweeps=5, refit_fields="some")


def test_candidates_refit_on_the_same_batches_share_one_design_and_score_as_alone(tmp_path: Path) -> None:
    dm = tiny_datamodule()
    module = _trained(tmp_path, dm)
    train, val = list(itertools.islice(dm.stream("train"), 3)), list(dm.stream("val"))
    subs = [module.parse_subarch(dims, "0.5") for dims in ("A=0,B=4", "C=2", "A=8,B=0,C=0")]
    options = dict(finetune_steps=2, finetune_scope="all", finetune_lr=1e-2, refit_sweeps=3, refit_rows=128)
    alone = []
    for sub in subs:
        module._last_refit = None                               # a fresh refit for each candidate
        alone.append(module.evaluate_subnet(sub, val, finetune_data=train, **options))
    many = module.evaluate_many(subs, val, finetune_data=train, **options)
    refit = module._last_refit
    assert [s.auc for s in many] == [s.auc for s in alone] and [s.logloss for s in many] == [s.logloss for s in alone]
    module.evaluate_subnet(subs[0], val, finetune_data=train, **options)
    assert module._last_refit is refit                          # the same rows: the same design
    module.evaluate_subnet(subs[0], val, finetune_data=[dict(b) | {"label": b["label"].clone()} for b in train],
                           **options)
    assert module._last_refit is refit                          # the same rows read again: the same design
    flipped = [dict(b) | {"label": 1.0 - b["label"]} for b in train]
    assert module.evaluate_subnet(subs[0], val, finetune_data=flipped, **options).logloss != many[0].logloss
    assert module._last_refit is not refit                      # other rows: built again
    module._last_refit = None
    assert module.evaluate_subnet(subs[0], dm, **options).auc == module.evaluate_subnet(subs[0], dm, **options).auc
    refit = module._last_refit
    module.evaluate_subnet(subs[1], dm, **options)
    assert module._last_refit is refit                          # a data module read afresh per candidate

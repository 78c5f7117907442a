"""``RetrainModule(group_dense=True)``: every group its own copy of the dense layers over shared tables.

The claims are exact identities on tiny seeded models (CPU, one thread): fresh copies reproduce the shared
model, a group's copy touches only that group's samples and gradients, the scatter keeps the batch order,
and the copies survive state_dict, Lightning checkpoints and ``IHASModel`` files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from ihas_lightning.cli import build_parser
from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.model import IHASModel
from ihas_lightning.modules import RetrainModule
from ihas_lightning.modules.group_dense import dense_parameter_names

from _retrain_fixtures import routed_module, sample_batch, take_rows

BACKBONES = ["DeepFM", "DCN"]


def _shared(retrain_dm: CTRDataModule, backbone: str, seed: int = 7, **kwargs) -> RetrainModule:
    """A shared-dense RetrainModule whose router splits samples across all groups, its dense layers perturbed
    (at DeepCTR's std 1e-4 the groups' copies would barely differ)."""
    return routed_module(retrain_dm, backbone=backbone, seed=seed, dense_std=0.2, **kwargs)


def _grouped(shared: RetrainModule) -> RetrainModule:
    """The same model with group-specific dense layers, warm-started from the shared one's weights."""
    module = RetrainModule(**{**shared.hparams, "group_dense": True})
    module.warm_start(shared.state_dict())
    return module.eval()


@torch.no_grad()
def _perturb(module: RetrainModule, group: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in module.group_params[group].parameters():
        param.add_(0.3 * torch.randn(param.shape, generator=generator))


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_fresh_copies_reproduce_the_shared_model(retrain_dm, backbone: str) -> None:
    shared = _shared(retrain_dm, backbone)
    grouped = _grouped(shared)
    batch = sample_batch(retrain_dm)
    expected = shared(batch)
    torch.testing.assert_close(grouped(batch), expected, rtol=0, atol=1e-6)
    assert torch.equal(grouped.last_groups, shared.last_groups)
    assert torch.bincount(grouped.last_groups, minlength=3).min() >= 10      # every group is exercised
    names = dense_parameter_names(grouped.backbone)
    assert names and not any("embedding_dict" in n for n in names)
    assert grouped.dense_params == 3 * shared.dense_params > 0
    assert grouped.embedding_params == shared.embedding_params                 # the tables stay shared
    own = dict(grouped.backbone.named_parameters())
    assert not any(own[n].requires_grad for n in names)                        # the copies are the trained ones
    # DeepCTR-Torch's L2 terms on dense weights (linear part, cross kernels) fall on every used group's copy
    dense_ids = {id(dict(shared.backbone.named_parameters())[n]) for n in names}
    tables_only = float(shared.backbone.regularization_loss(lambda w: () if id(w) in dense_ids else (w,)))
    dense = float(shared.regularization_loss()) - tables_only
    assert dense > 0
    assert float(grouped.regularization_loss()) == pytest.approx(tables_only + 3 * dense, rel=1e-5)


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_a_group_copy_moves_only_its_own_samples(retrain_dm, backbone: str) -> None:
    grouped = _grouped(_shared(retrain_dm, backbone))
    batch = sample_batch(retrain_dm)
    before = grouped(batch)
    groups = grouped.last_groups
    _perturb(grouped, group=1, seed=5)
    after = grouped(batch)
    assert torch.equal(grouped.last_groups, groups)                            # routing reads the tables only
    mine, others = groups == 1, groups != 1
    assert torch.equal(after[others], before[others])
    assert (after[mine] - before[mine]).abs().min() > 1e-4


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.filterwarnings("ignore:.*self.trainer. reference is not registered")
def test_absent_groups_get_no_gradient(retrain_dm, backbone: str) -> None:
    grouped = _grouped(_shared(retrain_dm, backbone)).train()
    batch = sample_batch(retrain_dm, "train", n=256)
    with torch.no_grad():
        groups = grouped.route(grouped.backbone.field_embeddings(batch))
    batch = take_rows(batch, (groups != 1).nonzero().squeeze(1))                   # groups 0 and 2 only
    optimizer = grouped.configure_optimizers()
    trainable = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert trainable == {id(p) for p in grouped.parameters() if p.requires_grad}
    assert not any(id(p) in trainable for p in grouped.backbone.parameters() if not p.requires_grad)
    before = {k: v.clone() for k, v in grouped.state_dict().items()}
    loss = grouped.training_step(batch, 0)                                     # BCE + the regularizer
    loss.backward()
    assert sorted(grouped.last_groups.unique().tolist()) == [0, 2]
    assert all(p.grad is None for p in grouped.group_params[1].parameters())
    for present in (0, 2):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in grouped.group_params[present].parameters())
    assert all(p.grad is None for p in grouped.backbone.parameters() if not p.requires_grad)
    optimizer.step()
    after = grouped.state_dict()
    for key in before:
        if key.startswith("group_params.1.") or key.startswith("backbone.") and "embedding_dict" not in key:
            assert torch.equal(after[key], before[key]), key                   # absent group, frozen shared
        elif key.startswith(("group_params.0.", "group_params.2.")):
            assert not torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_interleaved_groups_come_back_in_order(retrain_dm, backbone: str) -> None:
    shared = _shared(retrain_dm, backbone)
    grouped = _grouped(shared)
    for group in range(3):
        _perturb(grouped, group, seed=10 + group)
    batch = sample_batch(retrain_dm, "train", n=300)
    groups = grouped.route(grouped.backbone.field_embeddings(batch))
    rows = [(groups == g).nonzero().squeeze(1) for g in range(3)]
    n = min(len(r) for r in rows)
    interleaved = torch.stack([r[:n] for r in rows], dim=1).flatten()          # g0, g1, g2, g0, g1, g2, ...
    batch = take_rows(batch, interleaved)
    logits = grouped(batch)
    assert grouped.last_groups[:6].tolist() == [0, 1, 2, 0, 1, 2]
    for g in range(3):
        # group g's model on its own: the shared-dense module with group g's copies as its dense layers
        reference = RetrainModule(**{**shared.hparams, "groups_from": "batch"})
        reference.load_state_dict(shared.state_dict())
        own = dict(reference.backbone.named_parameters())
        for name, value in grouped.group_params.overrides(g).items():
            own[name].copy_(value)
        mine = torch.arange(g, len(interleaved), 3)
        sub = take_rows(batch, mine)
        expected = reference.eval()({**sub, "group": torch.full((len(mine),), g)})
        torch.testing.assert_close(logits[mine], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(grouped(sub), expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backbone", BACKBONES)
@torch.no_grad()
def test_state_dict_and_ihas_model_round_trip(retrain_dm, backbone: str, tmp_path: Path) -> None:
    grouped = _grouped(_shared(retrain_dm, backbone))
    _perturb(grouped, group=2, seed=3)
    batch = sample_batch(retrain_dm, "test")
    expected = grouped(batch)
    torch.save(grouped.state_dict(), tmp_path / "state.pt")
    fresh = RetrainModule(**grouped.hparams)
    assert not torch.equal(fresh.group_params[2].model__out__bias, grouped.group_params[2].model__out__bias)
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    torch.testing.assert_close(fresh.eval()(batch), expected, rtol=0, atol=0)

    model = IHASModel(grouped, retrain_dm.encoder, group_share=[0.5, 0.3, 0.2])
    model.save(tmp_path / "ihas.pt")
    loaded = IHASModel.load(tmp_path / "ihas.pt").eval()
    assert loaded.module.hparams.group_dense is True
    torch.testing.assert_close(loaded(batch), expected, rtol=0, atol=0)
    assert loaded.dense_params == model.dense_params == 3 * IHASModel(_shared(retrain_dm, backbone)).dense_params
    assert loaded.flops_per_sample == model.flops_per_sample                   # same compute per sample
    shared_model = IHASModel(_shared(retrain_dm, backbone), group_share=[0.5, 0.3, 0.2])
    assert model.flops_per_sample == shared_model.flops_per_sample


@pytest.mark.filterwarnings("ignore:.*eval mode at the start of training")  # the frozen router, by design
def test_lightning_checkpoint_round_trip(retrain_dm, tmp_path: Path) -> None:
    grouped = _grouped(_shared(retrain_dm, "DeepFM")).train()
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", devices=1,
                         logger=False, enable_progress_bar=False, enable_model_summary=False,
                         enable_checkpointing=False, default_root_dir=str(tmp_path))
    trainer.fit(grouped, datamodule=retrain_dm)
    assert isinstance(trainer.optimizers[0], torch.optim.Adam) and trainer.optimizers[0].defaults["fused"]
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = RetrainModule.load_from_checkpoint(tmp_path / "last.ckpt")
    batch = sample_batch(retrain_dm, "test")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(batch), grouped.eval()(batch), rtol=0, atol=0)
        trained = [not torch.equal(grouped.group_params[g].model__out__bias, grouped.group_params[0].model__out__bias)
                   for g in (1, 2)]
    assert any(trained)                                   # the groups' copies have drifted apart in training


@torch.no_grad()
def test_batch_groups_with_group_dense(retrain_dm) -> None:
    """``groups_from="batch"`` with the router's own assignment gives the routed logits exactly."""
    routed = _grouped(_shared(retrain_dm, "DeepFM"))
    _perturb(routed, 0, seed=1)
    batched = RetrainModule(**{**routed.hparams, "groups_from": "batch"})
    batched.load_state_dict(routed.state_dict())
    batch = sample_batch(retrain_dm)
    logits = routed(batch)
    torch.testing.assert_close(batched.eval()({**batch, "group": routed.last_groups}), logits, rtol=0, atol=0)
    with pytest.raises(KeyError, match="needs batch\\['group'\\]"):
        batched(batch)


def test_cli_flag() -> None:
    parser = build_parser()
    common = ["--data", "synthetic", "--out", "x"]
    assert parser.parse_args(["run", *common, "--group-dense"]).group_dense is True
    assert parser.parse_args(["run", *common]).group_dense is False
    assert parser.parse_args(["retrain", "--run", "x"]).group_dense is None    # as the run was started
    assert parser.parse_args(["retrain", "--run", "x", "--group-dense"]).group_dense is True


def test_batchnorm_statistics_are_kept_per_group(retrain_dm) -> None:
    """AFN's BatchNorm statistics: a training pass over group 0's rows moves group 0's copies only, and the
    other groups still predict as before."""
    grouped = _grouped(_shared(retrain_dm, "AFN"))
    names = grouped.group_params.buffer_names
    assert any(name.endswith("running_mean") for name in names)
    batch = sample_batch(retrain_dm)
    with torch.no_grad():
        before_logits = grouped(batch)
    groups = grouped.last_groups.clone()
    assert sorted(groups.unique().tolist()) == [0, 1, 2]
    before = {k: v.clone() for k, v in grouped.state_dict().items()}
    grouped.train()
    with torch.no_grad():
        grouped(take_rows(batch, (groups == 0).nonzero().squeeze(1)))                # BN in training mode
    grouped.eval()
    after = grouped.state_dict()
    for name in names:
        key = name.replace(".", "__")
        assert not torch.equal(after[f"group_params.0.{key}"], before[f"group_params.0.{key}"]), name
        for g in (1, 2):
            assert torch.equal(after[f"group_params.{g}.{key}"], before[f"group_params.{g}.{key}"]), name
        assert torch.equal(after[f"backbone.{name}"], before[f"backbone.{name}"]), name   # frozen, unused
    with torch.no_grad():
        logits = grouped(batch)
    others = groups != 0
    torch.testing.assert_close(logits[others], before_logits[others], rtol=0, atol=0)
    assert not torch.allclose(logits[~others], before_logits[~others])

"""Supernet sampling: exactness of the masks, the sampler's schedule and resume, sub-network scoring, the CLI."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from ihas_lightning.backbones import build_backbone
from ihas_lightning.callbacks import SupernetSampler, load_callbacks
from ihas_lightning.cli import main
from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.data.loader import to_batch
from ihas_lightning.modules import SupernetModule
from ihas_lightning.modules.rowwise import RowwiseAdam
from ihas_lightning.subarchitecture import SubArchitecture, SupernetConfig
from ihas_lightning.supernet import SupernetMasks, flops_per_sample

from _supernet_fixtures import SCHEMA, tiny_datamodule

DIM = 8
HIDDEN = (16, 8)


@pytest.fixture
def dm() -> CTRDataModule:
    return tiny_datamodule()


def _module(dm: CTRDataModule, backbone: str = "DeepFM", **kwargs) -> SupernetModule:
    return SupernetModule(dm.schema, dm.vocab_sizes, backbone=backbone, dim=DIM, dnn_hidden_units=HIDDEN,
                          seed=7, **kwargs)


def _batch(dm: CTRDataModule, n: int = 64) -> dict:
    return to_batch(dm.split("train").take(np.arange(n)))


def _trainer(tmp_path, callbacks, max_steps: int = -1, max_epochs: int = 100) -> pl.Trainer:
    return pl.Trainer(max_steps=max_steps, max_epochs=max_epochs, callbacks=callbacks, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      limit_val_batches=0, default_root_dir=str(tmp_path), accelerator="cpu")


# -- masks ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backbone", ["DeepFM", "DCN"])
def test_full_supernet_equals_plain_backbone(dm, backbone: str) -> None:
    module = _module(dm, backbone)
    plain = build_backbone(backbone, dm.schema, dm.vocab_sizes, DIM, dnn_hidden_units=HIDDEN, seed=7,
                           l2_reg_embedding=0.0)
    plain.load_state_dict(module.backbone.state_dict())
    batch = _batch(dm)
    module.eval(), plain.eval()
    expected = plain(batch)
    assert torch.equal(module(batch), expected)                    # masks installed, nothing applied
    module.supernet_masks.apply(module.supernet_masks.full)        # every field at DIM, full widths
    assert torch.equal(module(batch), expected)
    module.supernet_masks.apply(SubArchitecture(module.supernet_masks.fields, (2, 8, 8), HIDDEN))
    assert not torch.equal(module(batch), expected)


@pytest.mark.parametrize("backbone", ["DeepFM", "DCN"])
def test_masked_coordinates_and_units_get_zero_gradient(dm, backbone: str) -> None:
    module = _module(dm, backbone)
    masks = module.supernet_masks
    sampler = SupernetSampler(dim_choices=(2, 4, 8), width_choices=(0.25, 0.5), seed=3)
    trainer = _trainer(None, [sampler], max_steps=1)
    sampler.setup(trainer, module, "fit")
    batch = _batch(dm)
    sampler.on_train_batch_start(trainer, module, batch, 0)
    sub = masks.active
    assert isinstance(sub, SubArchitecture) and min(sub.dims) < DIM and all(w < h for w, h in zip(sub.widths, HIDDEN))
    module.train()
    module.zero_grad()
    module.training_step(batch, 0).backward()
    emb = module.backbone.model.embedding_dict
    for field, d in zip(masks.fields, sub.dims):
        grad = emb[field].weight.grad.to_dense()                   # (V, D)
        assert torch.count_nonzero(grad[:, d:]) == 0
        assert torch.count_nonzero(grad[:, :d]) > 0
    dnn = module.backbone.model.dnn
    for layer, width in zip(dnn.linears, sub.widths):
        assert torch.count_nonzero(layer.weight.grad[width:]) == 0 and torch.count_nonzero(layer.bias.grad[width:]) == 0
        assert torch.count_nonzero(layer.weight.grad[:width]) > 0
    # the next layer's columns for masked units see exactly 0 input
    assert torch.count_nonzero(dnn.linears[1].weight.grad[:, sub.widths[0]:]) == 0

    module.eval()
    with torch.no_grad():
        before = module(batch)
        for field, d in zip(masks.fields, sub.dims):
            emb[field].weight[:, d:] += 100.0 * torch.randn_like(emb[field].weight[:, d:])
        dnn.linears[0].weight[sub.widths[0]:] += 100.0
        assert torch.equal(module(batch), before)


def test_per_sample_masks_are_per_row(dm) -> None:
    module = _module(dm)
    masks = module.supernet_masks
    config = SupernetConfig(dim_choices=(2, 8), per_sample=True)
    sub = masks.sample(torch.Generator().manual_seed(0), batch_size=64, config=config)
    assert sub.dims.shape == (64, 3) and sub.widths.shape == (64, 2)
    batch = _batch(dm)
    module.eval()
    masks.apply(sub)
    out = module(batch)
    embeddings = module.backbone.last_embeddings                                 # (B, F, D)
    keep = torch.arange(DIM) < sub.dims[..., None]
    assert torch.count_nonzero(embeddings[~keep]) == 0 and torch.count_nonzero(embeddings[keep]) > 0
    for row in (0, 17):                                                          # each row = its own subnet
        masks.apply(SubArchitecture(masks.fields, tuple(sub.dims[row].tolist()), tuple(sub.widths[row].tolist())))
        assert torch.allclose(module({k: v[row:row + 1] for k, v in batch.items()}), out[row:row + 1], atol=1e-6)


def test_subarchitecture_parse_dict_params_and_flops(dm) -> None:
    sub = SubArchitecture.parse("A=2,C=0", ("A", "B", "C"), DIM, HIDDEN, widths="0.5")
    assert sub.dims == (2, 8, 0) and sub.widths == (8, 4)
    assert SubArchitecture.from_dict(json.loads(json.dumps(sub.to_dict()))) == sub
    assert sub.embedding_params({"A": 12, "B": 12, "C": 12}) == 12 * 10
    with pytest.raises(ValueError, match="unknown field 'Z'"):
        SubArchitecture.parse("Z=2", ("A", "B", "C"), DIM, HIDDEN)
    with pytest.raises(ValueError, match=r"must be in \[0, 8\], got 9"):
        SubArchitecture.parse("A=9", ("A", "B", "C"), DIM, HIDDEN)
    with pytest.raises(ValueError, match="no DNN whose widths it searches .* leave --widths out"):
        SubArchitecture.parse("A=2", ("A", "B", "C"), DIM, (), widths="0.5")
    assert SubArchitecture.parse("A=2", ("A", "B", "C"), DIM, ()).widths == ()
    with pytest.raises(ValueError, match="dim_choices .* exceed"):
        SupernetMasks(_module(dm).backbone.__class__(_module(dm).backbone.model, SCHEMA), SupernetConfig((2, 16)))
    # DeepFM: FM = D*(3F+1), DNN = 2*(in*h1 + h1*h2), output 2*h2 + 1 (ModelSpec's counting)
    fm = _module(dm).backbone
    full = flops_per_sample(fm)
    assert full == pytest.approx(8 * 10 + 2 * (25 * 16 + 16 * 8) + 2 * 8 + 1)
    small = flops_per_sample(fm, sub)                               # in = 2+8+0+1 dense, widths 8, 4
    assert small == pytest.approx(8 * 7 + 2 * (11 * 8 + 8 * 4) + 2 * 4 + 1)
    dcn = _module(dm, "DCN", options={"cross_num": 2}).backbone
    assert flops_per_sample(dcn) == pytest.approx(5 * 25 * 2 + 2 * (25 * 16 + 16 * 8) + 2 * (8 + 25))


# -- sampler ----------------------------------------------------------------------------------------

def test_warmup_full_probability_decays_linearly(dm) -> None:
    masks = _module(dm).supernet_masks
    config = SupernetConfig(dim_choices=(2, 4), width_choices=(0.5,), warmup_steps=1000)
    generator = torch.Generator().manual_seed(0)
    full = np.array([masks.sample(generator, step=s, config=config) == masks.full for s in range(1200)])
    # expected counts per 200-step window: sum of (1 - s/1000) = 180, 140, 100, 60, 20, 0
    counts = full.reshape(6, 200).sum(1)
    assert np.all(np.abs(counts - np.array([180, 140, 100, 60, 20, 0])) <= 3 * np.sqrt(200 * 0.25) + 1)
    assert counts[-1] == 0 and np.all(np.diff(counts) < 0)
    assert config.full_probability(0) == 1.0 and config.full_probability(500) == 0.5


def test_sampler_state_round_trip_and_keys(tmp_path, dm) -> None:
    a = SupernetSampler(seed=1)
    assert a.state_key != SupernetSampler(seed=2).state_key
    assert a.state_key != SupernetSampler(seed=1, dim_choices=(4, 8)).state_key
    assert a.state_key == SupernetSampler(seed=1).state_key
    module = _module(dm)
    a = SupernetSampler(dim_choices=(2, 4, 8), seed=1)
    trainer = _trainer(tmp_path, [a], 1)
    a.setup(trainer, module, "fit")
    for _ in range(3):
        a.on_train_batch_start(trainer, module, _batch(dm), 0)
    torch.save(a.state_dict(), tmp_path / "state.pt")
    loaded = torch.load(tmp_path / "state.pt", weights_only=True)
    b = SupernetSampler(dim_choices=(2, 4, 8), seed=1, record=True)
    b.setup(trainer, module, "fit")
    b.load_state_dict(loaded)
    assert b.step == 3 and b.state_dict() == a.state_dict()
    gen_a = a.generator
    assert [module.supernet_masks.sample(gen_a) for _ in range(5)] == [module.supernet_masks.sample(b.generator)
                                                                        for _ in range(5)]
    with pytest.raises(ValueError, match="seed must be a non-negative int, got -1"):
        SupernetSampler(seed=-1)
    with pytest.raises(ValueError, match=r"width_choices must be shares in \(0, 1\], got \(0.5, 2.0\)"):
        SupernetSampler(width_choices=(0.5, 2.0))


def test_resume_continues_the_sampled_sequence(tmp_path, dm) -> None:
    def sampler() -> SupernetSampler:
        return SupernetSampler(dim_choices=(2, 4, 8), warmup_steps=6, seed=5, record=True)

    steps_per_epoch = 512 // 64
    pl.seed_everything(0)
    whole = sampler()
    module = _module(dm)
    _trainer(tmp_path / "a", [whole], max_epochs=2).fit(module, dm)

    pl.seed_everything(0)
    first = sampler()
    trainer = _trainer(tmp_path / "b", [first], max_epochs=1)
    trainer.fit(_module(dm), dm)
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    second = sampler()
    resumed = _module(dm)
    _trainer(tmp_path / "c", [second], max_epochs=2).fit(resumed, dm, ckpt_path=str(tmp_path / "half.ckpt"))

    assert len(whole.history) == 2 * steps_per_epoch
    assert first.history + second.history == whole.history
    assert len(set(whole.history)) > 5                              # really different sub-architectures
    assert second.state_dict() == whole.state_dict()
    for key, value in whole_state(module).items():
        torch.testing.assert_close(whole_state(resumed)[key], value, rtol=1e-4, atol=1e-6)


def whole_state(module: SupernetModule) -> dict:
    return {k: v for k, v in module.state_dict().items() if "auroc" not in k and "logloss" not in k}


def test_sampler_installs_masks_on_any_backbone_module_and_yaml(tmp_path, dm) -> None:
    from ihas_lightning.modules import BackboneModule

    module = BackboneModule(dm.schema, dm.vocab_sizes, dim=DIM, dnn_hidden_units=HIDDEN)
    (callback,) = load_callbacks("supernet")
    assert isinstance(callback, SupernetSampler) and callback.config.warmup_steps == 500
    callback = SupernetSampler(dim_choices=(2, 4), seed=0, record=True)
    _trainer(tmp_path, [callback], 3).fit(module, dm)
    assert len(callback.history) == 3 and all(max(s.dims) <= 4 for s in callback.history)
    assert module.backbone.embedding_transform is None              # uninstalled at teardown


# -- evaluation -------------------------------------------------------------------------------------

def test_evaluate_subnet_finetune_leaves_supernet_unchanged(tmp_path, dm) -> None:
    pl.seed_everything(0)
    module = _module(dm, lr=1e-2)
    _trainer(tmp_path, [SupernetSampler(dim_choices=(2, 4, 8), seed=0)], max_epochs=5).fit(module, dm)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    sub = module.parse_subarch("A=2,B=4", "0.5")
    plain = module.evaluate_subnet(sub, dm)
    tuned = module.evaluate_subnet(sub, dm, finetune_steps=20, finetune_lr=1e-2)
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert module.supernet_masks.active is None
    # the fine-tune changes the predictions (the AUC of 256 rows over 10-id fields may tie; the logloss moves)
    assert 0.5 < plain.auc <= 1.0 and 0.5 < tuned.auc <= 1.0 and tuned.logloss != plain.logloss
    assert plain.embedding_params == 12 * (2 + 4 + 8) and plain.embedding_share == pytest.approx(14 / 24)
    assert module.evaluate_subnet(sub, dm).auc == plain.auc                         # deterministic
    many = module.evaluate_many([sub, module.supernet_masks.full], dm)
    assert many[0].auc == plain.auc and many[1].embedding_share == 1.0


@pytest.mark.parametrize("updates", ["rowwise", "dense"])
def test_evaluate_subnet_finetune_all_is_a_short_training_of_the_subnetwork(tmp_path, dm, updates) -> None:
    pl.seed_everything(0)
    module = _module(dm, lr=1e-2, embedding_updates=updates)     # row-wise: only the touched rows are put back
    _trainer(tmp_path, [SupernetSampler(dim_choices=(2, 4, 8), seed=0)], max_epochs=5).fit(module, dm)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    sub = module.parse_subarch("A=2,B=4", "0.5")
    train, val = list(itertools.islice(dm.stream("train"), 4)), list(dm.stream("val"))
    tuned = module.evaluate_subnet(sub, val, 4, finetune_data=train, finetune_lr=1e-2, finetune_scope="all")
    last = module.evaluate_subnet(sub, val, 4, finetune_data=train, finetune_lr=1e-2, finetune_scope="last_layer")
    for key, value in module.state_dict().items():
        assert torch.equal(value, before[key]), key                  # the supernet is restored
    assert module.backbone.sparse_tables == (updates == "rowwise")
    assert tuned.finetune_scope == "all" and last.finetune_scope == "last_layer"
    assert tuned.logloss != last.logloss                              # more than the last layer trained
    assert module.evaluate_subnet(sub, val).finetune_scope is None

    # the same as 4 Adam steps of every parameter under the sub-architecture's masks, then scoring
    module.eval()
    module.supernet_masks.apply(sub)
    optimizer = RowwiseAdam(module.parameters(), lr=1e-2)
    for batch in train:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(module(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = torch.cat([module(b) for b in val])
        labels = torch.cat([b["label"] for b in val])
    assert tuned.logloss == pytest.approx(float(torch.nn.functional.binary_cross_entropy_with_logits(logits, labels)),
                                          rel=1e-5)
    table = module.backbone.model.embedding_dict["A"].weight.detach()
    moved = table != before["backbone.model.embedding_dict.A.weight"]
    assert moved[:, :2].any() and not moved[:, 2:].any()              # A's rows trained, its masked dims not
    with pytest.raises(ValueError, match="finetune_scope must be one of last_layer, all, got 'dnn'"):
        module.evaluate_subnet(sub, val, 1, finetune_data=train, finetune_scope="dnn")


# -- CLI --------------------------------------------------------------------------------------------

def main_score(run, dims: str) -> str:
    """``ihas subnet``'s JSON for ``dims`` scored with inherited weights as they are."""
    path = run.parent / "inherited.json"
    assert main(["subnet", "--run", str(run), "--dims", dims, "--finetune-steps", "0", "--refit-sweeps", "0",
                 "--json", str(path)]) == 0
    return path.read_text()


def test_cli_supernet_then_subnet(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["supernet", "--data", "synthetic", "--rows", "3000", "--epochs", "1", "--dim", "8",
                 "--dim-choices", "2,4,8", "--dnn", "16,8", "--batch-size", "256", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--accelerator", "cpu"]) == 0
    stage = out / "supernet"
    assert (stage / "checkpoints" / "last.ckpt").exists() and (stage / "data.json").exists()
    assert any((stage / "tensorboard").rglob("events.out.tfevents*"))
    metrics = json.loads((stage / "metrics.json").read_text())
    assert metrics["sampled_steps"] == 10  # ceil(2400 training rows / 256) and 0.4 < metrics["val_auc"] <= 1.0
    capsys.readouterr()
    assert main(["subnet", "--run", str(out), "--dims", "C1=2,C2=4", "--widths", "0.5,0.5",
                 "--json", str(tmp_path / "score.json")]) == 0
    printed = capsys.readouterr().out
    assert "val AUC" in printed and "embedding parameters" in printed
    score = json.loads((tmp_path / "score.json").read_text())
    assert re.search(f"{score['auc']:.4f}", printed)
    assert 0.3 < score["auc"] < 1.0 and score["logloss"] > 0 and score["seconds"] > 0
    assert score["subarch"]["dims"]["C1"] == 2 and score["subarch"]["widths"] == [8, 4]
    # by default the scoring the ranking benchmark keeps: refit, then 10 steps of everything at the supernet's lr
    assert (score["refit_sweeps"], score["finetune_steps"], score["finetune_scope"]) == (5, 10, "all")
    lr = SupernetModule.load_from_checkpoint(str(stage / "checkpoints" / "last.ckpt")).hparams.lr
    assert main(["subnet", "--run", str(out), "--dims", "C1=2,C2=4", "--widths", "0.5,0.5", "--finetune-lr", str(lr),
                 "--json", str(tmp_path / "explicit.json")]) == 0
    assert json.loads((tmp_path / "explicit.json").read_text())["auc"] == score["auc"]
    assert json.loads(main_score(out, "C1=2,C2=4"))["auc"] != score["auc"]
    assert main(["subnet", "--run", str(out), "--dims", "C1=2", "--finetune-steps", "3", "--finetune-scope", "all",
                 "--finetune-lr", "1e-2", "--json", str(tmp_path / "tuned.json")]) == 0
    tuned = json.loads((tmp_path / "tuned.json").read_text())
    assert tuned["finetune_steps"] == 3 and tuned["finetune_scope"] == "all" and 0.3 < tuned["auc"] < 1.0
    assert "fine-tune scope" in capsys.readouterr().out
    assert main(["subnet", "--run", str(out), "--dims", "C1=0", "--refit-sweeps", "3", "--refit-prior", "0.5",
                 "--finetune-steps", "0", "--json", str(tmp_path / "refit.json")]) == 0
    refit = json.loads((tmp_path / "refit.json").read_text())
    assert refit["refit_sweeps"] == 3 and refit["finetune_steps"] == 0
    assert refit["refit_rows"] == 2400                     # 40,000 by default: the whole training split here
    assert main(["subnet", "--run", str(out), "--dims", "C1=0", "--refit-sweeps", "3", "--refit-prior", "0.5",
                 "--refit-rows", "300", "--finetune-steps", "0", "--json", str(tmp_path / "few.json")]) == 0
    few = json.loads((tmp_path / "few.json").read_text())
    assert few["refit_rows"] == 512 and few["auc"] != refit["auc"]     # the first 2 batches hold the 300 rows
    inherited = json.loads(main_score(out, "C1=0"))
    assert (inherited["refit_sweeps"], inherited["finetune_steps"]) == (0, 0) and refit["auc"] != inherited["auc"]
    assert "first-order refit sweeps" in capsys.readouterr().out
    assert main(["subnet", "--run", str(out), "--dims", "C1=99"]) == 2
    assert "dimension must be in [0, 8], got 99" in capsys.readouterr().err


def test_cli_subnet_scores_on_the_device_it_is_given(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    assert main(["supernet", "--data", "synthetic", "--rows", "2000", "--epochs", "1", "--dim", "4",
                 "--dim-choices", "2,4", "--dnn", "8", "--batch-size", "256", "--out", str(out), "--quiet",
                 "--cache-dir", str(tmp_path / "cache"), "--accelerator", "cpu"]) == 0
    scores = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)          # auto: the CPU where CUDA is not
    for name, device in (("default", []), ("cpu", ["--device", "cpu"]), ("auto", ["--device", "auto"])):
        assert main(["subnet", "--run", str(out), "--dims", "C1=2", "--finetune-steps", "2",
                     "--json", str(tmp_path / f"{name}.json"), *device]) == 0
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())
    assert scores["default"]["device"] == scores["cpu"]["device"] == scores["auto"]["device"] == "cpu"
    assert scores["default"]["auc"] == scores["cpu"]["auc"] == scores["auto"]["auc"]
    assert re.search(r"device\W+cpu", capsys.readouterr().out)
    assert main(["subnet", "--run", str(out), "--dims", "C1=2", "--device", "cuda"]) == 2
    assert "device 'cuda': CUDA is not available here" in capsys.readouterr().err
    assert main(["subnet", "--run", str(out), "--dims", "C1=2", "--device", "npu"]) == 2
    assert "device must be cpu, cuda, cuda:N" in capsys.readouterr().err

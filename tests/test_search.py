"""iHAS search stage in Lightning: exact removal in real backbones, instance-wise selection on planted
data, what the regularizers do, exact resume and ``ihas search``. The callbacks are in
``test_search_callbacks.py``.

Every run here is on CPU with one torch thread (several times faster than the default pool on a small
shared machine, and bit-reproducible) and fixed seeds; the numbers in the comments are what these exact
settings gave.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint

from ihas_lightning.callbacks import RegularizerWarmup, TemperatureAnnealing
from ihas_lightning.cli import main
from ihas_lightning.pipeline import unsettled_gates
from ihas_lightning.data.loader import to_batch
from ihas_lightning.data.synthetic import SyntheticCTR
from ihas_lightning.modules import SearchModule
from _search_fixtures import (  # tests/ is on sys.path: pytest's rootdir-relative import
    STEPS_PER_EPOCH, schedule_callbacks, tiny_datamodule, tiny_search, tiny_trainer, weights_of,
)


@pytest.mark.parametrize("backbone", ["DeepFM", "DCN"])
def test_closed_gate_removes_the_dimension_in_the_backbone(cache_dir, backbone: str) -> None:
    """Gate (C1, dim 5) is closed for every sample; in eval mode the backbone then neither sees that
    embedding coordinate (perturbing the table entry of each sample's id changes no output bit) nor
    passes a gradient to it. The gate network reads the embeddings too (detached), so for the
    perturbation part it is made blind to that one coordinate: otherwise the perturbed value could flip
    *other* gates of the sample, which is the gate network deciding, not the dimension leaking."""
    dm = tiny_datamodule(cache_dir)
    torch.manual_seed(0)
    module = tiny_search(dm, backbone=backbone, hidden=(16, 8), warmup_epochs=0).eval()
    dim, field, closed, still_open = 8, 0, 5, 6
    unit = field * dim + closed
    with torch.no_grad():
        module.gates.out.weight[unit].zero_()
        module.gates.out.bias[unit] = -10.0                    # p = sigmoid(-10 + tau log 11) ~ 2e-4 < 0.5
    batch = to_batch(dm.split("val").take(np.arange(128)))
    table = module.backbone.model.embedding_dict[dm.schema.sparse[field]].weight
    ids = batch["sparse"][:, field]

    # gradient: exactly zero on the closed coordinate, non-zero on an open one of the same rows
    module.zero_grad()
    module(batch).sum().backward()
    mask = module.last_gates.mask                                                        # (B, F, D)
    assert torch.all(mask[:, field, closed] == 0)
    assert torch.all(mask[:, field, :2] == 1)                                            # min_dim = 2
    assert table.grad.is_sparse                                                          # row-wise updates
    grad = table.grad.to_dense()                                                         # (V, D)
    assert torch.count_nonzero(grad[:, closed]) == 0
    assert torch.all(mask[:, field, still_open] == 1)                                    # init_open_logit 3
    assert torch.count_nonzero(grad[ids, still_open]) > 0
    assert torch.count_nonzero(grad[ids, :2]) > 0

    # perturbation: the output does not change in any bit
    with torch.no_grad():
        module.gates.hidden.weight[:, unit] = 0.0
        before = module(batch).clone()
        mask_before = module.last_gates.mask.clone()
        table[ids, closed] += 3.0 * torch.randn(len(ids))
        after = module(batch)
        assert torch.equal(module.last_gates.mask, mask_before)
        assert torch.equal(after, before)
        # the same perturbation on a coordinate the gates keep open does change the output
        table[ids, 1] += 3.0
        assert not torch.allclose(module(batch), before)


# -- instance-wise: the planted segments get different dimensions -----------------------------------

def test_gates_are_instance_wise_on_planted_segments(cache_dir) -> None:
    """On the synthetic world of seed 0, segment 0 (id(C8) % 2 == 0) depends on C1 x C2 through a rank-8
    interaction and segment 1 only on C3 coarsely. After warm-up + 2 gated epochs (30k rows, D=16) the
    deterministic validation masks keep about 10.6 / 10.9 dims on C1 / C2 for segment 0 and about 2.5 / 2.6
    for segment 1 (val AUC 0.71, 339 distinct masks). D=8 was too narrow for a clear split (the
    interaction needs ~9 dims)."""
    pl.seed_everything(0)
    dm = tiny_datamodule(cache_dir, rows=30_000, batch_size=512)
    module = tiny_search(dm, dim=16, hidden=(64, 32), lr=3e-3, gate_lr=1e-2, seed=0)
    steps = len(dm.stream("train"))
    trainer = tiny_trainer(cache_dir / "instance", [TemperatureAnnealing(steps=int(1.6 * steps)),
                                                RegularizerWarmup(steps=max(1, 2 * steps // 5))],
                       max_epochs=3, num_sanity_val_steps=0)
    trainer.fit(module, dm)
    assert float(trainer.callback_metrics["val_auc"]) > 0.65

    world = SyntheticCTR(seed=0)
    planted = world.planted
    rich, coarse = planted["rich_fields"], planted["coarse_field"]
    assert planted["segments"][0]["fields"] == rich and planted["segments"][1]["fields"] == [coarse]
    fields = list(dm.schema.embedded_fields)
    batch = to_batch(dm.split("val"))
    segment = world.segment_of(batch["sparse"][:, fields.index(world.segment_field)].numpy() - 2)  # ids = raw + 2
    module.eval()
    with torch.no_grad():
        mask = module.gates.deterministic_mask(module.backbone.field_embeddings(batch))  # (N, F, D)
    per_segment = {s: mask[torch.from_numpy(segment == s)].sum(-1).mean(0) for s in (0, 1)}  # (F,) each
    for name in rich:
        f = fields.index(name)
        rich_dims, coarse_dims = float(per_segment[0][f]), float(per_segment[1][f])
        assert rich_dims - coarse_dims >= 3.0, (name, rich_dims, coarse_dims)
        assert coarse_dims <= 5.0, (name, coarse_dims)
    # not a single mask for everyone: many distinct per-sample masks
    assert module.last_val_summary["distinct_masks"] > 20


# -- regularizers ------------------------------------------------------------------------------------

def _tiny_search_summary(cache_dir: Path, gate: dict, epochs: int = 3) -> dict:
    pl.seed_everything(0)
    dm = tiny_datamodule(cache_dir)
    module = tiny_search(dm, warmup_epochs=0, gate=gate, seed=0)
    tiny_trainer(cache_dir / "reg", max_epochs=epochs, num_sanity_val_steps=0).fit(module, dm)
    return module.last_val_summary


def test_larger_sparsity_weight_keeps_fewer_dims(cache_dir) -> None:
    """Fixed multiplier (budget=None): 0.01 keeps all 8 dims, 3.0 leaves ~2.75 (min_dim is 2)."""
    small = _tiny_search_summary(cache_dir, {"budget": None, "sparsity_weight": 0.01})
    large = _tiny_search_summary(cache_dir, {"budget": None, "sparsity_weight": 3.0})
    assert small["mean_active_dims"] - large["mean_active_dims"] >= 2.0, (small["mean_active_dims"],
                                                                          large["mean_active_dims"])
    assert small["expected_param_share"] > large["expected_param_share"] + 0.3
    assert large["mean_active_dims"] >= 2.0                                 # min_dim holds


def test_polarization_raises_the_decided_share(cache_dir) -> None:
    """Same sparsity (1.0): without bi-polarization the gates hover undecided between 0.1 and 0.9
    (decided share ~0.0); weight 2.0 pushes them to 0 or 1 (~0.93)."""
    off = _tiny_search_summary(cache_dir, {"budget": None, "sparsity_weight": 1.0, "polarization_weight": 0.0})
    on = _tiny_search_summary(cache_dir, {"budget": None, "sparsity_weight": 1.0, "polarization_weight": 2.0})
    assert on["decided_share"] - off["decided_share"] >= 0.5, (off["decided_share"], on["decided_share"])
    assert on["decided_share"] >= 0.8


# -- resume --------------------------------------------------------------------------------------------

class _BatchRecorder(Callback):
    """(epoch, batch_idx, a fingerprint of the batch's rows) for every training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.seen.append((trainer.current_epoch, batch_idx, int(batch["sparse"].sum())))


class _Interrupt(Callback):
    """Raises at the start of the step after ``after_steps`` completed steps (a crash mid-epoch)."""

    def __init__(self, after_steps: int) -> None:
        self.after_steps = after_steps
        self.module_state: dict | None = None
        self.noise_state: torch.Tensor | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.after_steps:
            self.module_state = {k: v.clone() for k, v in weights_of(pl_module).items()}
            self.noise_state = pl_module._noise.get_state().clone()
            raise RuntimeError("simulated crash")


def _uninterrupted(cache_dir: Path, root: Path, epochs: int) -> tuple[SearchModule, pl.Trainer, list]:
    pl.seed_everything(0)
    module = tiny_search(tiny_datamodule(cache_dir))
    callbacks = schedule_callbacks()
    recorder = _BatchRecorder()
    trainer = tiny_trainer(root, [*callbacks, recorder, ModelCheckpoint(dirpath=root / "ckpt", save_last=True)],
                       max_epochs=epochs)
    trainer.fit(module, tiny_datamodule(cache_dir))
    return module, trainer, [callbacks, recorder]


def _assert_same_search_state(a: SearchModule, b: SearchModule, ta: pl.Trainer, tb: pl.Trainer) -> None:
    wa, wb = weights_of(a), weights_of(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key
    assert a.gates.controller.multiplier == b.gates.controller.multiplier
    assert torch.equal(a.gates.temperature, b.gates.temperature)
    assert a.regularizer_scale == b.regularizer_scale
    assert torch.equal(a._noise.get_state(), b._noise.get_state())
    assert ta.global_step == tb.global_step
    sa, sb = ta.optimizers[0].state_dict()["state"], tb.optimizers[0].state_dict()["state"]
    for index in sa:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(sa[index][name], sb[index][name]), (index, name)


@pytest.mark.parametrize("stop_epoch", [1, 2])
def test_resume_after_an_epoch_equals_an_uninterrupted_run(tmp_path, cache_dir, stop_epoch: int) -> None:
    """3 epochs (1 warm-up) vs ``max_epochs=stop_epoch`` then a new Trainer with ``max_epochs=3`` from
    ``last.ckpt``: gates, BatchNorm statistics, lambda, temperature, callback counters, the gate-noise
    generator, backbone weights and Adam moments all end bit-identical. stop_epoch=1 stops exactly at the
    warm-up boundary (gates not yet used), 2 in the middle of the gated epochs."""
    epochs = 3
    whole, whole_trainer, (whole_callbacks, whole_seen) = _uninterrupted(cache_dir, tmp_path / "whole", epochs)
    assert whole.gates.controller.multiplier != 0.0 and whole_callbacks[0].step == 2 * STEPS_PER_EPOCH

    pl.seed_everything(0)
    first = tiny_trainer(tmp_path / "part",
                         [*schedule_callbacks(), ModelCheckpoint(dirpath=tmp_path / "part", save_last=True)],
                         max_epochs=stop_epoch)
    first.fit(tiny_search(tiny_datamodule(cache_dir)), tiny_datamodule(cache_dir))
    last = tmp_path / "part" / "last.ckpt"
    assert torch.load(last, weights_only=True)["epoch"] == stop_epoch - 1

    pl.seed_everything(123)                       # the resumed run must not depend on the global seed
    resumed = tiny_search(tiny_datamodule(cache_dir), seed=3)
    callbacks = schedule_callbacks()
    recorder = _BatchRecorder()
    second = tiny_trainer(tmp_path / "rest", [*callbacks, recorder, ModelCheckpoint(dirpath=tmp_path / "rest",
                                                                                 save_last=True)],
                      max_epochs=epochs)
    second.fit(resumed, tiny_datamodule(cache_dir), ckpt_path=str(last))

    _assert_same_search_state(whole, resumed, whole_trainer, second)
    for mine, theirs in zip(callbacks, whole_callbacks):
        assert mine.state_dict() == theirs.state_dict()
    assert recorder.seen == whole_seen.seen[stop_epoch * STEPS_PER_EPOCH:]


@pytest.fixture(scope="module")
def mid_epoch(tmp_path_factory, cache_dir) -> dict:
    """A run that crashes after step 20 (epoch 1, batch 7 of 13) with a checkpoint every 4 steps, resumed
    from ``last.ckpt`` (step 20) to 3 epochs; and the uninterrupted 3-epoch run."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("mid_epoch")
    whole, whole_trainer, (whole_callbacks, whole_seen) = _uninterrupted(cache_dir, root / "whole", 3)
    pl.seed_everything(0)
    crash = _Interrupt(after_steps=20)
    crashed_callbacks = schedule_callbacks()
    crashed = tiny_search(tiny_datamodule(cache_dir))
    # the crash comes first, before the schedules apply step 21's values
    trainer = tiny_trainer(root / "crash", [crash, *crashed_callbacks,
                                        ModelCheckpoint(dirpath=root / "crash", save_last=True,
                                                        every_n_train_steps=4)], max_epochs=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.fit(crashed, tiny_datamodule(cache_dir))
    last = root / "crash" / "last.ckpt"
    checkpoint = torch.load(last, weights_only=True)
    pl.seed_everything(123)
    resumed = tiny_search(tiny_datamodule(cache_dir))
    callbacks = schedule_callbacks()
    recorder = _BatchRecorder()
    second = tiny_trainer(root / "rest", [*callbacks, recorder, ModelCheckpoint(dirpath=root / "crash", save_last=True,
                                                                             every_n_train_steps=4)], max_epochs=3)
    second.fit(resumed, tiny_datamodule(cache_dir), ckpt_path=str(last))
    return {"whole": whole, "whole_trainer": whole_trainer, "whole_callbacks": whole_callbacks,
            "whole_seen": whole_seen.seen, "crash": crash, "crashed_callbacks": crashed_callbacks,
            "checkpoint": checkpoint, "resumed": resumed, "second": second, "callbacks": callbacks,
            "seen": recorder.seen}


def test_mid_epoch_checkpoint_holds_the_state_of_that_step(mid_epoch) -> None:
    """A checkpoint written by ``ModelCheckpoint(every_n_train_steps=4)`` at step 20 holds exactly what
    was in memory after step 20: weights, lambda (the dual step runs in ``on_after_backward``, before the
    callbacks' ``on_train_batch_end`` where ModelCheckpoint saves; it used to run in the module's
    ``on_train_batch_end``, after the save, so the checkpoint's lambda lagged one step), temperature,
    gate noise and schedule counters."""
    checkpoint, crash = mid_epoch["checkpoint"], mid_epoch["crash"]
    assert checkpoint["global_step"] == 20
    state = checkpoint["state_dict"]
    for key, value in crash.module_state.items():
        assert torch.equal(state[key], value), key
    assert torch.equal(checkpoint["ihas_search"]["noise_state"], crash.noise_state)
    for callback in mid_epoch["crashed_callbacks"]:
        assert checkpoint["callbacks"][callback.state_key] == callback.state_dict() == {"step": 20 - STEPS_PER_EPOCH}


def test_mid_epoch_resume_equals_an_uninterrupted_run(mid_epoch) -> None:
    """Resumed from step 20 (mid-epoch), the run reads batches 7..12 of epoch 1 in the uninterrupted
    order (``CTRDataModule``'s ``StreamLoader`` is resumable: Lightning saves and restores its
    ``state_dict``) and ends bit-identical to the uninterrupted run: weights, gates, lambda, temperature,
    noise, Adam moments, schedule counters."""
    whole_seen, seen = mid_epoch["whole_seen"], mid_epoch["seen"]
    assert seen[0][:2] == (1, 7)
    assert seen == whole_seen[20:]
    assert mid_epoch["second"].global_step == 3 * STEPS_PER_EPOCH
    _assert_same_search_state(mid_epoch["whole"], mid_epoch["resumed"], mid_epoch["whole_trainer"],
                              mid_epoch["second"])
    for mine, theirs in zip(mid_epoch["callbacks"], mid_epoch["whole_callbacks"]):
        assert mine.state_dict() == theirs.state_dict()


# -- callbacks ---------------------------------------------------------------------------------------

def test_cli_search_writes_metrics_and_checkpoint(tmp_path, capsys) -> None:
    # One gated epoch of 4 steps: the gates are still all open, so the search says they have not settled.
    with pytest.warns(UserWarning, match="kept epoch 1, where its expected parameter share is 1.00 against a "
                                         "budget of 0.50"):
        code = main(["search", "--rows", "4000", "--epochs", "2", "--warmup-epochs", "1", "--out", str(tmp_path),
                     "--cache-dir", str(tmp_path / "cache"), "--quiet", "--dnn", "32,16", "--dim", "8"])
    assert code == 0
    stage = tmp_path / "search"
    metrics = json.loads((stage / "metrics.json").read_text())
    assert {"val_auc", "mean_active_dims", "distinct_masks", "decided_share", "expected_param_share"} <= set(metrics)
    assert 0.0 < metrics["val_auc"] < 1.0
    active = metrics["mean_active_dims"]
    assert set(active) == {"overall", "per_field"}
    assert list(active["per_field"]) == [f"C{i}" for i in range(1, 9)]
    assert 2.0 <= active["overall"] <= 8.0
    assert all(2.0 <= v <= 8.0 for v in active["per_field"].values())
    assert active["overall"] == pytest.approx(np.mean(list(active["per_field"].values())), abs=1e-5)
    assert isinstance(metrics["distinct_masks"], int) and metrics["distinct_masks"] >= 1
    assert 0.0 <= metrics["decided_share"] <= 1.0
    assert 0.25 <= metrics["expected_param_share"] <= 1.0                  # min_dim 2 of 8
    assert metrics["dim"] == 8 and metrics["backbone"] == "DeepFM"
    assert metrics["checkpoint"] == "best.ckpt" and metrics["epoch"] == 1        # the one gated epoch
    assert metrics["gates_settled"] is False and metrics["expected_param_share"] == pytest.approx(1.0, abs=1e-3)
    best = torch.load(stage / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["epoch"] == 1
    checkpoint = torch.load(stage / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 * 4                   # 3200 training rows, batches of 1024
    assert "gates.out.weight" in checkpoint["state_dict"] and "ihas_search" in checkpoint
    assert checkpoint["hyper_parameters"]["dnn_hidden_units"] == [32, 16]
    assert any((stage / "tensorboard").rglob("events.out.tfevents*"))
    assert "ihas search" in capsys.readouterr().out


def test_unsettled_gates_names_what_is_unsettled() -> None:
    settled = {"epoch": 3, "decided_share": 0.92, "expected_param_share": 0.61}
    assert unsettled_gates(settled, budget=0.6) is None                     # within the 0.1 slack
    undecided = unsettled_gates({**settled, "decided_share": 0.29}, budget=0.6)
    assert undecided.startswith("the search kept epoch 3, where only 29% of its gates are decided")
    assert "parameter share" not in undecided
    both = unsettled_gates({"epoch": 1, "decided_share": 0.3, "expected_param_share": 1.0}, budget=0.6)
    assert "only 30% of its gates are decided (near 0 or 1) and its expected parameter share is 1.00 " \
           "against a budget of 0.60" in both
    # a fixed sparsity weight has no budget: only the decided share counts
    assert unsettled_gates({"epoch": 1, "decided_share": 0.9, "expected_param_share": 1.0}, budget=None) is None

"""Retraining stage: shared tables narrowed to the widest group, the router, the stored-parameter budget and
the shipped ``IHASModel`` (DESIGN.md section 2.3).

Everything runs on CPU with one thread and fixed seeds; no training is needed: the claims here are exact
identities of the routed model (group masks, table layout, warm start, save/load), checked on random weights.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from ihas_lightning.clustering import fit_dims_to_budget, loss_increase, open_gate_cost, stored_param_share
from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.data.synthetic import SyntheticCTR
from ihas_lightning.model import IHASModel
from ihas_lightning.modules import RetrainModule, SearchModule
from ihas_lightning.modules.retrain_module import prefix_masks
from _retrain_fixtures import (  # noqa: E402  (tests/ is on sys.path: pytest's rootdir-relative import)
    D, GATE, GROUP_DIMS, HIDDEN, retrain_datamodule, routed_module, sample_batch, take_rows,
)

WIDTHS = [8, 8, 8, 8, 8, 8, 8, 2]          # stored table widths: the widest group's dimension per field


@pytest.fixture(scope="module")
def dm(cache_dir) -> CTRDataModule:
    return retrain_datamodule(cache_dir)


# -- routing ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_routed_model_equals_each_group_model_on_its_own_samples(dm) -> None:
    module = routed_module(dm)
    batch = sample_batch(dm)
    logits = module(batch)                                                                  # (B,)
    groups = module.last_groups
    assert torch.equal(groups, module.route(module.backbone.field_embeddings(batch)))
    sizes = torch.bincount(groups, minlength=3).tolist()
    assert len(sizes) == 3 and min(sizes) >= 10, sizes        # every group gets a real share of the batch
    for c in range(3):
        forced = copy.deepcopy(module)
        forced.group_masks.copy_(module.group_masks[c].expand_as(forced.group_masks))  # group c's model
        own = (groups == c).nonzero().squeeze(1)
        torch.testing.assert_close(forced(take_rows(batch, own)), logits[own], rtol=0, atol=1e-6)
        # ... and the routed model really differs from group c's on the other groups' samples
        other = (groups != c).nonzero().squeeze(1)
        assert (forced(take_rows(batch, other)) - logits[other]).abs().max() > 1e-4


@torch.no_grad()
def test_batch_groups_route_like_the_router(dm) -> None:
    """``groups_from="batch"`` with the router's own assignment gives the routed logits exactly."""
    routed, batched = routed_module(dm), routed_module(dm, groups_from="batch")
    batch = sample_batch(dm)
    logits = routed(batch)
    torch.testing.assert_close(batched({**batch, "group": routed.last_groups}), logits, rtol=0, atol=0)
    with pytest.raises(KeyError, match="needs batch\\['group'\\]"):
        batched(batch)


def test_training_routes_like_inference(dm) -> None:
    """The router reads its searched statistics in any mode: Lightning keeps a module's train/eval modes at fit
    start, so a fresh module trains with its gates in train mode (batch statistics routed 27% of this batch
    elsewhere)."""
    module = routed_module(dm)
    fresh = RetrainModule(**module.hparams)                      # as Lightning gets it: never train()/eval()
    fresh.load_state_dict(module.state_dict())
    assert fresh.training and fresh.gates.training
    batch = sample_batch(dm)
    with torch.no_grad():
        routed = fresh.route(fresh.backbone.field_embeddings(batch))
        assert torch.equal(routed, module.route(module.backbone.field_embeddings(batch)))
        assert torch.equal(module.train().route(module.backbone.field_embeddings(batch)), routed)
    assert fresh.gates.training                                  # route() leaves the mode as it found it


# -- layout ----------------------------------------------------------------------------------------------

def test_prefix_masks_keep_the_first_columns() -> None:
    dims = torch.tensor([[0, 2, 8], [3, 1, 0]])
    masks = prefix_masks(dims, 8)
    assert masks.shape == (2, 3, 8) and masks.dtype == torch.float32
    assert masks.sum(-1).tolist() == [[0, 2, 8], [3, 1, 0]]
    assert masks[0, 1].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    assert masks[1, 0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert masks[0, 0].tolist() == [0] * 8 and masks[0, 2].tolist() == [1] * 8


def test_tables_are_narrowed_to_the_widest_group(dm) -> None:
    module = routed_module(dm)
    fields = dm.schema.embedded_fields
    vocab = [dm.vocab_sizes[f] for f in fields]
    assert vocab == [1002, 502, 202, 102, 52, 22, 12, 7]
    assert module.table_widths == dict(zip(fields, WIDTHS))
    for f, width in zip(fields, WIDTHS):
        assert module.backbone.model.embedding_dict[f].weight.shape == (dm.vocab_sizes[f], width)
    expected = sum(v * w for v, w in zip(vocab, WIDTHS))
    assert expected == 1002 * 8 + 502 * 8 + 202 * 8 + 102 * 8 + 52 * 8 + 22 * 8 + 12 * 8 + 7 * 2 == 15166
    assert module.embedding_params == expected == IHASModel(module).embedding_params
    assert module.group_masks.shape == (3, 8, D)
    assert torch.equal(module.group_masks.sum(-1).long(), torch.tensor(GROUP_DIMS))
    # The narrow table is zero-padded to D before the group mask: no column past its width reaches the model.
    assert module.backbone.field_embeddings(sample_batch(dm, n=4))[:, 7, 2:].abs().sum() == 0


@torch.no_grad()
def test_a_dropped_field_contributes_nothing_to_its_group(dm) -> None:
    """Group 1 gives C3 zero dimensions: any C3 embedding leaves group 1's outputs as they are."""
    module = routed_module(dm, groups_from="batch")
    batch = sample_batch(dm, "train", n=240)
    batch["group"] = torch.arange(240) % 3
    before = module(batch)
    table = module.backbone.model.embedding_dict["C3"].weight
    table.add_(torch.randn(table.shape, generator=torch.Generator().manual_seed(1)))
    after = module(batch)
    dropped, kept = batch["group"] == 1, batch["group"] != 1
    assert torch.equal(after[dropped], before[dropped])
    assert (after[kept] - before[kept]).abs().min() > 0           # C3 matters to every other sample


def test_warm_start_copies_the_first_columns_and_the_router(dm) -> None:
    search = SearchModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=D, dnn_hidden_units=HIDDEN,
                          gate=GATE, seed=123)
    module = routed_module(dm)
    state = search.state_dict()
    assert not torch.equal(module.gates.hidden.weight, search.gates.hidden.weight)
    module.warm_start(state)
    for f, width in zip(dm.schema.embedded_fields, WIDTHS):
        searched = state[f"backbone.model.embedding_dict.{f}.weight"]                        # (V, D)
        assert torch.equal(module.backbone.model.embedding_dict[f].weight, searched[:, :width])
    own = module.state_dict()
    for key in ("gates.hidden.weight", "gates.out.bias", "gates.norm.running_var", "backbone.model.out.bias",
                "backbone.model.dnn.linears.0.weight", "backbone.model.linear_model.embedding_dict.C1.weight"):
        assert torch.equal(own[key], state[key]), key
    assert torch.equal(module.group_dims, torch.tensor(GROUP_DIMS))          # its own layout is kept
    with pytest.raises(ValueError, match="no router weights"):
        routed_module(dm).warm_start({k: v for k, v in state.items() if not k.startswith("gates.")})


def test_regularization_reaches_the_narrowed_tables(dm) -> None:
    module = routed_module(dm)
    regularized = {id(p[1] if isinstance(p, tuple) else p)
                   for params, _, _ in module.backbone.model.regularization_weight for p in params}
    tables = [module.backbone.model.embedding_dict[f].weight for f in dm.schema.embedded_fields]
    assert all(id(t) in regularized for t in tables)
    owned = {id(p) for p in module.parameters()}
    assert regularized <= owned                                 # no stale full-width table is regularized
    # DeepCTR-Torch's l2_reg_embedding=1e-5 on the (narrowed) tables: scaling C8's 7x2 table by 3 adds
    # 1e-5 * 8 * ||C8||^2 to the loss.
    with torch.no_grad():
        before = float(module.backbone.regularization_loss())
        c8 = module.backbone.model.embedding_dict["C8"].weight
        norm = float(c8.square().sum())
        c8.mul_(3.0)
        after = float(module.backbone.regularization_loss())
    assert after - before == pytest.approx(1e-5 * 8 * norm, rel=1e-4)


# -- stored-parameter budget -----------------------------------------------------------------------------

def _hist(per_group: list[tuple[int, list[int]]], dim: int = D) -> torch.Tensor:
    """(K, F, D+1) histograms: group c has ``n`` members, each with ``counts[f]`` open gates on field f."""
    hist = torch.zeros(len(per_group), len(per_group[0][1]), dim + 1, dtype=torch.long)
    for c, (n, counts) in enumerate(per_group):
        for f, count in enumerate(counts):
            hist[c, f, count] = n
    return hist


# Field 0 is costly and used fully; field 1 is costly but its members keep only 2 dims; field 2 is cheap.
COSTS = [1000.0, 600.0, 50.0]
HIST = _hist([(100, [8, 2, 8]), (50, [8, 2, 4])])
DIMS = torch.tensor([[8, 8, 8], [8, 4, 8]])
CANDIDATES = (0, 2, 4, 8)
OPEN_GATES = open_gate_cost(HIST)


def test_fit_dims_to_budget_meets_the_budget_in_order_of_savings_per_lost_dimension() -> None:
    assert stored_param_share(DIMS, COSTS, D) == 1.0
    # Step 1: narrowing to 4 saves 4000 / 2400 / 200 parameters for 600 / 0 / 400 lost member-dimensions:
    # field 1 (2400 / 1) goes first, then again to 2 (1200 / 1), then field 0 (4000 / 601 > 200 / 401).
    order = [(0.9, [8, 4, 8]), (0.8, [8, 2, 8]), (0.7, [4, 2, 8]), (0.5, [4, 2, 8]), (0.4, [2, 2, 8])]
    for budget, widths in order:
        fitted = fit_dims_to_budget(DIMS, COSTS, D, budget, CANDIDATES, min_dim=2, cost=OPEN_GATES)
        assert fitted.max(0).values.tolist() == widths, budget
        assert stored_param_share(fitted, COSTS, D) <= budget
    fitted = fit_dims_to_budget(DIMS, COSTS, D, 0.5, CANDIDATES, min_dim=2, cost=OPEN_GATES)
    assert fitted.tolist() == [[4, 2, 8], [4, 2, 8]]             # narrower groups are clamped, never widened
    assert stored_param_share(fitted, COSTS, D) == pytest.approx((4 * 1000 + 2 * 600 + 8 * 50) / (1650 * 8))
    assert torch.equal(DIMS, torch.tensor([[8, 8, 8], [8, 4, 8]]))  # the input is not modified
    untouched = fit_dims_to_budget(DIMS, COSTS, D, 1.0, CANDIDATES, min_dim=2, cost=OPEN_GATES)
    assert torch.equal(untouched, DIMS)


def test_fit_dims_to_budget_follows_the_damage_not_the_open_gates() -> None:
    # The synthetic data's story in miniature: field 0 (1000 rows) carries the signal, fields 1 and 2 are
    # noise whose gates the search left open because they cost little. Measured damage (here: 1.0 per
    # dimension taken from field 0, nothing for the others) narrows the noise first; open gates would not.
    def informative_first(dims: torch.Tensor) -> float:
        return float((D - dims[:, 0]).clamp_min(0).sum())

    by_damage = fit_dims_to_budget(DIMS, COSTS, D, 0.72, CANDIDATES, min_dim=2, cost=loss_increase(informative_first))
    assert by_damage.max(0).values.tolist() == [8, 2, 4]          # the free cuts first (field 1, then field 2)
    by_gates = fit_dims_to_budget(DIMS, COSTS, D, 0.72, CANDIDATES, min_dim=2, cost=OPEN_GATES)
    assert by_gates.max(0).values.tolist() == [4, 2, 8]           # fewest open gates lost per parameter saved
    # once the noise is at min_dim, field 0 goes, to the width that meets the budget and no further
    squeezed = fit_dims_to_budget(DIMS, COSTS, D, 0.45, CANDIDATES, min_dim=2, cost=loss_increase(informative_first))
    assert squeezed.max(0).values.tolist() == [4, 2, 2]
    assert stored_param_share(squeezed, COSTS, D) <= 0.45


@pytest.mark.parametrize("min_dim", [2, 4])
def test_fit_dims_to_budget_never_goes_below_min_dim(min_dim: int) -> None:
    unreachable = 0.01
    fitted = fit_dims_to_budget(DIMS, COSTS, D, unreachable, CANDIDATES, min_dim=min_dim, cost=OPEN_GATES)
    assert fitted.tolist() == [[min_dim] * 3] * 2                 # best effort: everything at min_dim
    assert stored_param_share(fitted, COSTS, D) == pytest.approx(min_dim / D)
    dropped = fit_dims_to_budget(DIMS, COSTS, D, 0.0, CANDIDATES, min_dim=0, cost=OPEN_GATES)
    assert dropped.tolist() == [[0] * 3] * 2                      # min_dim 0 lets a field be dropped


# -- IHASModel -------------------------------------------------------------------------------------------

@torch.no_grad()
def test_ihas_model_round_trip(dm, tmp_path: Path) -> None:
    module = routed_module(dm)
    model = IHASModel(module, dm.encoder, group_share=[0.5, 0.3, 0.2])
    path = tmp_path / "ihas.pt"
    model.save(path)
    loaded = IHASModel.load(path)
    loaded.eval()
    batch = sample_batch(dm, "test")
    torch.testing.assert_close(loaded(batch), model(batch), rtol=0, atol=0)
    assert torch.equal(loaded.predict_groups(batch), model.predict_groups(batch))
    assert loaded.predict_groups(batch).unique().numel() == 3
    assert loaded.embedding_params == model.embedding_params == 15166
    assert loaded.flops_per_sample == model.flops_per_sample > 0
    assert loaded.group_share == [0.5, 0.3, 0.2]
    assert torch.equal(loaded.module.group_dims, torch.tensor(GROUP_DIMS))
    assert loaded.module.table_widths == module.table_widths

    # Raw rows from the generator, encoded by the saved encoders: the test split's own rows (same data seed
    # as the cache's test split) predict exactly as the cached batch; unseen rows predict identically.
    raw = SyntheticCTR(seed=0).raw(len(dm.split("test")), seed=3)
    predicted = loaded.predict_raw(raw, batch_size=64)
    assert predicted.shape == (len(raw),) and predicted.dtype == np.float32
    np.testing.assert_allclose(predicted[:200], torch.sigmoid(model(batch)).numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(predicted, model.predict_raw(raw), rtol=0, atol=0)
    other = SyntheticCTR(seed=0).raw(300, seed=99)
    np.testing.assert_allclose(loaded.predict_raw(other), model.predict_raw(other), rtol=0, atol=0)
    assert predicted.std() > 1e-3


def test_ihas_model_refuses_other_files(dm, tmp_path: Path) -> None:
    torch.save({"state_dict": {}, "hparams": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(ValueError, match="is not an IHASModel file"):
        IHASModel.load(tmp_path / "checkpoint.pt")
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    with pytest.raises(ValueError, match="is not an IHASModel file"):
        IHASModel.load(tmp_path / "tensor.pt")
    (tmp_path / "text.pt").write_text("not a model")
    with pytest.raises(ValueError, match="is not an IHASModel file .not a torch file"):
        IHASModel.load(tmp_path / "text.pt")
    with pytest.raises(ValueError, match="group_share has 2 entries for 3 groups"):
        IHASModel(routed_module(dm), group_share=[0.5, 0.5])
    with pytest.raises(RuntimeError, match="saved without encoders"):
        IHASModel(routed_module(dm)).predict_raw(SyntheticCTR(seed=0).raw(5))


def test_fit_and_test_with_an_empty_test_split_keeps_the_best_weights(dm, tmp_path: Path) -> None:
    """A small group of the separate-models variant may have no test rows (Criteo 10k: 11 training rows):
    no test figures then, but the model still ends with its best validation epoch's weights."""
    from ihas_lightning.run_config import TrainerConfig
    from ihas_lightning.training import fit_and_test, make_trainer

    splits = {"train": dm.split("train").take(np.arange(600)), "val": dm.split("val").take(np.arange(150)),
              "test": dm.split("test").take(np.arange(0))}
    sub = CTRDataModule.from_encoded(splits, dm.encoder, batch_size=128)
    module = routed_module(dm, group_dims=GROUP_DIMS[:1]).train()
    trainer = make_trainer(TrainerConfig(quiet=True, epochs=3, accelerator="cpu"), tmp_path, max_epochs=3)
    scores = fit_and_test(module, sub, trainer)
    assert "test_auc" not in scores and 0.0 < scores["val_auc"] < 1.0
    best = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(v, best[k]) for k, v in module.state_dict().items())

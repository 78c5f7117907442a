"""Retraining stage (``RetrainModule``): shared tables narrowed to the widest group, the router, warm start
and regularization. See docs/design.md#41-retraining-shared-tables-and-the-router.

Everything runs on CPU with one thread and fixed seeds; no training is needed: the claims here are exact
identities of the routed model (group masks, table layout, warm start, save/load), checked on random weights.
"""

from __future__ import annotations

import copy
import pytest
import torch

from ihas_lightning.model import IHASModel
from ihas_lightning.modules import RetrainModule, SearchModule
from ihas_lightning.modules.retrain_module import prefix_masks

from _retrain_fixtures import D, GATE, GROUP_DIMS, HIDDEN, routed_module, sample_batch, take_rows

WIDTHS = [8, 8, 8, 8, 8, 8, 8, 2]          # stored table widths: the widest group's dimension per field


# -- routing ---------------------------------------------------------------------------------------------

@torch.no_grad()
def test_routed_model_equals_each_group_model_on_its_own_samples(retrain_dm) -> None:
    module = routed_module(retrain_dm)
    batch = sample_batch(retrain_dm)
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
def test_batch_groups_route_like_the_router(retrain_dm) -> None:
    """``groups_from="batch"`` with the router's own assignment gives the routed logits exactly."""
    routed, batched = routed_module(retrain_dm), routed_module(retrain_dm, groups_from="batch")
    batch = sample_batch(retrain_dm)
    logits = routed(batch)
    torch.testing.assert_close(batched({**batch, "group": routed.last_groups}), logits, rtol=0, atol=0)
    with pytest.raises(KeyError, match="needs batch\\['group'\\]"):
        batched(batch)


def test_training_routes_like_inference(retrain_dm) -> None:
    """The router reads its searched statistics in any mode: Lightning keeps a module's train/eval modes at fit
    start, so a fresh module trains with its gates in train mode, where batch statistics would route part of
    this batch elsewhere (docs/design.md#41-retraining-shared-tables-and-the-router)."""
    module = routed_module(retrain_dm)
    fresh = RetrainModule(**module.hparams)                      # as Lightning gets it: never train()/eval()
    fresh.load_state_dict(module.state_dict())
    assert fresh.training and fresh.gates.training
    batch = sample_batch(retrain_dm)
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


def test_tables_are_narrowed_to_the_widest_group(retrain_dm) -> None:
    module = routed_module(retrain_dm)
    fields = retrain_dm.schema.embedded_fields
    vocab = [retrain_dm.vocab_sizes[f] for f in fields]
    assert vocab == [1002, 502, 202, 102, 52, 22, 12, 7]
    assert module.table_widths == dict(zip(fields, WIDTHS))
    for f, width in zip(fields, WIDTHS):
        assert module.backbone.model.embedding_dict[f].weight.shape == (retrain_dm.vocab_sizes[f], width)
    expected = sum(v * w for v, w in zip(vocab, WIDTHS))
    assert expected == 1002 * 8 + 502 * 8 + 202 * 8 + 102 * 8 + 52 * 8 + 22 * 8 + 12 * 8 + 7 * 2 == 15166
    assert module.embedding_params == expected == IHASModel(module).embedding_params
    assert module.group_masks.shape == (3, 8, D)
    assert torch.equal(module.group_masks.sum(-1).long(), torch.tensor(GROUP_DIMS))
    # The narrow table is zero-padded to D before the group mask: no column past its width reaches the model.
    assert module.backbone.field_embeddings(sample_batch(retrain_dm, n=4))[:, 7, 2:].abs().sum() == 0


@torch.no_grad()
def test_a_dropped_field_contributes_nothing_to_its_group(retrain_dm) -> None:
    """Group 1 gives C3 zero dimensions: any C3 embedding leaves group 1's outputs as they are."""
    module = routed_module(retrain_dm, groups_from="batch")
    batch = sample_batch(retrain_dm, "train", n=240)
    batch["group"] = torch.arange(240) % 3
    before = module(batch)
    table = module.backbone.model.embedding_dict["C3"].weight
    table.add_(torch.randn(table.shape, generator=torch.Generator().manual_seed(1)))
    after = module(batch)
    dropped, kept = batch["group"] == 1, batch["group"] != 1
    assert torch.equal(after[dropped], before[dropped])
    assert (after[kept] - before[kept]).abs().min() > 0           # C3 matters to every other sample


def test_warm_start_copies_the_first_columns_and_the_router(retrain_dm) -> None:
    search = SearchModule(retrain_dm.schema, retrain_dm.vocab_sizes, backbone="DeepFM", dim=D, dnn_hidden_units=HIDDEN,
                          gate=GATE, seed=123)
    module = routed_module(retrain_dm)
    state = search.state_dict()
    assert not torch.equal(module.gates.hidden.weight, search.gates.hidden.weight)
    module.warm_start(state)
    for f, width in zip(retrain_dm.schema.embedded_fields, WIDTHS):
        searched = state[f"backbone.model.embedding_dict.{f}.weight"]                        # (V, D)
        assert torch.equal(module.backbone.model.embedding_dict[f].weight, searched[:, :width])
    own = module.state_dict()
    for key in ("gates.hidden.weight", "gates.out.bias", "gates.norm.running_var", "backbone.model.out.bias",
                "backbone.model.dnn.linears.0.weight", "backbone.model.linear_model.embedding_dict.C1.weight"):
        assert torch.equal(own[key], state[key]), key
    assert torch.equal(module.group_dims, torch.tensor(GROUP_DIMS))          # its own layout is kept
    with pytest.raises(ValueError, match="no router weights"):
        routed_module(retrain_dm).warm_start({k: v for k, v in state.items() if not k.startswith("gates.")})


def test_regularization_reaches_the_narrowed_tables(retrain_dm) -> None:
    module = routed_module(retrain_dm)
    regularized = {id(p[1] if isinstance(p, tuple) else p)
                   for params, _, _ in module.backbone.model.regularization_weight for p in params}
    tables = [module.backbone.model.embedding_dict[f].weight for f in retrain_dm.schema.embedded_fields]
    assert all(id(t) in regularized for t in tables)
    owned = {id(p) for p in module.parameters()}
    assert regularized <= owned                                 # no stale full-width table is regularized
    # DeepCTR-Torch's l2_reg_embedding=1e-5 on the (narrowed, row-wise) tables: the optimiser decays their rows.
    c8 = module.backbone.model.embedding_dict["C8"].weight
    assert module.backbone.row_l2()[c8] == pytest.approx(1e-5)
    decayed = [g for g in module.configure_optimizers().param_groups if g.get("row_l2") == pytest.approx(1e-5)]
    assert any(p is c8 for g in decayed for p in g["params"])

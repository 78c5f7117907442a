"""Masked coordinates stay put: RowwiseAdam's ``freeze_zero_grad`` and SupernetModule's ``freeze_masked``."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from _supernet_fixtures import SCHEMA, VOCAB, tiny_datamodule
from ihas_lightning import SubArchitecture, SupernetModule
from ihas_lightning.cli import main
from ihas_lightning.modules.rowwise import RowwiseAdam


def _two_steps(freeze: bool) -> tuple[nn.Embedding, nn.Linear, RowwiseAdam, dict[str, torch.Tensor]]:
    """A full step, then a step where the table's coordinates 2: and the layer's second output are masked.
    Returns the modules, the optimizer and the values and moments after the first step."""
    torch.manual_seed(0)
    table, layer = nn.Embedding(6, 4, sparse=True), nn.Linear(4, 2)
    optimizer = RowwiseAdam([{"params": [table.weight, layer.weight, layer.bias], "freeze_zero_grad": freeze}],
                            lr=0.1)
    ids = torch.tensor([1, 3, 3])
    first = {}
    for step, (mask_table, mask_unit) in enumerate(((torch.ones(4), torch.ones(2)),
                                                    (torch.tensor([1.0, 1, 0, 0]), torch.tensor([1.0, 0])))):
        if step == 1:
            first = {"row": table.weight[[1, 3]].detach().clone(), "weight": layer.weight.detach().clone(),
                     "row_m": optimizer.state[table.weight]["exp_avg"][[1, 3]].clone(),
                     "row_v": optimizer.state[table.weight]["exp_avg_sq"][[1, 3]].clone(),
                     "weight_m": optimizer.state[layer.weight]["exp_avg"].clone()}
        optimizer.zero_grad()
        (layer(table(ids) * mask_table) * mask_unit).square().sum().backward()
        optimizer.step()
    return table, layer, optimizer, first


def test_frozen_elements_keep_value_and_moments_while_the_others_step_as_adam() -> None:
    table, layer, optimizer, first = _two_steps(freeze=True)
    plain_table, plain_layer, _, _ = _two_steps(freeze=False)
    # masked: the table's coordinates 2: of the batch rows, the masked unit's weights, the weights reading 2:
    assert torch.equal(table.weight[[1, 3], 2:], first["row"][:, 2:])
    assert torch.equal(layer.weight[1], first["weight"][1]) and torch.equal(layer.weight[0, 2:], first["weight"][0, 2:])
    state = optimizer.state[table.weight]
    assert torch.equal(state["exp_avg"][[1, 3], 2:], first["row_m"][:, 2:])
    assert torch.equal(state["exp_avg_sq"][[1, 3], 2:], first["row_v"][:, 2:])
    assert torch.equal(optimizer.state[layer.weight]["exp_avg"][1], first["weight_m"][1])
    # plain Adam moves them by their momentum
    assert not torch.equal(plain_table.weight[[1, 3], 2:], first["row"][:, 2:])
    assert not torch.equal(plain_layer.weight[1], first["weight"][1])
    # what the step used is updated exactly as without freezing
    assert not torch.equal(table.weight[[1, 3], :2], first["row"][:, :2])
    assert torch.equal(table.weight[[1, 3], :2], plain_table.weight[[1, 3], :2])
    assert torch.equal(layer.weight[0, :2], plain_layer.weight[0, :2])
    assert torch.equal(layer.bias[0], plain_layer.bias[0])


def test_supernet_freeze_masked_leaves_the_masked_coordinates_of_the_batch_rows() -> None:
    dm = tiny_datamodule()
    dm.setup("fit")
    batch = next(iter(dm.stream("train")))
    moved = {}
    for freeze in (False, True):
        torch.manual_seed(0)
        module = SupernetModule(dm.schema, dm.vocab_sizes, dim=8, dnn_hidden_units=(16,), lr=0.05, seed=0,
                                freeze_masked=freeze)
        optimizer = module.configure_optimizers()
        assert all(group["freeze_zero_grad"] is freeze for group in optimizer.param_groups)
        for dims in ((8, 8, 8), (2, 8, 0)):           # the full network, then field A at 2 dims and C dropped
            module.supernet_masks.apply(SubArchitecture(module.supernet_masks.fields, dims, (8,)))
            table = module.backbone.model.embedding_dict["A"].weight
            before = table.detach().clone()
            optimizer.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(module(batch), batch["label"]).backward()
            optimizer.step()
        changed = (table.detach() - before).abs()
        moved[freeze] = changed[:, 2:].sum().item(), changed[:, :2].sum().item()
    assert moved[True][0] == 0.0 and moved[True][1] > 0          # frozen: coordinates 2: of field A stay
    assert moved[False][0] > 0                                   # plain Adam: they drift by momentum


def test_freeze_masked_is_validated_and_kept_in_the_hyperparameters() -> None:
    with pytest.raises(TypeError, match="freeze_masked"):
        SupernetModule(SCHEMA, {f: VOCAB for f in SCHEMA.sparse}, freeze_masked="yes")
    module = SupernetModule(SCHEMA, {f: VOCAB for f in SCHEMA.sparse}, freeze_masked=True)
    assert module.hparams.freeze_masked is True


def test_ihas_supernet_records_and_obeys_no_freeze_masked(tmp_path) -> None:
    assert main(["supernet", "--rows", "2000", "--dim", "4", "--dnn", "8", "--dim-choices", "2,4", "--epochs", "1",
                 "--batch-size", "256", "--no-freeze-masked", "--out", str(tmp_path / "run"), "--quiet",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    metrics = json.loads((tmp_path / "run" / "supernet" / "metrics.json").read_text())
    assert metrics["freeze_masked"] is False
    module = SupernetModule.load_from_checkpoint(metrics["checkpoint"], map_location="cpu")
    assert module.hparams.freeze_masked is False
    assert not any(group["freeze_zero_grad"] for group in module.configure_optimizers().param_groups)


def test_an_optimizer_state_saved_before_the_option_resumes_with_the_configured_freeze() -> None:
    """A checkpoint from before ``freeze_zero_grad`` has param groups without it; Adam's load would drop the key."""
    _, _, saved_optimizer, _ = _two_steps(freeze=True)
    old = saved_optimizer.state_dict()
    for group in old["param_groups"]:
        del group["freeze_zero_grad"]
    table, layer, optimizer, _ = _two_steps(freeze=True)
    optimizer.load_state_dict(old)
    assert [group["freeze_zero_grad"] for group in optimizer.param_groups] == [True]
    # and it really freezes: a step with the layer's second output masked leaves that row and its moment alone
    before, moment = layer.weight.detach().clone(), optimizer.state[layer.weight]["exp_avg"][1].clone()
    optimizer.zero_grad()
    (layer(table(torch.tensor([1, 3]))) * torch.tensor([1.0, 0])).square().sum().backward()
    optimizer.step()
    assert torch.equal(layer.weight[1], before[1])
    assert torch.equal(optimizer.state[layer.weight]["exp_avg"][1], moment)
    assert not torch.equal(layer.weight[0], before[0])       # the unmasked output still steps


def test_a_saved_freeze_setting_wins_over_the_configured_one() -> None:
    _, _, saved_optimizer, _ = _two_steps(freeze=False)
    _, _, optimizer, _ = _two_steps(freeze=True)
    optimizer.load_state_dict(saved_optimizer.state_dict())
    assert [group["freeze_zero_grad"] for group in optimizer.param_groups] == [False]

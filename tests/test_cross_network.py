"""DCN's cross network as plain products: the same values and gradients as DeepCTR-Torch's CrossNet."""

from __future__ import annotations

import copy

import pytest
import torch

from ihas_lightning.backbones import build_backbone, import_deepctr
from ihas_lightning.cross_network import cross_network_forward
from ihas_lightning.data.schema import Schema


@pytest.mark.parametrize("parameterization", ["vector", "matrix"])
def test_cross_network_equals_deepctr_crossnet_values_and_gradients(parameterization: str) -> None:
    torch.manual_seed(0)
    theirs = import_deepctr().layers.interaction.CrossNet(29, 3, parameterization)
    torch.nn.init.normal_(theirs.bias)
    ours = copy.deepcopy(theirs)
    x = torch.randn(64, 29)
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_theirs, out_ours = theirs(x_theirs), cross_network_forward(ours, x_ours)
    out_theirs.square().sum().backward()
    out_ours.square().sum().backward()
    pairs = ((out_ours.detach(), out_theirs.detach()), (x_ours.grad, x_theirs.grad),
             (ours.kernels.grad, theirs.kernels.grad), (ours.bias.grad, theirs.bias.grad))
    for mine, reference in pairs:                                   # float32 rounding of sums in another order
        assert float((mine - reference).abs().max()) <= 1e-6 * float(reference.abs().max())


def test_dcn_backbone_uses_it_and_keeps_deepctrs_parameters() -> None:
    schema = Schema(label="label", sparse=("a", "b"), dense=("x",))
    backbone = build_backbone("DCN", schema, {"a": 10, "b": 7}, dim=4, dnn_hidden_units=(8,))
    crossnet = backbone.model.crossnet
    assert crossnet.forward.__func__ is cross_network_forward
    assert {name for name, _ in crossnet.named_parameters()} == {"kernels", "bias"}
    x = torch.randn(5, 9)
    torch.testing.assert_close(crossnet(x), type(crossnet).forward(crossnet, x))         # DeepCTR-Torch's own
    clone = copy.deepcopy(backbone)                                 # the bound forward follows the copy
    assert clone.model.crossnet.forward.__self__ is clone.model.crossnet

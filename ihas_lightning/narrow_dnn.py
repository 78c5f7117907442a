"""A supernet's DNN cut to one sub-architecture, so scoring a candidate costs what the candidate costs.

Under :class:`~ihas_lightning.supernet.SupernetMasks` a sub-architecture runs the full DNN and multiplies the
masked inputs and units by 0: exact, but every candidate pays the largest network's matrix products. Scoring a
candidate (:meth:`~ihas_lightning.modules.SupernetModule.evaluate_subnet`: a first-order refit's forward over its
rows, a short fine-tune, a validation pass) spends most of its time there. :class:`NarrowDNN` holds copies of
the prefixes the candidate keeps (the first layer's columns of its embedding coordinates, each layer's first
units) and pads its output back to the full last width with zeros, which is what the masked network hands the
layers after the DNN; so the logits are the masked network's up to float rounding (the tests hold them to
1e-5), its gradients those of the masked network's kept weights, and a fine-tune that trains the copies
leaves the supernet untouched.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["NARROW_DNN_BACKBONES", "NarrowDNN", "narrow_dnn_columns", "narrowable"]

NARROW_DNN_BACKBONES: tuple[str, ...] = ("DeepFM", "DCN", "DCNMix", "WDL", "xDeepFM", "AutoInt")
"""Backbones whose DNN reads DeepCTR-Torch's ``combined_dnn_input`` of every field (the (B, F, D) embeddings
flattened in field order, then the dense values) and whose output only feeds linear layers."""


def narrow_dnn_columns(dims: Sequence[int], dim: int, dense: int) -> Tensor:
    """Positions in the DNN's input of what a sub-architecture keeps: field i's first ``dims[i]`` of its ``dim``
    coordinates, then the ``dense`` values."""
    kept = [torch.arange(i * dim, i * dim + d) for i, d in enumerate(dims)]
    kept.append(torch.arange(len(dims) * dim, len(dims) * dim + dense))
    return torch.cat(kept)


def narrowable(dnn: nn.Module, fields: int, dim: int, dense: int) -> bool:
    """Whether :class:`NarrowDNN` reproduces ``dnn``: DeepCTR-Torch's ``DNN`` over the flattened embeddings and
    dense values, without batch norm, with activations that have no per-unit parameters (ReLU, sigmoid, a PReLU
    of one slope; not Dice)."""
    linears = getattr(dnn, "linears", None)
    if not linears or getattr(dnn, "use_bn", True) or not hasattr(dnn, "activation_layers"):
        return False
    if linears[0].in_features != fields * dim + dense:
        return False
    return all(p.numel() <= 1 for a in dnn.activation_layers for p in a.parameters())


class NarrowDNN(nn.Module):
    """``dnn`` at a sub-architecture's input ``columns`` and hidden ``widths``, as a module of its own.

    The weights are copies of the kept prefixes (trainable, independent of ``dnn``); the activation and dropout
    modules are ``dnn``'s own (parameter-free or one shared slope). Its output has ``dnn``'s last width, the
    units past ``widths[-1]`` zero, as under the masks.

    Args:
        dnn: DeepCTR-Torch's ``DNN`` (see :func:`narrowable`).
        columns: (C,) positions of the input columns kept (:func:`narrow_dnn_columns`).
        widths: units kept per hidden layer (a prefix of each).
    """

    def __init__(self, dnn: nn.Module, columns: Tensor, widths: Sequence[int]) -> None:
        super().__init__()
        linears = list(dnn.linears)
        if len(widths) != len(linears) or any(not 1 <= w <= layer.out_features for w, layer in zip(widths, linears)):
            raise ValueError(f"widths {list(widths)} do not fit the DNN's layers "
                             f"{[layer.out_features for layer in linears]}")
        device = linears[0].weight.device
        self.register_buffer("columns", columns.to(device=device, dtype=torch.long), persistent=False)
        self.weights, self.biases = nn.ParameterList(), nn.ParameterList()
        previous = None
        with torch.no_grad():
            for i, (layer, width) in enumerate(zip(linears, widths)):
                weight = layer.weight[:width]                                            # (w, in)
                weight = weight.index_select(1, self.columns) if i == 0 else weight[:, :previous]
                self.weights.append(nn.Parameter(weight.clone()))
                self.biases.append(nn.Parameter(layer.bias[:width].clone()))
                previous = width
        self.activations = dnn.activation_layers          # run unmasked: SupernetMasks.narrowed pauses its hooks
        self.dropout = dnn.dropout
        self.padding = linears[-1].out_features - widths[-1]

    def forward(self, inputs: Tensor) -> Tensor:  # (B, in) -> (B, H_last)
        x = inputs.index_select(1, self.columns)
        for weight, bias, activation in zip(self.weights, self.biases, self.activations):
            x = self.dropout(activation(F.linear(x, weight, bias)))
        return F.pad(x, (0, self.padding)) if self.padding else x

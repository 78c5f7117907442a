"""DCN's cross network (Wang et al., ADKDD 2017) computed as plain matrix products and broadcasts.

DeepCTR-Torch's ``CrossNet`` keeps its input as (B, n, 1) and multiplies ``x_0`` by the (B, 1, 1) projection
with ``torch.matmul``: a batched product of B 1x1 matrices, forward and backward, which on a CPU costs about as
much as a 400-wide DNN layer at batch 4096. The same layer in two dimensions is one (B, n) x (n, 1) product
and an elementwise scale. :func:`cross_network_forward` computes exactly DeepCTR-Torch's formula with the
module's own ``kernels`` and ``bias`` (so state dicts, regularization and per-group copies are unchanged);
:class:`~ihas_lightning.backbones.CTRBackbone` installs it on the DCN models it wraps.
"""

from __future__ import annotations

import types

from torch import Tensor, nn

__all__ = ["cross_network_forward", "use_fast_cross_network"]


def cross_network_forward(crossnet: nn.Module, inputs: Tensor) -> Tensor:
    """``CrossNet.forward`` on (B, n) ``inputs``: x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l for the vector
    parameterization, x_0 * (W_l x_l + b_l) + x_l for the matrix one (DCN-M); returns (B, n)."""
    x_0 = x_l = inputs                                                                   # (B, n)
    for i in range(crossnet.layer_num):
        kernel, bias = crossnet.kernels[i], crossnet.bias[i].squeeze(-1)                 # (n, 1) or (n, n); (n,)
        if crossnet.parameterization == "vector":
            x_l = x_0 * (x_l @ kernel) + bias + x_l                                      # (B, 1) broadcast
        elif crossnet.parameterization == "matrix":
            x_l = x_0 * (x_l @ kernel.T + bias) + x_l
        else:
            raise ValueError(f"parameterization should be 'vector' or 'matrix', got {crossnet.parameterization!r}")
    return x_l


def use_fast_cross_network(model: nn.Module) -> None:
    """Make ``model.crossnet`` (a DeepCTR-Torch ``CrossNet``, if the model has one) compute with
    :func:`cross_network_forward`; other models are left as they are."""
    from .backbones import import_deepctr

    crossnet = getattr(model, "crossnet", None)
    if type(crossnet) is import_deepctr().layers.interaction.CrossNet:
        crossnet.forward = types.MethodType(cross_network_forward, crossnet)

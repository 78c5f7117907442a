"""Group-specific dense layers for the retraining stage: K copies of a backbone's non-embedding weights.

With shared dense layers the groups differ only in which embedding columns they see; groups whose samples
differ can also fit their own interaction layers (DNN, cross network, output layer, the linear part's dense
weights). That costs K times the dense parameters; the embedding tables, the bulk of a CTR model, stay shared.
``RetrainModule(group_dense=True)`` runs each group's rows through the one backbone with ``functional_call``
and that group's copies in place of the backbone's own dense parameters (which are then frozen and unused).
Buffers outside the tables (AFN's BatchNorm statistics) are copied per group too, so that each group keeps
the statistics of its own rows. See docs/design.md#43-retraining-separate-models-and-group-specific-dense-layers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..flops import is_embedding_table

__all__ = ["GroupDense", "dense_parameter_names", "dense_buffer_names"]


def _outside_tables(name: str) -> bool:
    return not is_embedding_table(name)


def dense_parameter_names(backbone: nn.Module) -> list[str]:
    """Names of ``backbone``'s parameters outside its embedding tables (``...embedding_dict...``)."""
    return [name for name, _ in backbone.named_parameters() if _outside_tables(name)]


def dense_buffer_names(backbone: nn.Module) -> list[str]:
    """Names of ``backbone``'s buffers outside its embedding tables (e.g. AFN's BatchNorm statistics)."""
    return [name for name, _ in backbone.named_buffers() if _outside_tables(name)]


def _key(name: str) -> str:
    """A parameter or buffer name as an attribute name (no dots allowed there)."""
    return name.replace(".", "__")


class _GroupCopy(nn.Module):
    """One group's copies of the backbone's dense parameters and buffers, under :func:`_key` names."""

    def __init__(self, params: dict[str, Tensor], buffers: dict[str, Tensor]) -> None:
        super().__init__()
        for name, value in params.items():
            self.register_parameter(_key(name), nn.Parameter(value.detach().clone()))
        for name, value in buffers.items():
            self.register_buffer(_key(name), value.detach().clone())

    def get(self, name: str) -> Tensor:
        return getattr(self, _key(name))


class GroupDense(nn.ModuleList):
    """One module per group holding copies of ``backbone``'s dense parameters and buffers (keys: names, dots
    -> ``__``).

    Stored as submodules so that state_dict, Lightning checkpoints and ``IHASModel`` files carry them.
    """

    def __init__(self, backbone: nn.Module, num_groups: int) -> None:
        shared = {**dict(backbone.named_parameters()), **dict(backbone.named_buffers())}
        names, buffer_names = dense_parameter_names(backbone), dense_buffer_names(backbone)
        super().__init__(_GroupCopy({n: shared[n] for n in names}, {n: shared[n] for n in buffer_names})
                         for _ in range(num_groups))
        self.names, self.buffer_names = names, buffer_names

    @torch.no_grad()
    def copy_from(self, backbone: nn.Module) -> None:
        """Every group's copies := the backbone's own dense parameters and buffers (after a warm start)."""
        shared = {**dict(backbone.named_parameters()), **dict(backbone.named_buffers())}
        for group in self:
            for name in (*self.names, *self.buffer_names):
                group.get(name).copy_(shared[name])

    def overrides(self, group: int) -> dict[str, Tensor]:
        """``functional_call`` overrides: backbone parameter or buffer name -> group ``group``'s copy (a
        BatchNorm in training mode updates the group's own statistics in place)."""
        copies = self[group]
        return {name: copies.get(name) for name in (*self.names, *self.buffer_names)}

    def substitute(self, backbone: nn.Module, groups: Iterable[int]) -> Callable[[Tensor], Sequence[Tensor]]:
        """For ``CTRBackbone.regularization_loss``: a shared dense parameter stands for the copies of ``groups``
        (the groups a batch used; an absent group's copies get no gradient), any other for itself."""
        names = set(self.names)
        by_id = {id(p): name for name, p in backbone.named_parameters() if name in names}
        groups = list(groups)

        def replace(weight: Tensor) -> Sequence[Tensor]:
            name = by_id.get(id(weight))
            return (weight,) if name is None else [self[g].get(name) for g in groups]

        return replace

    @property
    def num_params(self) -> int:
        """Dense parameters of all K copies."""
        return int(sum(p.numel() for p in self.parameters()))

"""Group-specific dense layers for the retraining stage: K copies of a backbone's non-embedding weights.

With shared dense layers the groups differ only in which embedding columns they see; groups whose samples
differ can also fit their own interaction layers (DNN, cross network, output layer, the linear part's dense
weights). That costs K times the dense parameters; the embedding tables, the bulk of a CTR model, stay shared.
``RetrainModule(group_dense=True)`` runs each group's rows through the one backbone with ``functional_call``
and that group's copies in place of the backbone's own dense parameters (which are then frozen and unused).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["GroupDense", "dense_parameter_names"]


def dense_parameter_names(backbone: nn.Module) -> list[str]:
    """Names of ``backbone``'s parameters outside its embedding tables (``...embedding_dict...``)."""
    return [name for name, _ in backbone.named_parameters() if ".embedding_dict." not in f".{name}"]


def _key(name: str) -> str:
    """A parameter name as a ``ParameterDict`` key (no dots allowed there)."""
    return name.replace(".", "__")


class GroupDense(nn.ModuleList):
    """One ``ParameterDict`` per group, copies of ``backbone``'s dense parameters (keys: names, dots -> ``__``).

    Stored as submodules so that state_dict, Lightning checkpoints and ``IHASModel`` files carry them.
    """

    def __init__(self, backbone: nn.Module, num_groups: int) -> None:
        shared = dict(backbone.named_parameters())
        names = dense_parameter_names(backbone)
        super().__init__(nn.ParameterDict({_key(n): nn.Parameter(shared[n].detach().clone()) for n in names})
                         for _ in range(num_groups))
        self.names = names

    @torch.no_grad()
    def copy_from(self, backbone: nn.Module) -> None:
        """Every group's copies := the backbone's own dense parameters (after a warm start)."""
        shared = dict(backbone.named_parameters())
        for group in self:
            for name in self.names:
                group[_key(name)].copy_(shared[name])

    def overrides(self, group: int) -> dict[str, Tensor]:
        """``functional_call`` overrides: backbone parameter name -> group ``group``'s copy."""
        params = self[group]
        return {name: params[_key(name)] for name in self.names}

    def substitute(self, backbone: nn.Module, groups: Iterable[int]) -> Callable[[Tensor], Sequence[Tensor]]:
        """For ``CTRBackbone.regularization_loss``: a shared dense parameter stands for the copies of ``groups``
        (the groups a batch used; an absent group's copies get no gradient), any other for itself."""
        names = set(self.names)
        by_id = {id(p): name for name, p in backbone.named_parameters() if name in names}
        groups = list(groups)

        def replace(weight: Tensor) -> Sequence[Tensor]:
            name = by_id.get(id(weight))
            return (weight,) if name is None else [self[g][_key(name)] for g in groups]

        return replace

    @property
    def num_params(self) -> int:
        """Dense parameters of all K copies."""
        return int(sum(p.numel() for p in self.parameters()))

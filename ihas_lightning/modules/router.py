"""``Router``: the paper's router, from a sample's embeddings to its group.

iHAS (Yu et al., CIKM 2023) serves K compact models behind the searched gate network: each sample's
deterministic mask (the frozen gates, ``1[p >= 0.5]``) goes to the nearest of the K k-means centroids of the
masks, and that group's dimensions serve it. The retrained model routes with its own tables
(``RetrainModule``); the separate-models variant routes on the searched tables (:meth:`Router.from_search`).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from ..flops import router_flops
from ..gates import InstanceGates

__all__ = ["Router", "nearest_centroid"]


def nearest_centroid(points: Tensor, centroids: Tensor) -> Tensor:
    """(B, P) points, (K, P) centroids -> (B,) index of the nearest centroid (Euclidean; ties: the lowest index).

    The routing rule of every routed model. ``clustering``'s k-means assigns with its own squared-distance
    expansion, which can differ from this one on near-ties; the router keeps the rule its models were
    trained with.
    """
    return torch.cdist(points, centroids).argmin(dim=1)                                   # (B,)


class Router(nn.Module):
    """Frozen searched gates -> flattened deterministic masks (B, F*D) -> nearest of K centroids -> group (B,).

    Always gates on the searched BatchNorm statistics, whatever the mode: Lightning keeps the modes a module
    comes with, so a fresh module trains with its gates in train mode (batch statistics: other routes).
    See docs/design.md#41-retraining-shared-tables-and-the-router.

    Args:
        gates: the searched gate network; frozen here (``requires_grad=False``) and owned by the router.
        centroids: (K, F*D) k-means centroids of the deterministic masks.

    Example:
        >>> router = Router.from_search(search_module, clusters.centroids)
        >>> groups = router(search_module.backbone.field_embeddings(batch))        # (B,)
    """

    centroids: Tensor

    def __init__(self, gates: InstanceGates, centroids: Tensor) -> None:
        super().__init__()
        width = gates.num_fields * gates.dim
        centroids = torch.as_tensor(centroids, dtype=torch.float32)
        if centroids.ndim != 2 or centroids.shape[1] != width or centroids.shape[0] < 1:
            raise ValueError(f"centroids must be (K, {width}) for {gates.num_fields} fields of dimension "
                             f"{gates.dim}, got {tuple(centroids.shape)}")
        self.gates = gates.requires_grad_(False)
        self.register_buffer("centroids", centroids)                                          # (K, F*D)

    @classmethod
    def from_search(cls, search: Any, centroids: Tensor) -> Router:
        """A router on a copy of a ``SearchModule``'s gates (the search module is left as it is)."""
        return cls(copy.deepcopy(search.gates), centroids)

    @property
    def num_groups(self) -> int:
        return int(self.centroids.shape[0])

    @torch.no_grad()
    def masks(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) embeddings -> (B, F*D) deterministic masks on the searched BatchNorm statistics."""
        was_training = self.gates.training
        self.gates.eval()
        try:
            return self.gates.deterministic_mask(embeddings).flatten(1)                       # (B, F*D)
        finally:
            self.gates.train(was_training)

    @torch.no_grad()
    def forward(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) embeddings -> (B,) group ids."""
        return nearest_centroid(self.masks(embeddings), self.centroids)

    @property
    def num_params(self) -> int:
        """Every number routing reads at inference: the gate network's weights and biases, its BatchNorm
        running mean and variance, the hard-concrete temperature (its threshold) and the K*F*D centroids.

        Not counted: the budget controller's state and BatchNorm's batch counter (training only), the
        Gaussian relaxation's unused temperature.
        """
        gates = self.gates
        tensors = [*gates.hidden.parameters(), *gates.out.parameters(), gates.norm.running_mean,
                   gates.norm.running_var, self.centroids]
        if gates.config.relaxation == "hard_concrete":
            tensors.append(gates.temperature)
        return int(sum(t.numel() for t in tensors))

    @property
    def flops_per_sample(self) -> float:
        """Gate network plus the distances to the K centroids: :func:`ihas_lightning.flops.router_flops`."""
        return router_flops(self.gates.num_fields, self.gates.dim, self.gates.config.hidden, self.num_groups)

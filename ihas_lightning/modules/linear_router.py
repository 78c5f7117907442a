"""``LinearRouter``: a K-way linear classifier on the first columns of every field, distilled from the searched
routing; the cheap router ``ihas run`` serves by default (``--router linear``).

The searched router (:class:`~ihas_lightning.modules.router.Router`) is the whole gate network plus K*F*D
centroids: on the quality cells it is 0.5-2.3x the size of the tables it routes to. Every group keeps at least
``min_dim`` columns of every field, so the first ``columns`` columns of each field's table are looked up for
every sample anyway; a linear map of them to K logits costs ``F*columns*K + K`` numbers and ``2*F*columns*K``
FLOPs. It is fitted once, after clustering and before retraining, to imitate the clustering's groups of the
training rows (:meth:`LinearRouter.fit`); ``benchmarks/router.py`` measures its agreement and AUC effect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..flops import linear_router_flops

__all__ = ["LinearRouter"]


class LinearRouter(nn.Module):
    """(B, F, D) embeddings -> first ``columns`` columns of every field (B, F*columns) -> K logits -> argmax.

    The weights are buffers: the retraining's optimiser never sees them, and they travel in the state dict as
    ``router.weight`` (K, F*columns) and ``router.bias`` (K,). A fresh router (zero weights) sends every
    sample to group 0 until :meth:`fit` runs.

    Args:
        num_fields: F, the embedded fields.
        columns: the leading columns of every field it reads (at most the embedding dimension).
        num_groups: K.

    Example:
        >>> router = LinearRouter(num_fields=3, columns=2, num_groups=4)
        >>> router.fit(features, groups, seed=0)                      # (N, 3*2) prefix columns, (N,) targets
        >>> router(embeddings)                                        # (B, 3, D) -> (B,) groups
    """

    weight: Tensor
    bias: Tensor

    def __init__(self, num_fields: int, columns: int, num_groups: int) -> None:
        super().__init__()
        if num_fields < 1 or columns < 1 or num_groups < 1:
            raise ValueError(f"a linear router needs >= 1 field, column and group, got {num_fields} fields, "
                             f"{columns} columns, {num_groups} groups")
        self.num_fields, self.columns = int(num_fields), int(columns)
        self.register_buffer("weight", torch.zeros(num_groups, num_fields * columns))           # (K, F*c)
        self.register_buffer("bias", torch.zeros(num_groups))                                   # (K,)

    @property
    def num_groups(self) -> int:
        return int(self.weight.shape[0])

    def features(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) embeddings -> (B, F*columns) the leading columns of every field, field by field."""
        if embeddings.ndim != 3 or embeddings.shape[1] != self.num_fields or embeddings.shape[2] < self.columns:
            raise ValueError(f"expected (B, {self.num_fields}, >= {self.columns}) embeddings, "
                             f"got {tuple(embeddings.shape)}")
        return embeddings[:, :, :self.columns].flatten(1)

    @torch.no_grad()
    def logits(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) -> (B, K) group scores."""
        return self.features(embeddings) @ self.weight.T + self.bias

    @torch.no_grad()
    def forward(self, embeddings: Tensor) -> Tensor:
        """(B, F, D) embeddings -> (B,) group ids (ties: the lowest index)."""
        return self.logits(embeddings).argmax(dim=1)

    @torch.no_grad()
    def fit(self, features: Tensor, groups: Tensor, seed: int = 0, steps: int = 200, l2: float = 1e-4) -> float:
        """Fit to imitate ``groups`` (N,) from ``features`` (N, F*columns); returns the training agreement.

        Multinomial logistic regression on standardised features, full batch, L-BFGS (deterministic for a
        given seed and thread count); the standardisation is folded into ``weight`` and ``bias``, so serving
        is one affine map. ``l2`` (on the standardised weights) keeps separable data from driving them to
        infinity.
        """
        x = torch.as_tensor(features, dtype=torch.float64)
        y = torch.as_tensor(groups, dtype=torch.long)
        if x.ndim != 2 or x.shape[1] != self.weight.shape[1] or y.shape != (x.shape[0],) or len(y) == 0:
            raise ValueError(f"fit needs (N, {self.weight.shape[1]}) features and (N,) groups with N >= 1, "
                             f"got {tuple(x.shape)} and {tuple(y.shape)}")
        if int(y.min()) < 0 or int(y.max()) >= self.num_groups:
            raise ValueError(f"groups must lie in [0, {self.num_groups}), got {int(y.min())}..{int(y.max())}")
        mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)                         # (F*c,)
        z = (x - mean) / std
        generator = torch.Generator().manual_seed(seed)
        w = (0.01 * torch.randn(self.num_groups, z.shape[1], generator=generator, dtype=torch.float64))
        b = torch.log(torch.bincount(y, minlength=self.num_groups).double().clamp_min(0.5) / len(y))
        w.requires_grad_(True)
        b.requires_grad_(True)
        optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, history_size=20,
                                      tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(z @ w.T + b, y) + l2 * (w * w).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        w, b = w.detach(), b.detach()
        self.weight.copy_((w / std).float())
        self.bias.copy_((b - (w * mean / std).sum(1)).float())
        predicted = (x.float() @ self.weight.T + self.bias).argmax(1)
        return float((predicted == y).float().mean())

    @property
    def num_params(self) -> int:
        """``K*F*columns + K``: the weights and biases, all that routing reads."""
        return int(self.weight.numel() + self.bias.numel())

    @property
    def flops_per_sample(self) -> float:
        """:func:`ihas_lightning.flops.linear_router_flops`: ``2*F*columns*K``."""
        return linear_router_flops(self.weight.shape[1], self.num_groups)

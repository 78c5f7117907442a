"""Shared by the retraining test files: the layout of a tiny routed model and a RetrainModule whose router
spreads samples over all its groups (the data is the ``retrain_dm`` fixture of ``tests/conftest.py``)."""

from __future__ import annotations

import math
import numpy as np
import torch

from ihas_lightning.data.datamodule import CTRDataModule
from ihas_lightning.data.loader import Batch, to_batch
from ihas_lightning.modules import RetrainModule
from ihas_lightning.modules.group_dense import dense_parameter_names

D = 8
HIDDEN = (16,)
# (K, F) per-group dimensions of the 8 synthetic fields. Field C3 is dropped by group 1 only; C8 is 2 wide
# everywhere, so its table is stored at 2 columns; C1's widest group is group 0 (8).
GROUP_DIMS = [
    [8, 4, 4, 2, 8, 2, 4, 2],
    [2, 8, 0, 4, 2, 8, 2, 2],
    [4, 2, 8, 8, 4, 4, 8, 2],
]
GATE = {"budget": 0.5}


def sample_batch(dm: CTRDataModule, split: str = "val", n: int = 200) -> Batch:
    return to_batch(dm.split(split).take(np.arange(n)))


def take_rows(batch: Batch, index: torch.Tensor) -> Batch:
    return {k: v[index] for k, v in batch.items()}


def routed_module(dm: CTRDataModule, group_dims=GROUP_DIMS, seed: int = 7, backbone: str = "DeepFM",
                   dense_std: float = 0.0, **kwargs) -> RetrainModule:
    """A RetrainModule whose router splits samples across all groups.

    A fresh gate network opens every gate (bias +3, tiny embeddings); here the tables get std 0.3 (so that
    dimensions matter to the output) and the gate logits are spread around p = 0.5 (bias at
    ``tau * log(-gamma / zeta)``, unit-variance inputs, random output weights) so that each sample has a
    mask of its own; the centroids are the masks of the first validation rows. ``dense_std > 0`` also
    perturbs the dense layers (DeepCTR starts the DNN at std 1e-4, where groups' copies would barely differ).
    """
    torch.manual_seed(seed)
    k, fields = len(group_dims), len(dm.schema.embedded_fields)
    module = RetrainModule(dm.schema, dm.vocab_sizes, group_dims=group_dims, centroids=torch.zeros(k, fields * D),
                           gate=GATE, backbone=backbone, dim=D, dnn_hidden_units=HIDDEN, seed=seed, **kwargs)
    gates = module.gates
    with torch.no_grad():
        for table in module.backbone.model.embedding_dict.values():  # DeepCTR starts them at std 1e-4
            torch.nn.init.normal_(table.weight, std=0.3)
        if dense_std > 0:
            params = dict(module.backbone.named_parameters())
            for name in dense_parameter_names(module.backbone):
                params[name].add_(dense_std * torch.randn_like(params[name]))
        gates.norm.running_var.fill_(0.09)
        torch.nn.init.normal_(gates.out.weight, std=0.5)
        gates.out.bias.fill_(float(gates.temperature) * math.log(0.1 / 1.1))
        masks = gates.deterministic_mask(module.backbone.field_embeddings(sample_batch(dm, n=k)))  # (K, F, D)
        module.centroids.copy_(masks.flatten(1))
    module.hparams.centroids = module.centroids.tolist()
    return module.eval()

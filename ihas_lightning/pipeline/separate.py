"""The separate-models variant: one model per group, trained from scratch on its own rows (``DIR/separate/``)."""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import binary_auroc

from .. import training
from ..clustering import ClusterResult
from ..data.datamodule import CTRDataModule
from ..flops import flops_or_none
from ..modules import RetrainModule, Router, SearchModule
from ..run_config import RunConfig
from .run_directory import RunDirectory
from .search import load_searched_module

__all__ = ["stage_separate"]


@torch.no_grad()
def _searched_routes(router: Router, search: SearchModule, dm: CTRDataModule, split: str) -> np.ndarray:
    """(N,) group of every row of a split, routed by ``router`` on the searched tables."""
    groups = [router(search.backbone.field_embeddings(batch)) for batch in dm.stream(split, shuffle=False)]
    return torch.cat(groups).numpy()                                                            # (N,)


@torch.no_grad()
def _logits(module: RetrainModule, dm: CTRDataModule, split: str) -> torch.Tensor:
    module.eval()
    return torch.cat([module(batch) for batch in dm.stream(split, shuffle=False)]) if len(dm.split(split)) \
        else torch.zeros(0)


def stage_separate(run: RunDirectory, config: RunConfig, dm: CTRDataModule | None = None) -> dict:
    """The literal reading of the paper: K separate models, each trained from scratch on its own group only.

    Every train/val/test row is routed once by the searched model (its gates on its own tables, the
    clustering's centroids). Group c's model is a fresh one-group ``RetrainModule`` at ``d[c, :]`` (K=1,
    full-vocabulary tables), trained for ``--baseline-epochs`` at ``--lr`` (the uniform baselines' budget,
    since it starts from scratch) on the group's training rows, its best epoch chosen on the group's
    validation rows. Test AUC/logloss are over the whole test set, from the union of the groups'
    predictions; embedding parameters are the sum over the K models; FLOPs per sample are weighted by the
    groups' shares of the test set. It is the comparison point for the shared-table default: see
    docs/design.md#43-retraining-separate-models-and-group-specific-dense-layers.
    """
    if run.done("separate"):
        return run.metrics("separate")
    start = time.perf_counter()
    dm = dm or training.datamodule_from_config(config.data, config.trainer.threads)
    search = load_searched_module(run)
    clusters = ClusterResult.load(run.stage("cluster") / "clusters.json")
    centroids = clusters.centroids.float()
    router = Router.from_search(search, centroids)
    routes = {split: _searched_routes(router, search, dm, split) for split in ("train", "val", "test")}
    labels = {split: torch.as_tensor(dm.split(split).labels, dtype=torch.float32) for split in ("val", "test")}
    logits = {split: torch.zeros(len(routes[split])) for split in ("val", "test")}
    groups, params, dense, flops, shares = [], 0, 0, 0.0, []
    fallback = int(np.bincount(routes["train"], minlength=clusters.k).argmax())  # for groups without rows
    trained: dict[int, RetrainModule] = {}
    for c in range(clusters.k):
        index = {split: np.flatnonzero(routes[split] == c) for split in routes}
        share = len(index["test"]) / max(1, len(routes["test"]))
        shares.append(share)
        if len(index["train"]) == 0 or len(index["val"]) == 0:
            groups.append({"group": c, "train_rows": int(len(index["train"])), "skipped": "no train/val rows"})
            continue
        pl.seed_everything(config.model.seed + c, workers=True)
        sub = CTRDataModule.from_encoded({split: dm.split(split).take(index[split]) for split in routes},
                                         dm.encoder, batch_size=config.data.batch_size,
                                         seed=config.model.seed)
        module = RetrainModule(dm.schema, dm.vocab_sizes, group_dims=clusters.dims[c:c + 1].tolist(),
                               centroids=centroids[c:c + 1].tolist(), gate=dict(search.hparams.gate),
                               config=replace(config.model, dim=search.hparams.dim, seed=config.model.seed + c))
        stage = run.stage("separate") / f"group{c}"
        trainer = training.make_trainer(config.trainer, stage, max_epochs=config.baseline_epochs)
        resume = stage / "checkpoints" / "last.ckpt"
        scores = training.fit_and_test(module, sub, trainer, ckpt_path=str(resume) if resume.exists() else None)
        trained[c] = module  # holds the best checkpoint's weights: trainer.test loaded them
        for split in ("val", "test"):
            if len(index[split]):
                logits[split][torch.as_tensor(index[split])] = _logits(module, sub, split)
        params += module.embedding_params
        dense += module.dense_params
        group_cost = flops_or_none(lambda: module.group_flops[0])
        flops = None if flops is None or group_cost is None else flops + share * group_cost
        groups.append({"group": c, "train_rows": int(len(index["train"])), "val_rows": int(len(index["val"])),
                       "test_rows": int(len(index["test"])), "val_auc": scores.get("val_auc"),
                       "test_auc_within_group": scores.get("test_auc"), "embedding_params": module.embedding_params})
    for c in range(clusters.k):  # a group without training rows: its test rows go to the largest group's model
        if c not in trained and fallback in trained:
            for split in ("val", "test"):
                index = np.flatnonzero(routes[split] == c)
                if len(index):
                    sub = CTRDataModule.from_encoded({split: dm.split(split).take(index)}, dm.encoder,
                                                     batch_size=config.data.batch_size)
                    logits[split][torch.as_tensor(index)] = _logits(trained[fallback], sub, split)
    scores = {f"{split}_auc": float(binary_auroc(logits[split], labels[split].long())) for split in ("val", "test")}
    scores.update({f"{split}_logloss": float(F.binary_cross_entropy_with_logits(logits[split], labels[split]))
                   for split in ("val", "test")})
    fields = dm.schema.embedded_fields
    # One router (the searched gates and centroids) serves the K models; each model's own copy is not counted.
    counts = {"embedding_params": int(params), "router_params": router.num_params, "dense_params": int(dense),
              "flops_per_sample": None if flops is None else flops + router.flops_per_sample,
              "router_flops_per_sample": router.flops_per_sample,
              "footprint_params": int(params) + router.num_params}
    metrics = {**scores, **counts, "groups": clusters.k,
               "group_share_test": shares, "per_group": groups, "backbone": config.model.backbone,
               "epochs": config.baseline_epochs, "lr": config.model.lr,
               "dims": {str(c): dict(zip(fields, map(int, row))) for c, row in enumerate(clusters.dims.tolist())},
               "seconds": time.perf_counter() - start}
    training.write_json(run.stage("separate") / "metrics.json", metrics)
    return metrics

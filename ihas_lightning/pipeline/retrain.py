"""The retrain stage (shared tables at each group's dimensions, warm-started from the search) and the uniform
baselines on the same split; each writes ``DIR/<stage>/`` (checkpoints, TensorBoard, metrics.json)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from .. import training
from ..clustering import ClusterResult
from ..data.datamodule import CTRDataModule
from ..flops import uniform_counts
from ..model import IHASModel
from ..modules import BackboneModule, RetrainModule, SearchModule
from ..run_config import RunConfig
from ..safe_load import load_checkpoint_state, load_torch_file
from .router_fit import fit_linear_router, routing_agreement
from .run_directory import RunDirectory
from .search import load_searched_module

__all__ = ["TABLE_PREFIXES", "build_retrain_module", "load_tables", "stage_baseline", "stage_retrain"]


def stage_retrain(run: RunDirectory, config: RunConfig, dm: CTRDataModule | None = None,
                  backbone: str | None = None, stage: str = "retrain", clusters_from: str = "cluster",
                  tables_only: bool | None = None) -> dict:
    """Shared tables at each group's dimensions, warm-started from the search (or, with ``config.retrain.init_from``,
    from a trained supernet of the run's backbone), fine-tuned on all data, behind ``config.retrain.router``
    (the linear router is fitted on the warm-started tables' training rows before the fine-tuning); the groups
    are those of ``DIR/<clusters_from>/clusters.json``. ``tables_only``: see :func:`build_retrain_module`.

    ``metrics.json`` also gives the router's agreement with the searched routing on validation rows at the
    start and at the end of the retraining (its tables move; the router reads them)."""
    if run.done(stage):
        return run.metrics(stage)
    start = time.perf_counter()
    pl.seed_everything(config.model.seed, workers=True)
    dm = dm or training.datamodule_from_config(config.data, config.trainer.threads)
    backbone = backbone or config.model.backbone
    search = load_searched_module(run)
    clusters = ClusterResult.load(run.stage(clusters_from) / "clusters.json")
    module = build_retrain_module(run, config, dm, backbone, search=search, clusters=clusters,
                                  tables_only=tables_only)
    start_agreement = routing_agreement(module, search, clusters, dm)
    trainer = training.make_trainer(config.trainer, run.stage(stage), max_epochs=config.retrain.epochs)
    scores = training.fit_and_test(module, dm, trainer, ckpt_path=run.resume_path(stage), start_competes=True)
    kept = load_torch_file(trainer.checkpoint_callback.best_model_path, "the retraining's best checkpoint")
    share = _group_share(module, dm)
    model = IHASModel(module, dm.encoder, group_share=share)
    model.save(run.stage(stage) / "ihas_model.pt")
    fields = dm.schema.embedded_fields
    metrics = {"test_auc": scores["test_auc"], "test_logloss": scores["test_logloss"],
               "val_auc": scores.get("val_auc"), **model.counts.to_dict(), "groups": module.num_groups,
               "group_sizes": clusters.group_sizes.tolist(), "group_share_test": share, "backbone": backbone,
               "dims": {str(c): dict(zip(fields, row)) for c, row in enumerate(module.group_dims.tolist())},
               "table_widths": module.table_widths,
               # the tested weights: the starting point (no epoch beat it) or the epoch that did
               "kept": "start" if kept["global_step"] == 0 else f"epoch {kept['epoch']}",
               "router": config.retrain.router,
               "router_agreement_val_start": start_agreement,
               "router_agreement_val": routing_agreement(module, search, clusters, dm),
               "seconds": time.perf_counter() - start}
    training.write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics


def build_retrain_module(run: RunDirectory, config: RunConfig, dm: CTRDataModule, backbone: str,
                         clusters_from: str = "cluster", *, search: SearchModule | None = None,
                         clusters: ClusterResult | None = None, tables_only: bool | None = None) -> RetrainModule:
    """The retraining's starting point: the groups of ``DIR/<clusters_from>/clusters.json`` (or ``clusters``)
    over the searched tables (and, on the search's backbone, its dense layers; or ``config.retrain.init_from``'s),
    before any retraining step, behind ``config.retrain.router`` (the linear one fitted to the searched routing
    of the training rows; with one group nothing routes). ``search`` saves loading the searched module again.
    ``tables_only=True`` takes the searched tables (and the gate router) only, with fresh dense layers, on the
    search's backbone too (the transfer experiment's equal start); default: only on another backbone."""
    search = search if search is not None else load_searched_module(run)
    clusters = clusters if clusters is not None else ClusterResult.load(run.stage(clusters_from) / "clusters.json")
    module = RetrainModule(dm.schema, dm.vocab_sizes, group_dims=clusters.dims.tolist(),
                           centroids=clusters.centroids.tolist(), gate=dict(search.hparams.gate),
                           group_dense=config.retrain.group_dense, router=config.retrain.router,
                           config=replace(config.model, backbone=backbone, dim=search.hparams.dim,
                                          lr=config.retrain.lr))
    # Another backbone (transfer): fresh dense layers; the searched tables and router, so that routing holds.
    same_backbone = backbone == search.hparams.backbone
    tables_only = not same_backbone if tables_only is None else tables_only
    init_from = config.retrain.init_from if same_backbone and not tables_only else None
    backbone_state = load_checkpoint_state(init_from, "a checkpoint to retrain from") if init_from \
        else None
    module.warm_start(search.state_dict(), tables_only=tables_only, backbone_state=backbone_state)
    if config.retrain.router == "linear" and module.num_groups > 1:       # fitted on the tables it will read
        fit_linear_router(module, search, clusters, dm, seed=config.model.seed)
    return module


@torch.no_grad()
def _group_share(module: RetrainModule, dm: CTRDataModule) -> list[float]:
    """Share of test samples routed to each group (weights the expected FLOPs per sample)."""
    module.eval()
    counts = torch.zeros(module.num_groups)
    for batch in dm.stream("test", shuffle=False):
        counts += torch.bincount(module.route(module.backbone.field_embeddings(batch)),
                                 minlength=module.num_groups).float()
    return (counts / counts.sum().clamp_min(1)).tolist()


def stage_baseline(run: RunDirectory, config: RunConfig, dim: int, stage: str = "baseline",
                   dm: CTRDataModule | None = None, backbone: str | None = None,
                   field_dims: Mapping[str, int] | None = None, extra: Mapping[str, Any] | None = None,
                   init_tables: Mapping[str, Tensor] | None = None) -> dict:
    """The same backbone at a uniform dimension on the same split; with ``field_dims``, at those per-field
    widths instead (``dim`` is then ignored; ``"dim"`` in the metrics is the common width, or None when the
    fields differ, and ``"dims"`` lists them). ``extra`` entries are added to the stage's metrics.
    ``init_tables``: a state dict (a search's) whose embedding and first-order tables start this model's, each
    cut to its first columns (the transfer experiment's equal start); dense layers stay fresh."""
    if run.done(stage):
        return run.metrics(stage)
    start = time.perf_counter()
    pl.seed_everything(config.model.seed, workers=True)
    dm = dm or training.datamodule_from_config(config.data, config.trainer.threads)
    backbone = backbone or config.model.backbone
    module = BackboneModule(dm.schema, dm.vocab_sizes, config=replace(config.model, backbone=backbone, dim=dim),
                            field_dims=field_dims)
    if init_tables is not None:
        load_tables(module, init_tables)
    trainer = training.make_trainer(config.trainer, run.stage(stage), max_epochs=config.baseline_epochs)
    scores = training.fit_and_test(module, dm, trainer, ckpt_path=run.resume_path(stage))
    widths = {} if field_dims is None else {"dim": _common_width(module.field_dims), "dims": module.field_dims}
    metrics = {"test_auc": scores["test_auc"], "test_logloss": scores["test_logloss"],
               "val_auc": scores.get("val_auc"), **uniform_counts(module.backbone).to_dict(), "dim": dim, **widths,
               "backbone": backbone,
               **(extra or {}), "seconds": time.perf_counter() - start}
    training.write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics


TABLE_PREFIXES = ("backbone.model.embedding_dict.", "backbone.model.linear_model.embedding_dict.")


def load_tables(module: BackboneModule, state: Mapping[str, Tensor]) -> None:
    """Start ``module``'s embedding and first-order tables from ``state``'s, each cut to the first columns the
    module stores. A table wider than ``state``'s (a footprint-matched model can be, when iHAS's tables and router
    outweigh the searched width's tables) takes all of them and keeps its own initialisation in the columns after.
    A ValueError names a table ``state`` lacks or whose rows differ."""
    own = module.state_dict()
    tables = {}
    for key, target in own.items():
        if not key.startswith(TABLE_PREFIXES):
            continue
        if key not in state or state[key].shape[0] != target.shape[0]:
            shape = tuple(state[key].shape) if key in state else "missing"
            raise ValueError(f"cannot start table '{key}' {tuple(target.shape)} from the given state ({shape})")
        width = min(state[key].shape[1], target.shape[1])
        tables[key] = torch.cat([state[key][:, :width].to(target), target[:, width:]], dim=1)
    module.load_state_dict(tables, strict=False)


def _common_width(field_dims: Mapping[str, int]) -> int | None:
    """The width every field shares, or None when they differ."""
    widths = set(field_dims.values())
    return widths.pop() if len(widths) == 1 else None

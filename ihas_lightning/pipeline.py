"""The iHAS pipeline as stages over one run directory: search -> cluster -> retrain, plus the baselines.

Stages hand each other files, never hidden state::

    DIR/run.json              the options of the run (data, backbone, stages)
    DIR/search/               SearchModule checkpoints, TensorBoard, metrics.json
    DIR/cluster/clusters.json centroids, per-group dimensions, group sizes
    DIR/retrain/              RetrainModule checkpoints, TensorBoard, metrics.json, ihas_model.pt
    DIR/separate/             the separate-models variant: one model per group, trained on its own samples
    DIR/baseline/, DIR/baseline_matched/   uniform-dimension backbones on the same split
    DIR/metrics.json          everything above in one place

A stage whose ``metrics.json`` exists is done and is not redone; a stage interrupted during training resumes
from its ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import numpy as np
import torch
import torch.nn.functional as F

from .cli.common import datamodule_from_args, make_trainer, parse_widths, write_json
from .clustering import (ClusterConfig, ClusterResult, active_count_histogram, cluster, fit_dims_to_budget,
                         loss_increase, open_gate_cost)
from .data.datamodule import CTRDataModule
from .model import IHASModel
from .modules import BackboneModule, RetrainModule, SearchModule
from .modules.retrain_module import prefix_masks

__all__ = ["BUDGET_FITS", "RunDirectory", "stage_cluster", "stage_retrain", "stage_separate", "stage_baseline",
           "collect_metrics", "embedding_rows"]


BUDGET_FITS = ("loss", "gates")
"""How ``stage_cluster`` narrows the shared tables to the budget: measured validation logloss, or open gates."""


class RunDirectory:
    """Paths and saved options of one run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def stage(self, name: str) -> Path:
        return self.root / name

    def done(self, name: str) -> bool:
        return (self.stage(name) / "metrics.json").exists()

    def metrics(self, name: str) -> dict:
        return json.loads((self.stage(name) / "metrics.json").read_text())

    def save_options(self, args: argparse.Namespace) -> None:
        options = {k: v for k, v in vars(args).items() if k != "handler"}
        write_json(self.root / "run.json", options)

    def load_options(self, **overrides: object) -> argparse.Namespace:
        path = self.root / "run.json"
        if not path.exists():
            raise FileNotFoundError(f"'{self.root}' is not a run directory (no run.json): start it with `ihas run`")
        options = json.loads(path.read_text())
        options.update({k: v for k, v in overrides.items() if v is not None})
        return argparse.Namespace(**options)

    def checkpoint(self, name: str) -> Path:
        return self.stage(name) / "checkpoints" / "last.ckpt"

    def resume_path(self, name: str) -> str | None:
        path = self.checkpoint(name)
        return str(path) if path.exists() else None


def embedding_rows(vocab_sizes: dict[str, int]) -> int:
    return int(sum(vocab_sizes.values()))


def _search_module(run: RunDirectory) -> SearchModule:
    from .cli.search import searched_checkpoint

    path = searched_checkpoint(run.stage("search"))
    if not path.exists():
        raise FileNotFoundError(f"no search checkpoint at {path}: run the search stage first")
    module = SearchModule.load_from_checkpoint(str(path), map_location="cpu")
    return module.eval()


def _searched_masks(search: SearchModule, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B, F, D) deterministic gate masks of a batch on the searched tables: what the clustering groups."""
    return search.gates.deterministic_mask(search.backbone.field_embeddings(batch))


def _mask_stream(module: SearchModule, dm: CTRDataModule, split: str) -> Callable[[], Iterator[torch.Tensor]]:
    """Deterministic gate masks (B, F, D) of a split, streamed batch by batch."""

    def stream() -> Iterator[torch.Tensor]:
        with torch.no_grad():
            for batch in dm.stream(split, shuffle=False):
                yield _searched_masks(module, batch)
    return stream


def _prefix_logloss(module: SearchModule, dm: CTRDataModule, result: ClusterResult,
                    max_rows: int = 32_768) -> Callable[[torch.Tensor], float]:
    """Validation logloss of the searched backbone when every row, in the group the clustering gives it,
    keeps the first ``dims[c, f]`` columns of each field: what ``--budget-fit loss`` narrows by.

    Why the loss and not the gates: the search prices a gate by its field's vocabulary, so the gates of small
    noise fields stay open for free while a large field's gates close under pressure; counting open gates
    then cut a large, informative field first (synthetic data: field A, rank-8 signal, to 4 dimensions while
    pure-noise fields kept 16). The groups stay as the searched tables route them. The retraining routes on
    its narrowed tables, which sent 0-66% of validation rows to another group in the quality runs checked
    (Avazu most); re-centering the router on narrowed-table masks lowered the retrained validation AUC on 4
    of 4 Avazu runs, so it was left out. It reads the validation split (at most ``max_rows`` rows), as
    ``--k 0`` does to choose K.
    """
    batches, groups, rows = [], [], 0
    with torch.no_grad():
        for batch in dm.stream("val", shuffle=False):
            batches.append(batch)
            groups.append(result.predict(_searched_masks(module, batch).flatten(1)))
            rows += len(groups[-1])
            if rows >= max_rows:
                break
    if rows == 0:
        raise ValueError("--budget-fit loss scores dimensions on validation rows, and the validation split is "
                         "empty: give it rows, or use --budget-fit gates")
    backbone, dim = module.backbone, module.hparams.dim

    @torch.no_grad()
    def logloss(dims: torch.Tensor) -> float:
        masks, total = prefix_masks(dims, dim), 0.0
        transform = backbone.embedding_transform
        try:
            for batch, group in zip(batches, groups):
                backbone.embedding_transform = lambda e, m=masks[group]: e * m
                total += float(F.binary_cross_entropy_with_logits(backbone(batch), batch["label"], reduction="sum"))
        finally:
            backbone.embedding_transform = transform
        return total / rows
    return logloss


def stage_cluster(run: RunDirectory, args: argparse.Namespace, dm: CTRDataModule | None = None) -> dict:
    """Deterministic gates over the training set -> mini-batch k-means -> per-group dimensions."""
    if run.done("cluster"):
        return run.metrics("cluster")
    budget_fit = getattr(args, "budget_fit", "loss")
    if budget_fit not in BUDGET_FITS:
        raise ValueError(f"budget_fit must be 'loss' or 'gates', got {budget_fit!r} (run.json of {run.root})")
    start = time.perf_counter()
    dm = dm or datamodule_from_args(args)
    module = _search_module(run)
    fields = module.schema.embedded_fields
    config = ClusterConfig(k=args.k, candidate_dims=tuple(int(d) for d in args.candidate_dims.split(",")),
                           min_dim=args.min_dim, allow_drop_field=args.min_dim == 0, seed=args.seed)
    train_masks, val_masks = _mask_stream(module, dm, "train"), _mask_stream(module, dm, "val")
    dim = module.hparams.dim
    result = cluster(lambda: (m.flatten(1) for m in train_masks()), train_masks, len(fields), dim,
                     config, val_feature_stream=lambda: (m.flatten(1) for m in val_masks()))
    searched_dims = result.dims
    budget = module.hparams.gate.get("budget")
    if budget is not None:
        costs = [float(dm.vocab_sizes[f]) for f in fields]
        if budget_fit == "loss":
            cost = loss_increase(_prefix_logloss(module, dm, result))
        else:
            cost = open_gate_cost(sum(active_count_histogram(m, result.predict(m.flatten(1)), result.k)
                                      for m in train_masks()))
        result = replace(result, dims=fit_dims_to_budget(result.dims, costs, dim, budget, config.dims_for(dim),
                                                         config.min_dim, cost=cost))
    run.stage("cluster").mkdir(parents=True, exist_ok=True)
    result.save(run.stage("cluster") / "clusters.json")
    metrics = {"k": result.k, "group_sizes": result.group_sizes.tolist(),
               "dims": {str(c): dict(zip(fields, map(int, row))) for c, row in enumerate(result.dims.tolist())},
               "dims_before_budget": searched_dims.tolist(), "budget": budget, "budget_fit": budget_fit,
               "selection": result.selection, "seconds": time.perf_counter() - start}
    write_json(run.stage("cluster") / "metrics.json", metrics)
    return metrics


def stage_retrain(run: RunDirectory, args: argparse.Namespace, dm: CTRDataModule | None = None,
                  backbone: str | None = None, stage: str = "retrain") -> dict:
    """Shared tables at each group's dimensions, warm-started from the search (or, with ``retrain_init_from``,
    from a trained supernet of the run's backbone), fine-tuned on all data."""
    if run.done(stage):
        return run.metrics(stage)
    start = time.perf_counter()
    pl.seed_everything(args.seed, workers=True)
    dm = dm or datamodule_from_args(args)
    search = _search_module(run)
    clusters = ClusterResult.load(run.stage("cluster") / "clusters.json")
    backbone = backbone or args.backbone
    module = RetrainModule(dm.schema, dm.vocab_sizes, group_dims=clusters.dims.tolist(),
                           centroids=clusters.centroids.tolist(), gate=dict(search.hparams.gate), backbone=backbone,
                           dim=search.hparams.dim, dnn_hidden_units=parse_widths(args.dnn), lr=args.retrain_lr,
                           seed=args.seed, group_dense=getattr(args, "group_dense", False))
    # Another backbone (transfer): fresh dense layers; the searched tables and router, so that routing holds.
    same_backbone = backbone == search.hparams.backbone
    init_from = getattr(args, "retrain_init_from", None) if same_backbone else None
    backbone_state = torch.load(init_from, map_location="cpu", weights_only=False)["state_dict"] if init_from else None
    module.warm_start(search.state_dict(), tables_only=not same_backbone, backbone_state=backbone_state)
    from .cli.train import fit_and_test

    trainer = make_trainer(args, run.stage(stage), max_epochs=args.retrain_epochs)
    scores = fit_and_test(module, dm, trainer, ckpt_path=run.resume_path(stage), start_competes=True)
    kept = torch.load(trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=False, mmap=True)
    share = _group_share(module, dm)
    model = IHASModel(module, dm.encoder, group_share=share)
    model.save(run.stage(stage) / "ihas_model.pt")
    fields = dm.schema.embedded_fields
    metrics = {"test_auc": scores["test_auc"], "test_logloss": scores["test_logloss"],
               "val_auc": scores.get("val_auc"), "embedding_params": model.embedding_params,
               "flops_per_sample": model.flops_per_sample, "groups": module.num_groups,
               "group_sizes": clusters.group_sizes.tolist(), "group_share_test": share, "backbone": backbone,
               "dims": {str(c): dict(zip(fields, row)) for c, row in enumerate(module.group_dims.tolist())},
               "table_widths": module.table_widths,
               # the tested weights: the starting point (no epoch beat it) or the epoch that did
               "kept": "start" if kept["global_step"] == 0 else f"epoch {kept['epoch']}",
               "seconds": time.perf_counter() - start}
    write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics


@torch.no_grad()
def _group_share(module: RetrainModule, dm: CTRDataModule) -> list[float]:
    """Share of test samples routed to each group (weights the expected FLOPs per sample)."""
    module.eval()
    counts = torch.zeros(module.num_groups)
    for batch in dm.stream("test", shuffle=False):
        counts += torch.bincount(module.route(module.backbone.field_embeddings(batch)),
                                 minlength=module.num_groups).float()
    return (counts / counts.sum().clamp_min(1)).tolist()


@torch.no_grad()
def _searched_routes(search: SearchModule, centroids: torch.Tensor, dm: CTRDataModule, split: str) -> np.ndarray:
    """(N,) group of every row of a split, routed as ``RetrainModule.route`` does, on the searched tables."""
    groups = []
    for batch in dm.stream(split, shuffle=False):
        masks = _searched_masks(search, batch).flatten(1)                                       # (B, F*D)
        groups.append(torch.cdist(masks, centroids).argmin(dim=1))                                   # (B,)
    return torch.cat(groups).numpy()


@torch.no_grad()
def _logits(module: RetrainModule, dm: CTRDataModule, split: str) -> torch.Tensor:
    module.eval()
    return torch.cat([module(batch) for batch in dm.stream(split, shuffle=False)]) if len(dm.split(split)) \
        else torch.zeros(0)


def stage_separate(run: RunDirectory, args: argparse.Namespace, dm: CTRDataModule | None = None) -> dict:
    """The literal reading of the paper: K separate models, each trained from scratch on its own group only.

    Every train/val/test row is routed once by the searched model (its gates on its own tables, the
    clustering's centroids). Group c's model is a fresh one-group ``RetrainModule`` at ``d[c, :]`` (K=1,
    full-vocabulary tables), trained for ``--baseline-epochs`` at ``--lr`` (the uniform baselines' budget,
    since it starts from scratch) on the group's training rows, its best epoch chosen on the group's
    validation rows. Test AUC/logloss are over the whole test set, from the union of the groups'
    predictions; embedding parameters are the sum over the K models; FLOPs per sample are weighted by the
    groups' shares of the test set. DESIGN.md 2.3: the prototype found this 0.005-0.025 AUC below
    uniform-16 at K times the parameters; it is the comparison point for the shared-table default.
    """
    if run.done("separate"):
        return run.metrics("separate")
    from .cli.train import fit_and_test
    from .model import group_flops

    start = time.perf_counter()
    dm = dm or datamodule_from_args(args)
    search = _search_module(run)
    clusters = ClusterResult.load(run.stage("cluster") / "clusters.json")
    centroids = clusters.centroids.float()
    routes = {split: _searched_routes(search, centroids, dm, split) for split in ("train", "val", "test")}
    labels = {split: torch.as_tensor(dm.split(split).labels, dtype=torch.float32) for split in ("val", "test")}
    logits = {split: torch.zeros(len(routes[split])) for split in ("val", "test")}
    groups, params, flops, shares = [], 0, 0.0, []
    fallback = int(np.bincount(routes["train"], minlength=clusters.k).argmax())  # for groups without rows
    trained: dict[int, RetrainModule] = {}
    for c in range(clusters.k):
        index = {split: np.flatnonzero(routes[split] == c) for split in routes}
        share = len(index["test"]) / max(1, len(routes["test"]))
        shares.append(share)
        if len(index["train"]) == 0 or len(index["val"]) == 0:
            groups.append({"group": c, "train_rows": int(len(index["train"])), "skipped": "no train/val rows"})
            continue
        pl.seed_everything(args.seed + c, workers=True)
        sub = CTRDataModule.from_encoded({split: dm.split(split).take(index[split]) for split in routes},
                                         dm.encoder, batch_size=args.batch_size, seed=args.seed)
        module = RetrainModule(dm.schema, dm.vocab_sizes, group_dims=clusters.dims[c:c + 1].tolist(),
                               centroids=centroids[c:c + 1].tolist(), gate=dict(search.hparams.gate),
                               backbone=args.backbone, dim=search.hparams.dim,
                               dnn_hidden_units=parse_widths(args.dnn), lr=args.lr, seed=args.seed + c)
        stage = run.stage("separate") / f"group{c}"
        trainer = make_trainer(args, stage, max_epochs=args.baseline_epochs)
        resume = stage / "checkpoints" / "last.ckpt"
        scores = fit_and_test(module, sub, trainer, ckpt_path=str(resume) if resume.exists() else None)
        trained[c] = module  # holds the best checkpoint's weights: trainer.test loaded them
        for split in ("val", "test"):
            if len(index[split]):
                logits[split][torch.as_tensor(index[split])] = _logits(module, sub, split)
        params += module.embedding_params
        flops += share * group_flops(module)[0]
        groups.append({"group": c, "train_rows": int(len(index["train"])), "val_rows": int(len(index["val"])),
                       "test_rows": int(len(index["test"])), "val_auc": scores.get("val_auc"),
                       "test_auc_within_group": scores.get("test_auc"), "embedding_params": module.embedding_params})
    for c in range(clusters.k):  # a group without training rows: its test rows go to the largest group's model
        if c not in trained and fallback in trained:
            for split in ("val", "test"):
                index = np.flatnonzero(routes[split] == c)
                if len(index):
                    sub = CTRDataModule.from_encoded({split: dm.split(split).take(index)}, dm.encoder,
                                                     batch_size=args.batch_size)
                    logits[split][torch.as_tensor(index)] = _logits(trained[fallback], sub, split)
    from torchmetrics.functional.classification import binary_auroc

    scores = {f"{split}_auc": float(binary_auroc(logits[split], labels[split].long())) for split in ("val", "test")}
    scores.update({f"{split}_logloss": float(F.binary_cross_entropy_with_logits(logits[split], labels[split]))
                   for split in ("val", "test")})
    fields = dm.schema.embedded_fields
    metrics = {**scores, "embedding_params": int(params), "flops_per_sample": float(flops), "groups": clusters.k,
               "group_share_test": shares, "per_group": groups, "backbone": args.backbone,
               "epochs": args.baseline_epochs, "lr": args.lr,
               "dims": {str(c): dict(zip(fields, map(int, row))) for c, row in enumerate(clusters.dims.tolist())},
               "seconds": time.perf_counter() - start}
    write_json(run.stage("separate") / "metrics.json", metrics)
    return metrics


def stage_baseline(run: RunDirectory, args: argparse.Namespace, dim: int, stage: str = "baseline",
                   dm: CTRDataModule | None = None, backbone: str | None = None) -> dict:
    """The same backbone at a uniform dimension on the same split."""
    if run.done(stage):
        return run.metrics(stage)
    from .cli.train import fit_and_test
    from .supernet import SubArchitecture, flops_per_sample

    start = time.perf_counter()
    pl.seed_everything(args.seed, workers=True)
    dm = dm or datamodule_from_args(args)
    module = BackboneModule(dm.schema, dm.vocab_sizes, backbone=backbone or args.backbone, dim=dim,
                            dnn_hidden_units=parse_widths(args.dnn), lr=args.lr, seed=args.seed)
    trainer = make_trainer(args, run.stage(stage), max_epochs=args.baseline_epochs)
    scores = fit_and_test(module, dm, trainer, ckpt_path=run.resume_path(stage))
    fields = module.backbone.fields
    try:
        flops = flops_per_sample(module.backbone, SubArchitecture(fields, (dim,) * len(fields),
                                                                  parse_widths(args.dnn)))
    except NotImplementedError:
        flops = float("nan")
    metrics = {"test_auc": scores["test_auc"], "test_logloss": scores["test_logloss"],
               "val_auc": scores.get("val_auc"), "embedding_params": module.backbone.embedding_params,
               "flops_per_sample": flops, "dim": dim, "backbone": backbone or args.backbone,
               "seconds": time.perf_counter() - start}
    write_json(run.stage(stage) / "metrics.json", metrics)
    return metrics


def collect_metrics(run: RunDirectory, args: argparse.Namespace) -> dict:
    """``DIR/metrics.json`` from the stages' own metrics files."""
    search, retrain = run.metrics("search"), run.metrics("retrain")
    keep = ("test_auc", "test_logloss", "embedding_params", "flops_per_sample")
    metrics = {
        "dataset": args.data, "format": args.format, "backbone": args.backbone,
        "baseline": {k: run.metrics("baseline")[k] for k in (*keep, "dim")},
        "ihas": {**{k: retrain[k] for k in keep}, "groups": retrain["groups"], "group_sizes": retrain["group_sizes"],
                 "dims": retrain["dims"]},
        "search": {"val_auc": search["val_auc"], "mean_active_dims": search["mean_active_dims"],
                   "distinct_masks": search["distinct_masks"]},
        "seconds": {name: run.metrics(name).get("seconds") for name in ("search", "cluster", "retrain", "baseline")},
    }
    if run.done("separate"):
        metrics["ihas_separate"] = {k: run.metrics("separate")[k] for k in (*keep, "groups")}
        metrics["seconds"]["separate"] = run.metrics("separate").get("seconds")
    if run.done("baseline_matched"):
        metrics["baseline_matched"] = {k: run.metrics("baseline_matched")[k] for k in (*keep, "dim")}
        metrics["seconds"]["baseline_matched"] = run.metrics("baseline_matched").get("seconds")
    write_json(run.root / "metrics.json", metrics)
    return metrics

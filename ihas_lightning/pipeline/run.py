"""``run_pipeline``: a whole iHAS run, search -> cluster -> retrain (+ separate models) -> uniform baselines.

Stages hand each other files, never hidden state::

    DIR/run.json              the run's RunConfig (``RunConfig.to_dict()``)
    DIR/search/               SearchModule checkpoints, TensorBoard, metrics.json
    DIR/cluster/clusters.json centroids, per-group dimensions, group sizes
    DIR/retrain/              RetrainModule checkpoints, TensorBoard, metrics.json, ihas_model.pt
    DIR/losses/metrics.json   validation AUC after each step from the search to the retrained model
    DIR/separate/             the separate-models variant: one model per group, trained on its own samples
    DIR/baseline/, DIR/baseline_matched/   uniform-dimension backbones on the same split
    DIR/metrics.json          everything above in one place, and which model the run keeps (``selection``)

A stage whose ``metrics.json`` exists is done and is not redone; a stage interrupted during training resumes
from its ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import training
from ..run_config import RunConfig
from .cluster import stage_cluster
from .losses import stage_losses
from .retrain import stage_baseline, stage_retrain
from .run_directory import RunDirectory, embedding_rows
from .search import stage_search
from .selection import select_model
from .separate import stage_separate

__all__ = ["COUNT_KEYS", "collect_metrics", "matched_baseline_dim", "run_pipeline"]

StageHook = Callable[[str, dict], None]

COUNT_KEYS = ("embedding_params", "router_params", "footprint_params", "dense_params", "flops_per_sample")
"""Size and cost of every model in ``DIR/metrics.json`` (:class:`~ihas_lightning.flops.ModelCounts`): stages
written before these counts existed report None for the missing ones."""


def matched_baseline_dim(embedding_params: int, vocab_sizes: dict[str, int]) -> int:
    """The uniform dimension nearest ``embedding_params`` (at least 1): the matched baseline's."""
    return max(1, round(embedding_params / embedding_rows(vocab_sizes)))


def run_pipeline(config: RunConfig, on_stage_done: StageHook | None = None, restart: bool = False) -> dict:
    """Run every stage not yet done in ``config.out``; write and return ``DIR/metrics.json``.

    ``on_stage_done(name, metrics)`` is called after the search stage ran here (the CLI prints its table).
    The folder is locked while it runs; one that holds a run with other result options is refused, or with
    ``restart`` cleared first (see ``RunDirectory.start``). The paths of ``config`` are made absolute.

    Example:
        >>> metrics = run_pipeline(RunConfig(out="runs/demo", trainer=TrainerConfig(epochs=3, quiet=True)))
        >>> metrics["ihas"]["test_auc"], metrics["baseline"]["test_auc"]
    """
    run = RunDirectory(config.out)
    with run.lock("ihas run"):
        return _run_stages(run, run.start(config, restart=restart), on_stage_done)


def _run_stages(run: RunDirectory, config: RunConfig, on_stage_done: StageHook | None) -> dict:
    dm = training.datamodule_from_config(config.data, config.trainer.threads)
    if not run.done("search"):
        search = stage_search(run, config)    # with a data module of its own (see stage_search)
        if on_stage_done is not None:
            on_stage_done("search", search)
    stage_cluster(run, config, dm)
    retrain = stage_retrain(run, config, dm)
    if len(dm.split("val")):
        stage_losses(run, config, dm)
    if config.separate:
        stage_separate(run, config, dm)
    stage_baseline(run, config, config.model.dim, "baseline", dm)
    if config.matched_baseline:
        matched = matched_baseline_dim(retrain["embedding_params"], dm.vocab_sizes)
        stage_baseline(run, config, matched, "baseline_matched", dm)
    return collect_metrics(run, config)


def collect_metrics(run: RunDirectory, config: RunConfig) -> dict:
    """``DIR/metrics.json`` from the stages' own metrics files."""
    search, retrain = run.metrics("search"), run.metrics("retrain")
    keep = ("test_auc", "test_logloss", "val_auc", *COUNT_KEYS)
    metrics = {
        "dataset": config.data.data, "format": config.data.format, "backbone": config.model.backbone,
        "baseline": {k: run.metrics("baseline").get(k) for k in (*keep, "dim")},
        "ihas": {**{k: retrain.get(k) for k in keep}, "groups": retrain["groups"],
                 "group_sizes": retrain["group_sizes"], "dims": retrain["dims"]},
        "search": {"val_auc": search["val_auc"], "mean_active_dims": search["mean_active_dims"],
                   "distinct_masks": search["distinct_masks"]},
        "seconds": {name: run.metrics(name).get("seconds") for name in ("search", "cluster", "retrain", "baseline")},
    }
    if run.done("losses"):
        metrics["losses"] = [{k: step.get(k) for k in ("step", "val_auc", "change")}
                             for step in run.metrics("losses")["steps"]]
    if run.done("separate"):
        metrics["ihas_separate"] = {k: run.metrics("separate").get(k) for k in (*keep, "groups")}
        metrics["seconds"]["separate"] = run.metrics("separate").get("seconds")
    if run.done("baseline_matched"):
        metrics["baseline_matched"] = {k: run.metrics("baseline_matched").get(k) for k in (*keep, "dim")}
        metrics["seconds"]["baseline_matched"] = run.metrics("baseline_matched").get("seconds")
    metrics["selection"] = select_model(metrics)
    training.write_json(run.root / "metrics.json", metrics)
    return metrics

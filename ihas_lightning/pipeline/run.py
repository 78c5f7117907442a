"""``run_pipeline``: a whole iHAS run, search -> cluster -> retrain (+ separate models) -> uniform baselines.

Stages hand each other files, never hidden state::

    DIR/run.json              the run's RunConfig (``RunConfig.to_dict()``)
    DIR/search/               SearchModule checkpoints, TensorBoard, metrics.json
    DIR/cluster/clusters.json centroids, per-group dimensions, group sizes
    DIR/retrain/              RetrainModule checkpoints, TensorBoard, metrics.json, ihas_model.pt
    DIR/losses/metrics.json   validation AUC after each step from the search to the retrained model
    DIR/separate/             the separate-models variant: one model per group, trained on its own samples
    DIR/baseline/             the uniform baseline at the run's dimension, on the same split
    DIR/baseline_matched/     fields at d or d+1 columns, tables at iHAS's footprint (``baselines``)
    DIR/baseline_mde/         mixed-dimension embeddings at iHAS's footprint, alpha chosen on validation (opt-in)
    DIR/fieldwise_cluster/, DIR/fieldwise/   the search clustered with K = 1 and retrained (opt-in)
    DIR/metrics.json          everything above in one place, and which model the run keeps (``selection``)
    DIR/hparams/              TensorBoard hparams: the run's settings with its final figures (``hparams_log``)

A stage whose ``metrics.json`` exists is done and is not redone; a stage interrupted during training resumes
from its ``checkpoints/last.ckpt``.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import training
from ..hparams_log import HPARAMS_FOLDER, hparam_values, run_metrics, write_hparams
from ..run_config import RunConfig
from .baselines import stage_matched_baseline, stage_mde_baseline
from .cluster import stage_cluster
from .fieldwise import stage_fieldwise
from .losses import stage_losses
from .retrain import stage_baseline, stage_retrain
from .run_directory import RunDirectory
from .search import stage_search
from .selection import select_model
from .separate import stage_separate

__all__ = ["COUNT_KEYS", "collect_metrics", "run_pipeline"]

StageHook = Callable[[str, dict], None]

COUNT_KEYS = ("embedding_params", "router_params", "footprint_params", "dense_params", "flops_per_sample")
"""Size and cost of every model in ``DIR/metrics.json`` (:class:`~ihas_lightning.flops.ModelCounts`): stages
written before these counts existed report None for the missing ones."""


def run_pipeline(config: RunConfig, on_stage_done: StageHook | None = None, restart: bool = False) -> dict:
    """Run every stage not yet done in ``config.out``; write and return ``DIR/metrics.json`` (and write
    ``DIR/hparams/``, the run's settings and final figures for TensorBoard's HPARAMS tab).

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
    target = _footprint(retrain)
    if config.matched_baseline:
        stage_matched_baseline(run, config, target, dm)
    if config.mde_baseline:
        stage_mde_baseline(run, config, target, dm)
    if config.fieldwise:
        stage_fieldwise(run, config, dm)
    metrics = collect_metrics(run, config)
    # after every stage: TensorBoard's HPARAMS tab then lists the run's settings beside its test figures
    write_hparams(run.root / HPARAMS_FOLDER, hparam_values(config), run_metrics(metrics))
    return metrics


def _footprint(retrain: dict) -> int:
    """iHAS's footprint (tables + router), the equal-footprint baselines' target; a retraining written before
    the router was counted gives its tables."""
    return int(retrain.get("footprint_params") or retrain["embedding_params"])


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
    footprint = ("dims", "target_footprint", "footprint_gap")
    extras = {"baseline_matched": ("dim", *footprint), "baseline_mde": (*footprint, "kept_alpha", "candidates"),
              "fieldwise": ("groups", "dims")}
    for stage, more in extras.items():
        if run.done(stage):
            metrics[stage] = {k: run.metrics(stage).get(k) for k in (*keep, *more)}
            metrics["seconds"][stage] = run.metrics(stage).get("seconds")
    metrics["selection"] = select_model(metrics)
    training.write_json(run.root / "metrics.json", metrics)
    return metrics

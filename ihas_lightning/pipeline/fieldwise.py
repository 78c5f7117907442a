"""The field-wise variant (f): the run's own search clustered with K = 1, retrained as iHAS is.

One group is one set of per-field dimensions for every sample: no router is served, so its
``router_params`` and router FLOPs are 0 and its footprint is its tables (``RetrainModule`` counts so for
K = 1). Its tables are fitted to iHAS's footprint (tables + router, as a share of the uniform tables), and its
budget fit, warm start and retraining epochs are the run's, which makes it the answer to "do the instance-wise
groups add anything over the searched field-wise dimensions at the same size?". Writes
``DIR/fieldwise_cluster/`` (clusters.json, metrics.json) and ``DIR/fieldwise/`` (as ``DIR/retrain/``).
"""

from __future__ import annotations

from dataclasses import replace

from .. import training
from ..data.datamodule import CTRDataModule
from ..footprint_dims import table_params
from ..run_config import RunConfig
from .cluster import stage_cluster
from .retrain import stage_retrain
from .run_directory import RunDirectory

__all__ = ["stage_fieldwise"]


def _ihas_share(run: RunDirectory, config: RunConfig, dm: CTRDataModule) -> float:
    """iHAS's footprint (tables + router, ``DIR/retrain/metrics.json``) over the uniform model's tables."""
    retrain = run.metrics("retrain")
    footprint = retrain.get("footprint_params") or retrain["embedding_params"]
    uniform = table_params(dict.fromkeys(dm.schema.embedded_fields, config.model.dim), dm.vocab_sizes)
    return min(1.0, footprint / uniform)


def stage_fieldwise(run: RunDirectory, config: RunConfig, dm: CTRDataModule | None = None,
                    stage: str = "fieldwise") -> dict:
    """Cluster the run's search with one group into ``DIR/<stage>_cluster/``, its tables at most iHAS's footprint
    (``DIR/retrain/metrics.json``), and retrain it into ``DIR/<stage>/``."""
    if run.done(stage):
        return run.metrics(stage)
    one_group = replace(config, cluster=replace(config.cluster, k=1))
    dm = dm or training.datamodule_from_config(config.data, config.trainer.threads)
    stage_cluster(run, one_group, dm, stage=f"{stage}_cluster", budget=_ihas_share(run, config, dm))
    return stage_retrain(run, one_group, dm, stage=stage, clusters_from=f"{stage}_cluster")

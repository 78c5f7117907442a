"""The field-wise variant (f): the run's own search clustered with K = 1, retrained as iHAS is.

One group is one set of per-field dimensions for every sample: no router is served, so its
``router_params`` and router FLOPs are 0 and its footprint is its tables (``RetrainModule`` counts so for
K = 1). The budget fit, warm start and retraining epochs are the run's, which makes it the answer to "do the
instance-wise groups add anything over the searched field-wise dimensions?". Writes
``DIR/fieldwise_cluster/`` (clusters.json, metrics.json) and ``DIR/fieldwise/`` (as ``DIR/retrain/``).
"""

from __future__ import annotations

from dataclasses import replace

from ..data.datamodule import CTRDataModule
from ..run_config import RunConfig
from .cluster import stage_cluster
from .retrain import stage_retrain
from .run_directory import RunDirectory

__all__ = ["stage_fieldwise"]


def stage_fieldwise(run: RunDirectory, config: RunConfig, dm: CTRDataModule | None = None,
                    stage: str = "fieldwise") -> dict:
    """Cluster the run's search with one group into ``DIR/<stage>_cluster/`` and retrain it into ``DIR/<stage>/``."""
    one_group = replace(config, cluster=replace(config.cluster, k=1))
    stage_cluster(run, one_group, dm, stage=f"{stage}_cluster")
    return stage_retrain(run, one_group, dm, stage=stage, clusters_from=f"{stage}_cluster")

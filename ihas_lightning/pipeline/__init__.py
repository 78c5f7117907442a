"""The iHAS pipeline as stages over one run directory: search -> cluster -> retrain, plus the baselines.

One module per job: ``run_directory`` (paths and ``run.json``), ``search``, ``cluster``, ``retrain`` (and the
uniform baselines), ``separate`` (the separate-models variant), ``losses``
(validation AUC step by step), ``run`` (the whole run and its metrics).
"""

from ..run_config import BUDGET_FITS
from .cluster import stage_cluster
from .losses import LOSS_STEPS, stage_losses
from .retrain import build_retrain_module, stage_baseline, stage_retrain
from .run import collect_metrics, matched_baseline_dim, run_pipeline
from .run_directory import RunDirectory, embedding_rows
from .search import (load_searched_module, search_metrics, searched_checkpoint, searched_masks, stage_search,
                     unsettled_gates)
from .separate import stage_separate

__all__ = ["BUDGET_FITS", "LOSS_STEPS", "RunDirectory", "build_retrain_module", "collect_metrics", "embedding_rows",
           "load_searched_module", "matched_baseline_dim", "run_pipeline", "search_metrics", "searched_checkpoint",
           "searched_masks", "stage_baseline", "stage_cluster", "stage_losses", "stage_retrain", "stage_search",
           "stage_separate", "unsettled_gates"]

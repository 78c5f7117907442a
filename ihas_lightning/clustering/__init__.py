"""Clustering stage of iHAS: group samples by their deterministic gate masks, give each group dimensions.

After the search stage, every sample has a deterministic mask ``z = 1[p >= 0.5]`` of shape ``(F, D)``.
iHAS (Yu et al., CIKM 2023, arXiv 2309.07967) groups samples whose masks look alike, so that a handful of
retrained models (one per group, sharing tables) can each use the field dimensions its members
asked for. This module does the grouping and the per-group dimensions, and nothing else:

* :class:`MiniBatchKMeans` is mini-batch k-means (Sculley 2010, "Web-scale k-means clustering", WWW:
  per-center learning rate ``1 / count``) with greedy k-means++ initialization on a reservoir sample
  (Arthur & Vassilvitskii 2007, "k-means++: The Advantages of Careful Seeding", SODA). It is plain
  torch so it streams over data larger than memory and runs on the device of its inputs.
* :func:`assign_dims` turns each group's histogram of active-gate counts per field into a dimension,
  snapped *up* to a candidate set.
* :func:`cluster` runs the whole stage over streams of batches and returns a :class:`ClusterResult`
  that saves to JSON and routes new samples to the nearest centroid.

Choosing K: ``ClusterConfig.k`` fixes it; with ``k = None`` the K with the best mean silhouette (Rousseeuw
1987) on a seeded subsample is taken. The pipeline calls :func:`cluster` once per run, and nothing chooses K
by the validation AUC of the retrained groups. See docs/design.md#31-clustering-grouping-the-masks.
"""

from .dims import (NarrowingCost, active_count_histogram, assign_dims, fill_dims_to_budget, fit_dims_to_budget,
                   loss_decrease, loss_increase, narrowed, open_gate_cost, open_gate_gain, stored_param_share, widened)
from .kmeans import MiniBatchKMeans, adjusted_rand_index, silhouette_score
from .stage import ClusterConfig, ClusterResult, cluster

__all__ = [
    "ClusterConfig",
    "ClusterResult",
    "MiniBatchKMeans",
    "NarrowingCost",
    "active_count_histogram",
    "adjusted_rand_index",
    "assign_dims",
    "cluster",
    "fill_dims_to_budget",
    "fit_dims_to_budget",
    "loss_decrease",
    "loss_increase",
    "narrowed",
    "open_gate_cost",
    "open_gate_gain",
    "silhouette_score",
    "stored_param_share",
    "widened",
]

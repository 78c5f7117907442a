"""Cost-only sweep over table sizes: where serving the tables from PIM starts to beat the host.

PIM pays for tables that do not fit the host's last-level cache (see :mod:`.cost_model`): a row in the cache never
reaches DRAM, whose 64 B lines and channel bandwidth are what PIM improves on. Data sets small enough to train on
here have tables of a few MB, which fit; Criteo's real vocabularies (33.8M ids) do not. This module scales a
served shape's vocabularies and, at each size, compares the best PIM configuration of a grid against host-only
serving of the same shape (ratios < 1: PIM is cheaper). No accuracy is involved: the shape (dims, widths) and
the precision stay fixed, so the crossover is the placement's alone. See docs/design.md#6-pim-co-design.

Example:
    >>> spec = ModelSpec((16,) * 26, CRITEO_CARDINALITIES, dense_dim=13, dnn_hidden=(256, 128))
    >>> rows = table_size_sweep(spec, pim_configs(), factors=(1e-4, 1e-3, 1e-2, 0.1, 1.0))
    >>> crossover(rows, "latency_ratio")
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from .config import BYTES_PER_ELEMENT, ModelSpec, PIMConfig, get_preset, zipf_hot_share
from .cost_model import estimate

__all__ = ["scaled", "pim_configs", "table_size_sweep", "crossover", "describe_config"]

RATIOS = ("latency_ratio", "energy_ratio")


def scaled(spec: ModelSpec, factor: float, zipf: float | None = None) -> ModelSpec:
    """``spec`` with every vocabulary times ``factor`` (at least one row); ``zipf``: each table's hot-row
    share from Zipf access with that exponent (:func:`~ihas_lightning.pim.config.zipf_hot_share`), else the
    spec's own (None: uniform access)."""
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    vocab = tuple(max(1, round(v * factor)) for v in spec.vocab_sizes)
    hot = spec.hot_share if zipf is None else tuple(zipf_hot_share(v, zipf) for v in vocab)
    return replace(spec, vocab_sizes=vocab, hot_share=hot)


def pim_configs(devices: Sequence[str] = ("upmem", "hbm_pim", "recnmp"),
                unit_shares: Sequence[float] = (0.25, 0.5, 1.0),
                top_ks: Sequence[int] = (1, 2, 4, 8), precisions: Sequence[str] = ("fp32",),
                partitionings: Sequence[str] = ("table", "row"),
                in_memory: Sequence[str] = ("none", "pooling", "pooling+interaction"),
                batch_sizes: Sequence[int] = (64, 256, 1024), host: str = "host_cpu_dram",
                host_cache_bytes: float | None = None) -> list[PIMConfig]:
    """Every configuration of the grid that puts at least one table in PIM: all tables, or the ``k`` largest for
    each ``k`` of ``top_ks`` (the search space's PIM choices, at fp32 by default so that accuracy is untouched)."""
    configs = []
    for device, share, placement, precision, part, mem, batch in itertools.product(
            devices, unit_shares, [("all_pim", 0)] + [("top_k", k) for k in top_ks], precisions, partitionings,
            in_memory, batch_sizes):
        units = max(1, round(share * get_preset(device).default_num_units))
        configs.append(PIMConfig(device=device, num_units=units, table_placement=placement[0], pim_top_k=placement[1],
                                 precision=precision, partitioning=part, pooling_in_memory=mem != "none",
                                 interaction_in_memory=mem == "pooling+interaction", batch_size=batch, host=host,
                                 host_cache_bytes=host_cache_bytes))
    return configs


def describe_config(config: PIMConfig) -> str:
    """One line: device x units, placement, precision, partitioning, what runs in memory, batch size."""
    place = f"top_{config.pim_top_k}" if config.table_placement == "top_k" else str(config.table_placement)
    mem = "pooling+interaction" if config.interaction_in_memory else "pooling" if config.pooling_in_memory else "none"
    return (f"{config.device} x{config.num_units} {place} {config.precision} {config.partitioning} in-memory:{mem} "
            f"B={config.batch_size}")


def table_size_sweep(spec: ModelSpec, configs: Sequence[PIMConfig], factors: Sequence[float],
                     zipf: float | None = None) -> list[dict[str, Any]]:
    """At each vocabulary factor (ascending): the tables' fp32 bytes, the host-only baseline's share of lookups
    served by its cache, and the feasible PIM configuration with the lowest latency ratio, the lowest energy
    ratio, and the lowest larger-of-the-two (``both``), each against host-only serving at its batch size."""
    if not configs:
        raise ValueError("configs is empty: nothing to compare the host with")
    rows = []
    for factor in sorted(factors):
        shape = scaled(spec, factor, zipf)
        bases: dict[tuple, Any] = {}
        scored = []
        for config in configs:
            key = (config.batch_size, config.host, config.host_cache_bytes)
            if key not in bases:
                bases[key] = estimate(shape, PIMConfig.baseline(*key))
            base, cost = bases[key], estimate(shape, config)
            if not cost.feasible:
                continue
            scored.append((cost.latency_s_per_batch / base.latency_s_per_batch,
                           cost.energy_j_per_sample / base.energy_j_per_sample, config))
        base = next(iter(bases.values()))
        served = base.bytes_breakdown["host_gather"] + base.bytes_breakdown["host_cache"]
        row: dict[str, Any] = {
            "factor": factor, "rows": sum(shape.vocab_sizes),
            "table_bytes": sum(v * d * BYTES_PER_ELEMENT["fp32"] for v, d in zip(shape.vocab_sizes,
                                                                               shape.embedding_dims)),
            "host_cache_hit_rate": base.bytes_breakdown["host_cache"] / served if served else 0.0,
            "feasible_configs": len(scored)}
        for name, key in (("latency", lambda s: (s[0], s[1])), ("energy", lambda s: (s[1], s[0])),
                          ("both", lambda s: (max(s[0], s[1]), s[0] + s[1]))):
            best = min(scored, key=key) if scored else None
            row[name] = None if best is None else {"latency_ratio": best[0], "energy_ratio": best[1],
                                                    "config": describe_config(best[2])}
        rows.append(row)
    return rows


def crossover(rows: Sequence[dict[str, Any]], metric: str = "latency_ratio", best: str | None = None) -> dict:
    """Where the best PIM configuration starts beating the host for good: the first row from which every larger
    one has ``metric`` < 1 (``pim_from``) and the row before it (``host_until``, the largest size where the host
    is at least as cheap); either is None when PIM wins at every size or at none. ``best``: which of a row's
    winners to read (default: the one chosen for ``metric``; "both" reads the larger-of-two winner)."""
    if metric not in RATIOS:
        raise ValueError(f"metric must be one of {RATIOS}, got {metric!r}")
    which = best or metric.removesuffix("_ratio")

    def wins(row: dict) -> bool:
        point = row[which]
        return point is not None and point[metric] < 1.0

    start = len(rows)
    while start > 0 and wins(rows[start - 1]):
        start -= 1
    keep = ("factor", "rows", "table_bytes", "host_cache_hit_rate")
    return {"metric": metric, "winner": which,
            "pim_from": {**{k: rows[start][k] for k in keep}, **rows[start][which]} if start < len(rows) else None,
            "host_until": {k: rows[start - 1][k] for k in keep} if start > 0 else None}

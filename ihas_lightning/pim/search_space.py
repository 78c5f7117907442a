"""The co-design search space: a sub-architecture of the supernet and a PIM configuration, per Optuna trial.

A trial chooses

* embedding dimensions: one per field from the supernet's candidate set (``mode="per_field"``), or a share
  of the full embedding parameters (``mode="budget"``) that :func:`allocate_budget` turns into dims;
* a width share per DNN hidden layer (a prefix of its units, as the supernet was trained);
* a PIM configuration (:class:`~ihas_lightning.pim.PIMConfig`): device preset, share of its units, table
  placement policy (all tables in PIM, the k largest, or none), precision, partitioning, what runs in memory
  (nothing / pooling / pooling + interaction), and the served batch size.

The space is *static* (every trial suggests the same parameters, whatever their values), so every Optuna
sampler, GPSampler included, models all of them; a parameter that a choice makes irrelevant (``pim_top_k``
without the ``top_k`` policy) is still suggested and simply unused.

Example:
    >>> space = SearchSpace.from_module(module, dm)
    >>> candidate = suggest(trial, space)          # inside an Optuna objective
    >>> estimate(model_spec(space, candidate.subarch), candidate.config)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..subarchitecture import SubArchitecture
from .config import ModelSpec, PIMConfig, access_stats, get_preset, zipf_hot_share

__all__ = ["SearchSpace", "Candidate", "suggest", "model_spec", "allocate_budget", "measured_access"]

IN_MEMORY = ("none", "pooling", "pooling+interaction")


@dataclass(frozen=True)
class SearchSpace:
    """What a trial may choose, and the served model's fixed shape (vocabularies, access statistics).

    Args:
        fields, vocab_sizes: the supernet's embedded fields and their vocabulary sizes, in order.
        dim, hidden_units: the supernet's full dimension and DNN widths (the baseline's).
        dim_choices: candidate per-field dims (the supernet's sampler's set).
        width_choices: candidate shares of each DNN hidden layer.
        mode: "per_field" (a dim per field) or "budget" (a share of the embedding parameters).
        budget_choices: the shares a "budget" trial picks from.
        devices, unit_shares, placements, precisions, partitionings, in_memory, batch_sizes: the PIM choices;
            ``unit_shares`` are shares of the preset's default number of units.
        host: the host preset (serves host-placed tables and the DNN; also the baseline's).
        dense_dim, interaction, cross_layers, lookups_per_sample, hot_share: the served model's shape.
    """

    fields: tuple[str, ...]
    vocab_sizes: tuple[int, ...]
    dim: int
    hidden_units: tuple[int, ...]
    dim_choices: tuple[int, ...] = (2, 4, 8, 16)
    width_choices: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
    mode: Literal["per_field", "budget"] = "per_field"
    budget_choices: tuple[float, ...] = (0.125, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)
    devices: tuple[str, ...] = ("upmem", "hbm_pim", "recnmp")
    unit_shares: tuple[float, ...] = (0.25, 0.5, 1.0)
    placements: tuple[str, ...] = ("all_pim", "top_k", "all_host")
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    partitionings: tuple[str, ...] = ("table", "row")
    in_memory: tuple[str, ...] = IN_MEMORY
    batch_sizes: tuple[int, ...] = (64, 256, 1024)
    host: str = "host_cpu_dram"
    dense_dim: int = 0
    interaction: Literal["fm", "cross", "none"] = "fm"
    cross_layers: int = 0
    lookups_per_sample: tuple[float, ...] | None = None
    hot_share: tuple[float, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        if len(self.fields) != len(self.vocab_sizes):
            raise ValueError(f"{len(self.fields)} fields but {len(self.vocab_sizes)} vocabulary sizes")
        if self.mode not in ("per_field", "budget"):
            raise ValueError(f"mode must be 'per_field' or 'budget', got {self.mode!r}")
        if not self.dim_choices or max(self.dim_choices) > self.dim or min(self.dim_choices) < 0:
            raise ValueError(f"dim_choices {list(self.dim_choices)} must lie in [0, {self.dim}]")
        if any(not 0 < w <= 1 for w in self.width_choices) or any(not 0 < s <= 1 for s in self.unit_shares):
            raise ValueError("width_choices and unit_shares must be shares in (0, 1]")
        for name in self.devices:
            if get_preset(name).is_host:
                raise ValueError(f"devices must be PIM presets; {name!r} is a host preset")
        bad = [m for m in self.in_memory if m not in IN_MEMORY]
        if bad:
            raise ValueError(f"in_memory entries must be among {IN_MEMORY}, got {bad}")

    @classmethod
    def from_module(cls, module: Any, dm: Any | None = None, **choices: Any) -> SearchSpace:
        """The space of a trained :class:`~ihas_lightning.modules.SupernetModule`; ``dm`` adds measured access
        statistics (lookups per sample, hot-row share) from its training split. ``choices`` override defaults."""
        backbone, masks = module.backbone, module.supernet_masks
        model = backbone.model
        kind = type(model).__name__
        interaction = {"DeepFM": "fm" if getattr(model, "use_fm", True) else "none", "DCN": "cross"}.get(kind, "none")
        cross = int(getattr(model, "cross_num", 0)) if interaction == "cross" else 0
        vocab = tuple(model.embedding_dict[f].num_embeddings for f in masks.fields)
        access = measured_access(dm, backbone.schema, vocab) if dm is not None else {}
        return cls(fields=masks.fields, vocab_sizes=vocab, dim=masks.dim, hidden_units=masks.hidden_units,
                   dense_dim=len(backbone.schema.dense), interaction=interaction, cross_layers=cross,
                   **access, **choices)

    def at_vocabulary(self, vocab: Mapping[str, int], zipf: float | None = None) -> SearchSpace:
        """The same space costed at other vocabulary sizes (e.g. the full data set's, when the supernet was trained
        on a sample): every field's size from ``vocab``, hot-row shares from Zipf access with exponent ``zipf``
        (None: uniform access; the shares measured on the sample do not hold at another size)."""
        missing = [f for f in self.fields if f not in vocab]
        if missing:
            raise ValueError(f"vocab gives no size for fields {missing}")
        sizes = tuple(int(vocab[f]) for f in self.fields)
        hot = None if zipf is None else tuple(zipf_hot_share(v, zipf) for v in sizes)
        return replace(self, vocab_sizes=sizes, hot_share=hot)

    @property
    def full(self) -> SubArchitecture:
        return SubArchitecture.full(self.fields, self.dim, self.hidden_units)

    def baseline_config(self, batch_size: int) -> PIMConfig:
        """Host-only fp32 serving on ``host`` (the reference every ratio is taken against)."""
        return PIMConfig.baseline(batch_size, host=self.host)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Candidate:
    """What one trial serves: a sub-architecture of the supernet under a PIM configuration."""

    subarch: SubArchitecture
    config: PIMConfig

    def to_dict(self) -> dict[str, Any]:
        config = {k: v for k, v in self.config.__dict__.items()}
        return {**self.subarch.to_dict(), "pim": config}


def allocate_budget(space: SearchSpace, share: float) -> tuple[int, ...]:
    """Dims within ``share`` of the full embedding parameters: every field starts at the smallest positive
    candidate (the floor: a share below it returns the floor), then fields are raised to the next candidate,
    cheapest table first (vocab x extra dims), while the budget allows. Small-vocabulary fields reach full
    width at almost no memory cost."""
    if not 0 < share <= 1:
        raise ValueError(f"budget share must be in (0, 1], got {share}")
    choices = sorted(d for d in space.dim_choices if d > 0)
    limit = share * sum(space.vocab_sizes) * space.dim
    level = [0] * len(space.fields)
    used = sum(v * choices[0] for v in space.vocab_sizes)
    while True:
        options = [(v * (choices[level[i] + 1] - choices[level[i]]), i) for i, v in enumerate(space.vocab_sizes)
                   if level[i] + 1 < len(choices)]
        options = [(cost, i) for cost, i in options if used + cost <= limit]
        if not options:
            return tuple(choices[k] for k in level)
        cost, i = min(options)
        level[i] += 1
        used += cost


def suggest(trial: Any, space: SearchSpace) -> Candidate:
    """Ask ``trial`` for one candidate (parameter names are stable: a study can be resumed and compared)."""
    if space.mode == "budget":
        dims = allocate_budget(space, trial.suggest_categorical("emb_budget", list(space.budget_choices)))
    else:
        dims = tuple(trial.suggest_categorical(f"dim_{f}", list(space.dim_choices)) for f in space.fields)
    widths = tuple(max(1, round(trial.suggest_categorical(f"width_{i}", list(space.width_choices)) * h))
                   for i, h in enumerate(space.hidden_units))
    device = trial.suggest_categorical("device", list(space.devices))
    units = max(1, round(trial.suggest_categorical("unit_share", list(space.unit_shares))
                         * get_preset(device).default_num_units))
    placement = trial.suggest_categorical("placement", list(space.placements))
    top_k = trial.suggest_int("pim_top_k", 1, len(space.fields))
    in_memory = trial.suggest_categorical("in_memory", list(space.in_memory))
    config = PIMConfig(device=device, num_units=units, table_placement=placement,
                       precision=trial.suggest_categorical("precision", list(space.precisions)),
                       partitioning=trial.suggest_categorical("partitioning", list(space.partitionings)),
                       pooling_in_memory=in_memory != "none", interaction_in_memory=in_memory == "pooling+interaction",
                       batch_size=trial.suggest_categorical("batch_size", list(space.batch_sizes)),
                       pim_top_k=top_k, host=space.host)
    return Candidate(SubArchitecture(space.fields, dims, widths), config)


def model_spec(space: SearchSpace, subarch: SubArchitecture) -> ModelSpec:
    """The served shape of ``subarch`` (as :func:`ihas_lightning.flops.backbone_flops` counts it)."""
    return ModelSpec(embedding_dims=subarch.dims, vocab_sizes=space.vocab_sizes, dense_dim=space.dense_dim,
                     lookups_per_sample=space.lookups_per_sample, hot_share=space.hot_share,
                     dnn_hidden=subarch.widths, interaction=space.interaction, cross_layers=space.cross_layers,
                     field_names=space.fields)


def measured_access(dm: Any, schema: Any, vocab_sizes: Sequence[int]) -> dict[str, tuple[float, ...]]:
    """Lookups per sample and hot-row share per field, measured on the training split.

    Sparse fields use :func:`~ihas_lightning.pim.access_stats` on their id columns; a multi-valued field
    counts its non-padding ids per row (id 0 is padding) and its hot share over all of them.
    """
    train = dm.split("train")
    columns = train if hasattr(train, "sparse") else train.read_all()
    n_sparse = len(schema.sparse)
    stats = access_stats(np.asarray(columns.sparse), list(vocab_sizes[:n_sparse])) if n_sparse else \
        {"lookups_per_sample": (), "hot_share": ()}
    looks, hots = list(stats["lookups_per_sample"]), list(stats["hot_share"])
    start = 0
    for m, vocab in zip(schema.multivalued, vocab_sizes[n_sparse:]):
        block = np.asarray(columns.multi)[:, start:start + m.max_len]                            # (N, L)
        start += m.max_len
        present = block[block > 0]
        looks.append(float(present.size / max(len(block), 1)))
        if present.size == 0:
            hots.append(0.0)
            continue
        counts = np.sort(np.bincount(present, minlength=vocab))[::-1]
        hots.append(float(counts[: max(1, int(np.ceil(0.01 * vocab)))].sum() / present.size))
    return {"lookups_per_sample": tuple(looks), "hot_share": tuple(hots)}


def describe(params: Mapping[str, Any]) -> str:
    """A one-line summary of a trial's PIM parameters (for tables)."""
    return (f"{params.get('device')} x{params.get('unit_share')} {params.get('placement')} {params.get('precision')} "
            f"{params.get('partitioning')} {params.get('in_memory')} B={params.get('batch_size')}")

"""``RunConfig``: every setting of an iHAS run (search -> cluster -> retrain + baselines), as frozen values.

``run.json`` of a run directory is ``RunConfig.to_dict()``; :meth:`RunConfig.from_dict` also reads the flat
``run.json`` written before these configs existed (the ``ihas run`` options as argparse named them), which
is the form :meth:`RunConfig.from_options` builds a config from. It imports nothing from the stages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace
from typing import Any

from .data.config import DataConfig
from .gates import GateConfig
from .modules.config import BackboneConfig
from .modules.retrain_module import ROUTERS

__all__ = ["BUDGET_FITS", "ClusterOptions", "RetrainConfig", "RunConfig", "SearchConfig", "TrainerConfig",
           "check_at_least", "flatten_config", "parse_ints", "parse_widths", "with_fields"]

BUDGET_FITS = ("auto", "loss", "gates")
"""How the cluster stage narrows the shared tables to the budget: measured validation logloss, open gates, or
both with the better kept on validation AUC (see docs/design.md#33-clustering-fitting-the-budget)."""


def check_at_least(name: str, value: Any, minimum: int, note: str = "") -> None:
    """A ValueError naming ``name`` unless ``value`` is an int >= ``minimum`` (a bool is not a count)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{' ' + note if note else ''}, got {value!r}")


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"model.dim": 16, ...}``: a config's fields by dotted name, down to values that are not configs (a tuple
    or a dict stays one value), for comparing two configs or logging one."""
    if is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for item in fields(value):
            out.update(flatten_config(getattr(value, item.name), f"{prefix}{item.name}."))
        return out
    return {prefix.rstrip("."): value}


def with_fields(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``config`` with the dotted fields in ``values`` (``"data.val_share"``, ``"data.data"``) replaced."""
    parts: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        part, name = key.split(".")
        parts.setdefault(part, {})[name] = value
    return replace(config, **{part: replace(getattr(config, part), **items) for part, items in parts.items()})


def parse_widths(text: str) -> tuple[int, ...]:
    """DNN widths from ``"256,128"``; a ValueError names the ``--dnn`` option it came from."""
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise ValueError(f"--dnn must be comma-separated integers, got '{text}'") from None
    if not widths or min(widths) < 1:
        raise ValueError(f"--dnn needs at least one positive width, got '{text}'")
    return widths


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """Integers from ``"0,2,4"``; a ValueError names ``option``."""
    try:
        return tuple(int(d) for d in text.split(","))
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers, got '{text}'") from None


@dataclass(frozen=True)
class TrainerConfig:
    """The Lightning ``Trainer`` of every stage (``training.make_trainer``) and the process's torch threads.

    Args:
        epochs: training epochs (the search's, or a plain backbone's).
        accelerator, devices, num_nodes, strategy: as for ``pytorch_lightning.Trainer`` (``strategy="auto"``
            with several devices becomes DDP with unused parameters allowed).
        quiet: no progress bar.
        threads: ``torch.set_num_threads`` before the data is opened; 0 keeps torch's default.
    """

    epochs: int = 5
    accelerator: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    quiet: bool = False
    threads: int = 1

    def __post_init__(self) -> None:
        check_at_least("epochs", self.epochs, 1)
        check_at_least("devices", self.devices, 1)
        check_at_least("num_nodes", self.num_nodes, 1)
        check_at_least("threads", self.threads, 0, "(0: torch's default)")


@dataclass(frozen=True)
class SearchConfig:
    """The search stage besides its gates (``RunConfig.gate``) and backbone (``RunConfig.model``).

    Args:
        gate_lr: learning rate of the gate network.
        warmup_epochs: plain-backbone epochs before the gates switch on.
        init_from: a checkpoint to start the backbone from (e.g. a trained supernet's ``last.ckpt``).
        checkpoint: which searched epoch the later stages read: ``"best"`` validation AUC among the gated
            epochs or the ``"last"``.
        callbacks: a callbacks YAML replacing the default annealing, warm-up and statistics callbacks.
    """

    gate_lr: float = 3e-3
    warmup_epochs: int = 1
    init_from: str | None = None
    checkpoint: str = "best"
    callbacks: str | None = None

    def __post_init__(self) -> None:
        if self.checkpoint not in ("best", "last"):
            raise ValueError(f"checkpoint must be 'best' or 'last', got {self.checkpoint!r}")
        if not (math.isfinite(self.gate_lr) and self.gate_lr > 0):
            raise ValueError(f"gate_lr must be > 0, got {self.gate_lr}")
        check_at_least("warmup_epochs", self.warmup_epochs, 0)


@dataclass(frozen=True)
class ClusterOptions:
    """The cluster stage's own settings; its ``min_dim`` and seed are the run's (``gate.min_dim``, ``model.seed``).

    Args:
        k: number of groups; ``None`` (or 0, stored as ``None``) chooses it on validation data.
        candidate_dims: the dimensions a group's field may get.
        budget_fit: one of :data:`BUDGET_FITS`.
    """

    k: int | None = 4
    candidate_dims: tuple[int, ...] = (0, 2, 4, 6, 8, 12, 16)
    budget_fit: str = "auto"

    def __post_init__(self) -> None:
        if self.k == 0:
            object.__setattr__(self, "k", None)
        if self.k is not None and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"k must be >= 1, or 0 to choose it on validation data, got {self.k}")
        object.__setattr__(self, "candidate_dims", tuple(int(d) for d in self.candidate_dims))
        if not self.candidate_dims or min(self.candidate_dims) < 0:
            raise ValueError(f"candidate_dims must be dimensions >= 0, got {self.candidate_dims}")
        if self.budget_fit not in BUDGET_FITS:
            raise ValueError(f"budget_fit must be one of {', '.join(BUDGET_FITS)}, got {self.budget_fit!r}")


@dataclass(frozen=True)
class RetrainConfig:
    """The retraining of the groups.

    Args:
        epochs: fine-tuning epochs.
        lr: its learning rate.
        group_dense: every group its own copy of the dense layers (see ``RetrainModule``).
        init_from: a checkpoint of the run's backbone (a trained supernet) to start from instead of the search.
        router: one of :data:`~ihas_lightning.modules.retrain_module.ROUTERS`: ``"linear"`` (a linear map of
            every field's first ``min_dim`` columns, fitted to the searched routing) or ``"gates"`` (the
            searched gate network and centroids; a run.json without the field had it).
    """

    epochs: int = 4
    lr: float = 1e-3
    group_dense: bool = False
    init_from: str | None = None
    router: str = "linear"

    def __post_init__(self) -> None:
        check_at_least("retrain epochs", self.epochs, 1)
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"retrain lr must be > 0, got {self.lr}")
        if self.router not in ROUTERS:
            raise ValueError(f"router must be one of {ROUTERS}, got {self.router!r}")


@dataclass(frozen=True)
class RunConfig:
    """One iHAS run: the defaults are those of ``ihas run``.

    Args:
        out: the run directory.
        data: the data and its split.
        model: the backbone; its ``lr`` trains the search and the uniform baselines, its ``seed`` every model
            (the separate-models variant's group c uses ``seed + c``).
        gate: the search's gates (``ihas run`` learns nested ones, ``prefix=True``).
        search, cluster, retrain: the stages' own settings.
        trainer: the Trainer of every stage; ``trainer.epochs`` are the search's.
        baseline_epochs: epochs of the uniform baselines and of the separate models; ``None``: search plus
            retraining epochs (stored resolved).
        matched_baseline: also train the baseline at iHAS's footprint (every field d or d+1 columns).
        separate: also train the separate-models variant.
        mde_baseline: also train the mixed-dimension baseline at iHAS's footprint (alpha chosen on validation).
        fieldwise: also cluster the search with one group and retrain it (the field-wise variant; on by
            default, so that a run compares instance-wise groups with field-wise dimensions on validation).

    Example:
        >>> config = RunConfig(out="runs/dcn", model=BackboneConfig("DCN", seed=0), separate=True)
        >>> metrics = run_pipeline(config)
    """

    out: str = "runs/default"
    data: DataConfig = field(default_factory=DataConfig)
    model: BackboneConfig = field(default_factory=lambda: BackboneConfig(seed=0))
    gate: GateConfig = field(default_factory=lambda: GateConfig(prefix=True))
    search: SearchConfig = field(default_factory=SearchConfig)
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    retrain: RetrainConfig = field(default_factory=RetrainConfig)
    trainer: TrainerConfig = field(default_factory=lambda: TrainerConfig(epochs=4))  # `ihas run`'s search
    baseline_epochs: int | None = None
    matched_baseline: bool = True
    separate: bool = False
    mde_baseline: bool = False
    fieldwise: bool = True

    def __post_init__(self) -> None:
        if self.baseline_epochs is None:
            object.__setattr__(self, "baseline_epochs", self.trainer.epochs + self.retrain.epochs)
        check_at_least("baseline_epochs", self.baseline_epochs, 1)
        if self.search.warmup_epochs >= self.trainer.epochs:
            # the gates switch on after the warm-up: with no epoch left they stay as initialized
            raise ValueError(f"warmup_epochs={self.search.warmup_epochs} leaves no gated epoch of epochs="
                             f"{self.trainer.epochs}: the gates would stay untrained (--warmup-epochs must be "
                             "below --epochs)")

    def to_dict(self) -> dict[str, Any]:
        """What ``run.json`` holds."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """A config from :meth:`to_dict`'s form, or from the flat options of an older ``run.json``."""
        if not isinstance(data.get("model"), Mapping):
            return cls.from_options(data)
        parts = {"data": DataConfig, "model": BackboneConfig, "gate": GateConfig, "search": SearchConfig,
                 "cluster": ClusterOptions, "retrain": RetrainConfig, "trainer": TrainerConfig}
        if isinstance(data.get("retrain"), Mapping) and "router" not in data["retrain"]:
            data = {**data, "retrain": {**data["retrain"], "router": "gates"}}   # run before the choice existed
        return cls(**{k: parts[k](**v) if k in parts else v for k, v in data.items()})

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> RunConfig:
        """A config from the ``ihas`` command-line options, as argparse names them (``vars(args)``).

        Options a command does not have keep the value the stages assumed before ``run.json`` held them:
        an ``ihas search`` has no clustering options, an old ``run.json`` may lack ``budget_fit``.
        """
        get = options.get
        dnn = get("dnn", "256,128")
        sparsity = get("sparsity_weight")
        min_dim = get("min_dim", 2)
        candidate_dims = get("candidate_dims", "0,2,4,8,16")
        epochs, rows = get("epochs", 5), get("rows")
        # a command without search options (ihas train, ihas supernet) has no warm-up to leave a gated epoch
        default_warmup = max(0, min(1, epochs - 1)) if isinstance(epochs, int) else 1
        return cls(
            out=get("out", "runs/default"),
            data=DataConfig(data=get("data", "synthetic"), format=get("format"), schema=get("schema"),
                            test=get("test"), rows=60_000 if rows is None else rows,
                            seed=get("seed", 0) if get("split_seed") is None else get("split_seed"),
                            min_count=get("min_count", 1), batch_size=get("batch_size", 1024),
                            cache_dir=get("cache_dir")),
            model=BackboneConfig(backbone=get("backbone", "DeepFM"), dim=get("dim", 16),
                                 dnn_hidden_units=parse_widths(dnn) if isinstance(dnn, str) else tuple(dnn),
                                 lr=get("lr", 1e-3), seed=get("seed", 0),
                                 embedding_updates=get("embedding_updates", "rowwise")),
            gate=GateConfig(budget=None if sparsity is not None else get("budget", 0.5),
                            sparsity_weight=sparsity or 0.0, relaxation=get("relaxation", "hard_concrete"),
                            prefix=get("prefix", False), min_dim=min_dim, allow_drop_field=min_dim == 0,
                            polarization_weight=get("polarization", 0.1)),
            search=SearchConfig(gate_lr=get("gate_lr", 3e-3), warmup_epochs=get("warmup_epochs", default_warmup),
                                init_from=get("init_from"), checkpoint=get("search_checkpoint", "last"),
                                # `--callbacks`; an older flat run.json named it `config`
                                callbacks=get("callbacks") if "callbacks" in options else get("config")),
            cluster=ClusterOptions(k=get("k", 4), budget_fit=get("budget_fit", "loss"),
                                   candidate_dims=parse_ints(candidate_dims, "--candidate-dims")
                                   if isinstance(candidate_dims, str) else tuple(candidate_dims)),
            retrain=RetrainConfig(epochs=get("retrain_epochs", 2), lr=get("retrain_lr", 5e-4),
                                  group_dense=bool(get("group_dense", False)),
                                  init_from=get("retrain_init_from"), router=get("router", "gates")),
            trainer=TrainerConfig(epochs=epochs, accelerator=get("accelerator", "auto"),
                                  devices=get("devices", 1), num_nodes=get("num_nodes", 1),
                                  strategy=get("strategy", "auto"), quiet=bool(get("quiet", False)),
                                  threads=get("threads", 0)),
            baseline_epochs=get("baseline_epochs"), matched_baseline=not get("no_matched_baseline", False),
            separate=bool(get("separate", False)), mde_baseline=bool(get("mde_baseline", False)),
            fieldwise=bool(get("fieldwise", False)))

"""Optuna multi-objective co-design study: supernet sub-architecture x PIM configuration.

Each trial picks a candidate from :mod:`~ihas_lightning.pim.search_space`, scores its accuracy with the
trained supernet's inherited weights (validation AUC; the validation batches are read once per process, so
a trial costs well under a second on CTR data of this size) and its cost with the analytic
:func:`~ihas_lightning.pim.estimate` against the baseline: the full supernet (every field at the full
dimension, full DNN widths) served host-only in fp32 at the same batch size. Objectives: maximize AUC,
minimize ``latency_ratio``, minimize ``energy_ratio``; ``flops_ratio`` is recorded too.

Constraints (``trial.set_constraint``, Optuna 5; a trial is feasible when every value is <= 0):
``capacity`` (> 0 when the cost model finds the configuration infeasible: a table or unit over capacity, a
precision the device cannot compute in, interaction in memory with tables on the host) and ``auc_drop``
(validation AUC drop against the full supernet minus ``max_auc_drop``; never binding without it).

Storage: SQLite ``DIR/pim/study.db`` by default, any SQLAlchemy URL (``postgresql://...``) or a journal
file (``journal:PATH`` or a path ending in .log/.journal) for workers on several machines. RDB storages get
a heartbeat, and a trial whose worker died is failed and re-queued with the same parameters
(:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`). ``workers=K`` runs K processes on the one
storage, sharing the trials. Running again continues the same study (``load_if_exists``), with the search space and
scoring its trials had or not at all (:mod:`~ihas_lightning.pim.continuation`). A trial that
raises is recorded as FAIL with its error in ``user_attrs["error"]``, and the study goes on.

Precision is part of the accuracy too: fp16 and int8 (symmetric, per-row scale) trials are scored with the
embedding tables rounded to that precision (:func:`quantized_tables`). See docs/design.md#6-pim-co-design.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import torch
from pytorch_lightning.utilities import move_data_to_device

from ..devices import resolve_device
from ..modules.supernet_module import REFIT_PRIOR, REFIT_ROWS, REFIT_SWEEPS, first_batches
from .config import get_preset
from .cost_model import estimate
from .continuation import check_continuation
from .search_space import Candidate, SearchSpace, model_spec, suggest
from .storage import SAMPLERS, make_sampler, make_storage

__all__ = ["StudySettings", "PIMObjective", "build_objective", "load_supernet", "run_study", "quantized_tables",
           "candidate_of", "DIRECTIONS", "METRIC_NAMES"]

DIRECTIONS = ("maximize", "minimize", "minimize")
METRIC_NAMES = ("auc", "latency_ratio", "energy_ratio")


@dataclass(frozen=True)
class StudySettings:
    """One ``ihas pim`` invocation. ``trials`` are added to what the study already holds.

    ``cost_vocab``: cost the candidates at these vocabulary sizes per field (e.g. the full data set's, when the
    supernet was trained on a sample; the AUC still comes from the data at hand), with Zipf(``cost_zipf``) access
    (None: uniform); see :meth:`SearchSpace.at_vocabulary`.

    ``finetune_steps``: each candidate's whole sub-network is first trained this many Adam steps on the first
    training batches, at ``finetune_lr`` (None: the supernet's own learning rate), then scored (0: inherited weights
    as they are). Before that the first-order weights are refit (:class:`~ihas_lightning.modules.FirstOrderRefit`:
    ``refit_sweeps`` Newton sweeps, prior precision ``refit_prior``, on the first ``refit_rows`` training rows,
    default :data:`~ihas_lightning.modules.REFIT_ROWS`; 0 sweeps: none). Both together ranked candidates of similar size
    better on the development data of ``benchmarks/results/supernet_rank.md``.

    ``device``: where the candidates are scored (:func:`~ihas_lightning.devices.resolve_device`; every worker
    process loads the supernet there).

    ``progress``: a progress bar of the trials (Optuna's; with several workers, the first worker's share).
    """

    run_dir: str
    trials: int = 100
    storage: str | None = None
    sampler: str = "tpe"
    workers: int = 1
    max_auc_drop: float | None = None
    seed: int = 0
    study_name: str = "pim"
    mode: str = "per_field"
    heartbeat_s: int = 30
    cost_vocab: Mapping[str, int] | None = None
    cost_zipf: float | None = None
    finetune_steps: int = 10
    finetune_lr: float | None = None
    refit_sweeps: int = REFIT_SWEEPS
    refit_prior: float = REFIT_PRIOR
    refit_rows: int = REFIT_ROWS
    device: str = "cpu"
    progress: bool = False

    def __post_init__(self) -> None:
        resolve_device(self.device)                       # a device that is not there fails before any trial
        if not isinstance(self.progress, bool):
            raise TypeError(f"progress must be a bool, got {self.progress!r}")
        if self.finetune_steps < 0 or self.refit_sweeps < 0 or self.refit_rows < 1:
            raise ValueError(f"finetune_steps and refit_sweeps must be >= 0 and refit_rows >= 1, got "
                             f"{self.finetune_steps}, {self.refit_sweeps} and {self.refit_rows}")
        if not self.refit_prior > 0:
            raise ValueError(f"refit_prior must be > 0, got {self.refit_prior}")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise ValueError(f"finetune_lr must be > 0, got {self.finetune_lr}")
        if self.trials < 0 or self.workers < 1:
            raise ValueError(f"trials must be >= 0 and workers >= 1, got {self.trials} and {self.workers}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.max_auc_drop is not None and self.max_auc_drop < 0:
            raise ValueError(f"max_auc_drop must be >= 0, got {self.max_auc_drop}")
        if self.cost_zipf is not None and self.cost_vocab is None:
            raise ValueError("cost_zipf sets the access skew of cost_vocab's tables: give cost_vocab too")

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.run_dir).resolve() / 'pim' / 'study.db'}"


_SUPERNETS: dict[tuple[str, str], tuple[Any, Any]] = {}


def load_supernet(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[Any, Any]:
    """The trained supernet of ``ihas supernet --out run_dir``, on ``device``, and its data module (cached per
    process and device)."""
    from ..data.config import DataConfig
    from ..modules.supernet_module import SupernetModule
    from ..training import datamodule_from_config

    stage = Path(run_dir) / "supernet"
    device = resolve_device(device)
    key = (str(stage.resolve()), str(device))
    if key not in _SUPERNETS:
        options, checkpoint = stage / "data.json", stage / "checkpoints" / "last.ckpt"
        if not options.exists() or not checkpoint.exists():
            raise FileNotFoundError(f"no trained supernet in {stage} (need data.json and checkpoints/last.ckpt): "
                                    f"run `ihas supernet --out {run_dir}` first")
        dm = datamodule_from_config(DataConfig(**json.loads(options.read_text())))
        module = SupernetModule.load_from_checkpoint(str(checkpoint), map_location=device).to(device).eval()
        _SUPERNETS[key] = (module, dm)
    return _SUPERNETS[key]


@contextlib.contextmanager
def quantized_tables(module: Any, precision: str) -> Iterator[None]:
    """Round every embedding table to ``precision`` for the duration (fp32: untouched), then restore it."""
    if precision == "fp32":
        yield
        return
    tables = [t.weight for t in module.backbone.model.embedding_dict.values()]
    saved = [w.detach().clone() for w in tables]
    try:
        with torch.no_grad():
            for w in tables:                                                                     # (V, D)
                if precision == "fp16":
                    w.copy_(w.half().float())
                elif precision == "int8":
                    scale = w.abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0             # (V, 1)
                    w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
                else:
                    raise ValueError(f"unknown precision {precision!r}")
        yield
    finally:
        with torch.no_grad():
            for w, value in zip(tables, saved):
                w.copy_(value)


def candidate_of(space: SearchSpace, params: dict[str, Any]) -> Candidate:
    """Rebuild a trial's candidate from its stored parameters."""
    try:
        return suggest(optuna.trial.FixedTrial(params), space)
    except ValueError as error:             # FixedTrial: "The value of the parameter 'x' is not found ..."
        raise ValueError(f"a trial's parameters {sorted(params)} do not fit this search space (mode "
                         f"{space.mode!r}): the study holds trials of another search; open it with the settings "
                         f"it was run with, or start another study (--study-name). {error}") from None


class PIMObjective:
    """Scores candidates; ``__call__`` is the Optuna objective (values in :data:`METRIC_NAMES` order).

    Args:
        module: a trained :class:`~ihas_lightning.modules.SupernetModule`.
        space: the search space (:meth:`SearchSpace.from_module`).
        batches: the evaluation batches (validation; kept in memory).
        max_auc_drop: optional largest validation AUC drop against the full supernet.
        memo: validation AUCs already computed on ``module`` and ``batches`` with the same fine-tune (objectives
            that differ only in costs share one; see :meth:`accuracy`).
        finetune_batches, finetune_lr, finetune_steps: training batches; each candidate's whole sub-network is
            trained ``finetune_steps`` Adam steps on them (None: one on each) at ``finetune_lr`` before it is scored,
            in fp32; the tables are rounded to the candidate's precision after that.
        refit_sweeps, refit_prior, refit_rows: the first-order refit before the fine-tune, on the first
            ``refit_rows`` rows of ``finetune_batches`` (0 sweeps: none).
    """

    def __init__(self, module: Any, space: SearchSpace, batches: Sequence[dict], max_auc_drop: float | None = None,
                 memo: dict[tuple, float] | None = None, finetune_batches: Sequence[dict] = (),
                 finetune_lr: float = 1e-2, finetune_steps: int | None = None, refit_sweeps: int = 0,
                 refit_prior: float = REFIT_PRIOR, refit_rows: int = REFIT_ROWS):
        self.module, self.space, self.batches = module, space, list(batches)
        self.finetune_batches, self.finetune_lr = list(finetune_batches), finetune_lr
        self.finetune_steps = len(self.finetune_batches) if finetune_steps is None else finetune_steps
        self.refit_sweeps, self.refit_prior = (refit_sweeps, refit_prior) if self.finetune_batches else (0, refit_prior)
        self.refit_rows = refit_rows
        self.max_auc_drop = max_auc_drop
        self._aucs = {} if memo is None else memo  # validation AUCs by candidate, shared by objectives of one module
        self.baseline_auc = self.accuracy(space.full, "fp32")

    def accuracy(self, subarch: Any, precision: str, batches: Sequence[dict] | None = None) -> float:
        """AUC of ``subarch`` with inherited (and, with ``finetune_batches``, briefly fine-tuned) weights at
        ``precision``; on the validation batches it is computed once per (dims, widths, precision) and remembered
        (samplers propose the same candidate again)."""
        key = (tuple(subarch.dims), tuple(subarch.widths), precision)
        if batches is None and key in self._aucs:
            return self._aucs[key]
        auc = self.module.evaluate_subnet(
            subarch, batches or self.batches, self.finetune_steps, finetune_data=self.finetune_batches,
            finetune_lr=self.finetune_lr, finetune_scope="all", refit_sweeps=self.refit_sweeps,
            refit_prior=self.refit_prior, refit_rows=self.refit_rows,
            score_context=lambda: quantized_tables(self.module, precision)).auc
        if batches is None:
            self._aucs[key] = auc
        return auc

    def evaluate(self, candidate: Candidate, batches: Sequence[dict] | None = None) -> dict[str, Any]:
        """AUC, cost ratios against the baseline, feasibility and the raw costs of one candidate."""
        space, config = self.space, candidate.config
        reasons: list[str] = []
        cost_config = config
        if config.pooling_in_memory and config.precision not in get_preset(config.device).compute_precisions:
            reasons.append(f"{config.device} computes in {'/'.join(get_preset(config.device).compute_precisions)} "
                           f"only; in-memory pooling cannot use {config.precision}")
            cost_config = replace(config, pooling_in_memory=False, interaction_in_memory=False)
        cost = estimate(model_spec(space, candidate.subarch), cost_config)
        base = estimate(model_spec(space, space.full), space.baseline_config(config.batch_size))
        reasons += list(cost.reasons)
        auc = self.accuracy(candidate.subarch, config.precision, batches)
        return {"auc": auc, "latency_ratio": cost.latency_s_per_batch / base.latency_s_per_batch,
                "energy_ratio": cost.energy_j_per_sample / base.energy_j_per_sample,
                "flops_ratio": cost.flops_per_sample / base.flops_per_sample, "feasible": not reasons,
                "reasons": reasons, "latency_s_per_batch": cost.latency_s_per_batch,
                "energy_j_per_sample": cost.energy_j_per_sample, "memory_bytes_per_unit": cost.memory_bytes_per_unit,
                "auc_drop": self.baseline_auc - auc}

    def __call__(self, trial: optuna.Trial) -> tuple[float, float, float]:
        start = time.perf_counter()
        try:
            candidate = suggest(trial, self.space)
            result = self.evaluate(candidate)
        except Exception as error:  # recorded on the trial; optimize(catch=...) marks it FAIL and goes on
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise
        trial.set_constraint("capacity", 0.0 if result["feasible"] else float(len(result["reasons"])))
        limit = 1.0 if self.max_auc_drop is None else self.max_auc_drop
        trial.set_constraint("auc_drop", result["auc_drop"] - limit)
        # Few attributes: every one is a storage write (a commit on an RDB).
        trial.set_user_attr("flops_ratio", result["flops_ratio"])
        trial.set_user_attr("arch", {"dims": list(candidate.subarch.dims), "widths": list(candidate.subarch.widths),
                                     "num_units": candidate.config.num_units})
        trial.set_user_attr("cost", {k: result[k] for k in ("feasible", "reasons", "latency_s_per_batch",
                                                            "energy_j_per_sample", "memory_bytes_per_unit", "auc_drop")}
                            | {"seconds": time.perf_counter() - start})
        return result["auc"], result["latency_ratio"], result["energy_ratio"]


def _study(settings: StudySettings, seed: int) -> optuna.Study:
    storage = make_storage(settings.storage_url, settings.heartbeat_s)
    study = optuna.create_study(storage=storage, study_name=settings.study_name, directions=list(DIRECTIONS),
                                sampler=make_sampler(settings.sampler, seed), load_if_exists=True)
    if tuple(d.name.lower() for d in study.directions) != DIRECTIONS:
        raise ValueError(f"study {settings.study_name!r} in {settings.storage_url} has directions "
                         f"{[d.name for d in study.directions]}, not {list(DIRECTIONS)}")
    return study


def build_objective(settings: StudySettings) -> PIMObjective:
    """The trial objective of a study: the run's trained supernet scored on its validation batches, each candidate
    after a first-order refit (``settings.refit_sweeps`` sweeps) and ``settings.finetune_steps`` fine-tuning steps on
    the first training batches.

    The validation batches are read once per loaded supernet and kept, so the workers of a study share them, and
    so are the validation AUCs of the candidates scored: a second study on the same supernet (another cost
    vocabulary, say) scores none of them again.
    """
    module, dm = load_supernet(settings.run_dir, settings.device)
    key = ("val", id(module))
    if key not in _BATCHES:                                 # on the module's device, so a trial copies none
        _BATCHES[key] = [move_data_to_device(b, module.device) for b in dm.stream("val")]
    steps, lr = settings.finetune_steps, settings.finetune_lr or float(module.hparams.lr)
    refit = (settings.refit_sweeps, settings.refit_prior, settings.refit_rows)
    rows = settings.refit_rows if settings.refit_sweeps else 0
    train_key = ("train", id(module), steps, rows)
    if train_key not in _BATCHES:
        _BATCHES[train_key] = [move_data_to_device(b, module.device)
                               for b in first_batches(dm.stream("train"), steps, rows)]
    space = SearchSpace.from_module(module, dm, dim_choices=_dim_choices(settings.run_dir, module),
                                    mode=settings.mode)
    if settings.cost_vocab is not None:
        space = space.at_vocabulary(settings.cost_vocab, settings.cost_zipf)
    return PIMObjective(module, space, _BATCHES[key], settings.max_auc_drop,
                        memo=_AUCS.setdefault((*key, steps, lr, *refit), {}), finetune_batches=_BATCHES[train_key],
                        finetune_lr=lr, finetune_steps=steps, refit_sweeps=refit[0], refit_prior=refit[1],
                        refit_rows=refit[2])


_BATCHES: dict[tuple, list] = {}
_AUCS: dict[tuple, dict] = {}


def _dim_choices(run_dir: str, module: Any) -> tuple[int, ...]:
    meta = Path(run_dir) / "supernet" / "supernet.json"
    dims = json.loads(meta.read_text())["sampler"]["dim_choices"] if meta.exists() else (module.supernet_masks.dim,)
    return tuple(sorted({int(d) for d in dims} | {module.supernet_masks.dim}))


def _optimize(settings: StudySettings, n_trials: int, worker: int, objective: PIMObjective | None = None) -> None:
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objective = objective or build_objective(settings)
    probe = _study(settings, settings.seed)
    # A fresh seed per worker and per continuation, so a resumed study does not replay its random start-up.
    seed = settings.seed + 1000 * worker + len(probe.get_trials(deepcopy=False))
    study = _study(settings, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(METRIC_NAMES))
    check_continuation(study, objective)
    study.set_user_attr("baseline_auc", objective.baseline_auc)
    study.optimize(objective, n_trials=n_trials, catch=(Exception,), gc_after_trial=False,
                   show_progress_bar=settings.progress and worker == 0)


def _worker(settings: StudySettings, n_trials: int, worker: int, objective: PIMObjective | None) -> None:
    _optimize(settings, n_trials, worker, objective)


def run_study(settings: StudySettings, objective: PIMObjective | None = None) -> optuna.Study:
    """Add ``settings.trials`` trials to the study (in ``settings.workers`` processes) and return it."""
    if settings.workers == 1 or settings.trials <= 1:
        _optimize(settings, settings.trials, 0, objective)
    else:
        method = _start_method()
        inherited = (objective or build_objective(settings)) if method == "fork" else None
        study = _study(settings, settings.seed)  # create it once, before the workers race to
        if inherited is not None:                 # refuse other settings once, before the workers start
            check_continuation(study, inherited)
        _close(study)
        shares = [settings.trials // settings.workers + (i < settings.trials % settings.workers)
                  for i in range(settings.workers)]
        context = multiprocessing.get_context(method)
        processes = [context.Process(target=_worker, args=(settings, n, i, inherited), name=f"ihas-pim-worker-{i}")
                     for i, n in enumerate(shares) if n]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        failed = [p.name for p in processes if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"PIM study workers {failed} exited with an error (see their output above)")
    return _study(settings, settings.seed)


def _start_method() -> str:
    """``fork`` (Linux) where it is safe: the workers inherit the loaded supernet and the cached validation batches
    instead of re-importing torch and reloading both (the parent holds no open storage connection at the fork).
    Not once this process has used CUDA: a forked child can use neither CUDA nor autograd after the parent's
    autograd engine started its device threads (seen on a GPU machine: every trial failed); then ``spawn``."""
    if "fork" in multiprocessing.get_all_start_methods() and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _close(study: optuna.Study) -> None:
    storage = getattr(study._storage, "_backend", study._storage)  # RDB storages come wrapped in a cache
    engine = getattr(storage, "engine", None)
    if engine is not None:
        engine.dispose()


def finite(value: float) -> float | None:
    return value if value is not None and math.isfinite(value) else None

"""Parts of ``supernet_rank.py``: the data sets, candidates drawn per parameter-share band, the stand-alone
training (cached on disk so that trying a supernet variant never retrains a stand-alone model), rank statistics.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from scipy.stats import kendalltau
from typing_extensions import override

from _common import provenance
from ihas_lightning import CTRDataModule, SubArchitecture, SupernetConfig, SupernetModule
from ihas_lightning.data import SyntheticConfig
from ihas_lightning.paths import shared_data_dir

__all__ = ["DATASETS", "DIM_CHOICES", "WIDTH_CHOICES", "Band", "BestEpochWeights", "EarlyStopOnAUC", "EpochScores",
           "StandaloneCache", "band_taus", "datamodule", "draw_candidates", "parse_bands", "tau", "train_standalone",
           "trainer"]

DIM_CHOICES = (0, 1, 2, 4, 8, 16)  # 0 drops a field's embedding (its first-order term stays)
WIDTH_CHOICES = (0.25, 0.5, 0.75, 1.0)

DATASETS: dict[str, dict] = {
    "movielens-100k": {"path": "movielens/ml-100k", "format": "movielens-100k", "epochs": 4},
    "ml-1m-first3k": {"path": "movielens/ml-1m-first3k", "format": "movielens-1m", "epochs": 2},
    "synthetic": {"path": None, "format": None, "epochs": 4},
    # A development set with large id tables trained on hundreds of thousands of rows (docs/supernet_ranking.md,
    # "Why the development sets can no longer choose"): 9 fields, 9,075 embedding rows, 392,000 training rows.
    "synthetic-large": {"path": None, "format": None, "epochs": 4, "rows": 490_000,
                        "synthetic": {"num_sparse": 9, "vocab_sizes": (4000, 3000, 2000, 30, 20, 10, 7, 5, 3),
                                      "zipf_exponent": 0.8}},
}
"""Name -> data under ``IHAS_DATA_DIR`` (``None``: the built-in synthetic generator, with ``rows`` and
``SyntheticConfig`` fields ``synthetic`` where given) and stand-alone epochs."""


def datamodule(name: str, rows: int, batch_size: int) -> CTRDataModule:
    """The named data set, set up for fitting (default 80/10/10 split)."""
    spec = DATASETS[name]
    if spec["path"] is None:
        config = SyntheticConfig(**spec["synthetic"]) if "synthetic" in spec else None
        dm = CTRDataModule("synthetic", rows=spec.get("rows", rows), batch_size=batch_size, synthetic_config=config)
    else:
        path = shared_data_dir() / spec["path"]
        if not path.is_dir():
            raise FileNotFoundError(f"{name}: {path} not found (set IHAS_DATA_DIR)")
        dm = CTRDataModule(str(path), format=spec["format"], batch_size=batch_size)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                      limit_val_batches=0, num_sanity_val_steps=0)


@dataclass(frozen=True)
class Band:
    """A range of embedding-parameter share (of the full supernet's), both ends included."""

    low: float
    high: float

    def __contains__(self, share: float) -> bool:
        return self.low <= share <= self.high

    def __str__(self) -> str:
        return f"{self.low:g}-{self.high:g}"


def parse_bands(text: str) -> list[Band]:
    """``"0.03-0.06,0.15-0.3"`` -> bands; they must be increasing ranges in (0, 1]."""
    bands = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        low, _, high = part.partition("-")
        band = Band(float(low), float(high))
        if not 0.0 < band.low < band.high <= 1.0:
            raise ValueError(f"band '{part}' must be LOW-HIGH with 0 < LOW < HIGH <= 1")
        bands.append(band)
    if len(bands) < 1:
        raise ValueError(f"no bands in '{text}'")
    return bands


def draw_candidates(module: SupernetModule, bands: Sequence[Band], per_band: int, seed: int,
                    pool_size: int = 4000) -> tuple[list[tuple[int, SubArchitecture]], list[SubArchitecture]]:
    """``per_band`` sub-architectures drawn at random (seeded) among the sampler's candidates in each band.

    The pool is ``pool_size`` draws of the search space's uniform sampler (dims per field, width shares per
    layer), deduplicated. Returns ``[(band index, subarch)]`` and the whole pool (what a search would score).
    """
    masks = module.supernet_masks
    space = SupernetConfig(dim_choices=DIM_CHOICES, width_choices=WIDTH_CHOICES)
    generator = torch.Generator().manual_seed(seed)
    vocab = {f: module.backbone.model.embedding_dict[f].num_embeddings for f in masks.fields}
    full = masks.full.embedding_params(vocab)
    pool = sorted({masks.sample(generator, config=space) for _ in range(pool_size)},
                  key=lambda s: (s.embedding_params(vocab), s.dims, s.widths))
    rng = np.random.default_rng(seed)
    chosen: list[tuple[int, SubArchitecture]] = []
    for index, band in enumerate(bands):
        inside = [s for s in pool if s.embedding_params(vocab) / full in band]
        if len(inside) < per_band:
            raise ValueError(f"band {band} holds {len(inside)} of {len(pool)} candidates, fewer than {per_band}")
        picks = sorted(rng.choice(len(inside), size=per_band, replace=False))
        chosen += [(index, inside[i]) for i in picks]
    return chosen, pool


def tau(x: Sequence[float], y: Sequence[float]) -> float:
    """Kendall's tau-b (NaN when one side is constant)."""
    return float(kendalltau(x, y).statistic)


def band_taus(rows: list[dict], bands: list, key: str, ref: str = "standalone_auc") -> dict:
    """Tau of ``key`` against ``ref`` over the rows of each band (``row["band"]``, an index into ``bands``) and
    over all rows."""
    out = {str(b): tau([r[key] for r in rows if r["band"] == i], [r[ref] for r in rows if r["band"] == i])
           for i, b in enumerate(bands)}
    return {"bands": out, "overall": tau([r[key] for r in rows], [r[ref] for r in rows])}


OLD_SHUFFLE_CHUNK_BATCHES = 64
"""Until ``19831c6`` rows in memory were shuffled in chunks of this many batches (docs/design.md, section 9): the
cache's entries for data of more batches were trained so, those of fewer are what the loader does now."""


class StandaloneCache:
    """Stand-alone validation AUCs on disk, keyed by data set, training settings, sub-architecture and seed.

    The entries are trained at many commits, so each records its own (``provenance``; entries trained before it did
    lack it). Every entry is written as soon as it is trained (re-reading the file first, so two processes filling it
    lose nothing but a race on the very same key).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _read(self) -> dict:
        return json.loads(self.path.read_text())["entries"] if self.path.exists() else {}

    @staticmethod
    def key(dataset: str, settings: dict, sub: SubArchitecture, seed: int) -> str:
        options = ",".join(f"{k}={settings[k]}" for k in sorted(settings))
        return f"{dataset}|{options}|dims={','.join(map(str, sub.dims))}|widths={','.join(map(str, sub.widths))}" \
               f"|seed={seed}"

    @staticmethod
    def settings(dm: CTRDataModule, epochs: int, model: dict, patience: int | None = None) -> dict:
        """What a stand-alone result depends on besides the data set, sub-architecture and seed."""
        settings = {**model, "epochs": epochs, "batch_size": dm.batch_size, "rows_train": len(dm.split("train"))}
        if patience is not None:
            settings["patience"] = patience
        if settings["rows_train"] > OLD_SHUFFLE_CHUNK_BATCHES * dm.batch_size:
            settings["shuffle"] = "whole"   # trained in 64-batch chunks before 19831c6: those entries do not apply
        return settings

    def get(self, key: str) -> dict | None:
        return self._read().get(key)

    def put(self, key: str, value: dict) -> None:
        entries = self._read()
        entries[key] = value
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"benchmark": "supernet_rank stand-alone cache", "entries": entries}, indent=1,
                                  sort_keys=True) + "\n")
        tmp.replace(self.path)

    def standalone(self, dataset: str, dm: CTRDataModule, sub: SubArchitecture, seed: int, epochs: int,
                   model: dict, patience: int | None = None) -> dict:
        """Validation AUC of ``sub`` trained alone (its masks fixed throughout), from the cache or trained now.

        ``model``: SupernetModule keyword arguments (backbone, dim, dnn_hidden_units, lr); ``epochs`` and
        ``patience``: as in :func:`train_standalone`."""
        key = self.key(dataset, self.settings(dm, epochs, model, patience), sub, seed)
        hit = self.get(key)
        if hit is not None:
            return hit
        value = {**train_standalone(dm, sub, seed, epochs, model, patience), "provenance": provenance()}
        self.put(key, value)
        return value


class EarlyStopOnAUC(pl.Callback):
    """Scores the sub-architecture on the validation split after every epoch; stops after ``patience`` epochs
    without a better AUC and restores nothing (the best epoch's score is what is reported)."""

    def __init__(self, dm: CTRDataModule, sub: SubArchitecture, patience: int) -> None:
        self.dm, self.sub, self.patience = dm, sub, patience
        self.aucs: list[float] = []
        self.best_score = None          # the best epoch's SubnetScore

    @property
    def best(self) -> tuple[float, float] | None:
        """``(auc, logloss)`` at the best epoch."""
        return None if self.best_score is None else (self.best_score.auc, self.best_score.logloss)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, module: SupernetModule) -> None:
        score = module.evaluate_subnet(self.sub, self.dm)
        self.aucs.append(score.auc)
        if self.best_score is None or score.auc > self.best_score.auc:
            self.best_score = score
        if len(self.aucs) - 1 - int(np.argmax(self.aucs)) >= self.patience:
            trainer.should_stop = True


class BestEpochWeights(EarlyStopOnAUC):
    """:class:`EarlyStopOnAUC` that also keeps the weights of the best epoch and puts them back when training ends:
    a supernet early-stopped on one sub-architecture's validation AUC (its full network's, say)."""

    def __init__(self, dm: CTRDataModule, sub: SubArchitecture, patience: int) -> None:
        super().__init__(dm, sub, patience)
        self.best_state: dict[str, torch.Tensor] | None = None

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, module: SupernetModule) -> None:
        best = self.best_score
        super().on_train_epoch_end(trainer, module)
        if self.best_score is not best:
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @override
    def on_train_end(self, trainer: pl.Trainer, module: SupernetModule) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


class EpochScores(pl.Callback):
    """Scores every candidate with the supernet's weights after every epoch: ``aucs[epoch][candidate]``, and
    the wall and CPU seconds the scoring took (so that a score that needs every epoch is charged for them).

    A candidate's best epoch is what the stand-alone reference reports (early stopping), so its inherited
    score at its own best epoch of the supernet is the like-for-like proxy."""

    def __init__(self, dm: CTRDataModule, subs: Sequence[SubArchitecture]) -> None:
        self.dm, self.subs = dm, list(subs)
        self.aucs: list[list[float]] = []
        self.seconds = self.cpu_seconds = 0.0

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, module: SupernetModule) -> None:
        start, cpu = time.perf_counter(), time.process_time()
        self.aucs.append([module.evaluate_subnet(sub, self.dm).auc for sub in self.subs])
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu

    @property
    def best(self) -> list[float]:
        """Each candidate's highest AUC over the epochs."""
        return np.max(np.asarray(self.aucs), axis=0).tolist()


def train_standalone(dm: CTRDataModule, sub: SubArchitecture, seed: int, epochs: int, model: dict,
                     patience: int | None = None) -> dict:
    """Train ``sub`` alone (a fresh backbone, its masks fixed throughout); validation AUC, logloss, seconds.

    ``patience=None``: ``epochs`` full epochs, scored after the last. Otherwise early stopping, as a user would
    train a candidate: scored on the validation split after every epoch, stopped after ``patience`` epochs
    without a better AUC (at most ``epochs``), and the best epoch's AUC reported; the per-epoch scoring is in
    the timed cost. ``epoch_aucs``: the AUC after every epoch trained (early stopping) or after the last.
    """
    start, cpu = time.perf_counter(), time.process_time()   # data reading included: fit streams the splits
    pl.seed_everything(seed, workers=True)
    alone = SupernetModule(dm.schema, dm.vocab_sizes, seed=seed, **model)
    alone.supernet_masks.apply(sub)
    stopper = [EarlyStopOnAUC(dm, sub, patience)] if patience is not None else []
    trainer(epochs, stopper).fit(alone, dm)
    if stopper:
        score, aucs = stopper[0].best_score, stopper[0].aucs
        trained, best = len(aucs), int(np.argmax(aucs)) + 1
    else:
        score = alone.evaluate_subnet(sub, dm)
        aucs, trained, best = [score.auc], epochs, epochs
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
    return {"auc": score.auc, "logloss": score.logloss, "seconds": seconds, "cpu_seconds": cpu_seconds,
            "embedding_share": score.embedding_share, "epochs_trained": trained, "best_epoch": best,
            "epoch_aucs": aucs}

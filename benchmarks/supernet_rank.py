"""Supernet rank correlation within bands of similar parameter share: does the supernet order the candidates a
search actually compares the way stand-alone training does?

Per data set (MovieLens-100K, MovieLens-1M-first3k, synthetic; ``synthetic-large``, a development set with large id
tables and 392,000 training rows, by name):

* candidates: a pool of 4000 draws of the search space's uniform sampler (dims {0,1,2,4,8,16} per field, DNN
  width shares {0.25,0.5,0.75,1} per layer), deduplicated; ``--per-band`` of them picked at random (seeded) in
  each band of embedding-parameter share (``--bands``, each spanning a factor of about 2);
* stand-alone: each candidate trained alone (a fresh DeepFM with its masks fixed) the way a user trains a
  model: Adam at ``--lr`` (1e-2) with early stopping, scored on the validation split after every epoch and
  stopped after ``--patience`` (2) epochs without a better AUC, at most ``--epochs`` (10); its best epoch's
  validation AUC, mean over ``--seeds`` (2) seeds. (``--patience 0`` restores the fixed schedule of earlier
  results: the AUC after ``--epochs`` epochs, default 4 on MovieLens-100K and the synthetic data and 2 on
  MovieLens-1M-first3k, which at ``--lr 2e-3`` left most candidates far from their best: docs/design.md 5.)
  Results are cached in ``results/supernet_rank_standalone.json`` (keyed by data, settings, candidate, seed);
* each supernet variant (``--variants``, see ``VARIANTS``): one supernet per ``--supernet-seeds`` seed, every
  candidate scored with inherited weights, and after its first-order weights are refit (``--refit-sweeps`` 5
  Newton sweeps, prior ``--refit-prior`` 1, on ``--refit-rows`` (40k) training rows, the rest frozen:
  ``FirstOrderRefit``) and a short fine-tune: ``--finetune-steps`` (10) Adam steps at ``--finetune-lr`` (1e-2, the
  training's) of every parameter the candidate uses (``--finetune-scope all``; ``last_layer`` with 50 steps at 1e-3
  is NASRec's post-training fine-tune, an earlier results' column; ``--refit-sweeps 0`` the fine-tune alone, the
  column before the refit).

Reported: Kendall tau (inherited / fine-tuned vs stand-alone) per band and over all candidates, the same tau
between the two stand-alone seeds (the ceiling of any proxy), and speed-ups: one inherited evaluation
(including reading the validation split) vs one stand-alone training (including its data reading); and
amortised, ``(N stand-alone trainings) / (supernet training + N evaluations)`` for N = the candidates ranked
here and N = 150 (the trials of one PIM study in results/pim_pareto.md), both from the measured medians. Times are
CPU seconds of the process (``time.process_time``, one torch thread): on the shared machine wall times of the
same work varied up to 10x within minutes. Three stand-alone trainings (one per band) are timed again in the run.

Usage:
    python benchmarks/supernet_rank.py                      # all three data sets, variants sandwich and baseline
    python benchmarks/supernet_rank.py --datasets movielens-100k,synthetic --variants baseline,sandwich
    python benchmarks/supernet_rank.py --standalone-only                 # fill the stand-alone cache only
    python benchmarks/supernet_rank.py --datasets synthetic-large --standalone-only --shard 0/2   # and 1/2 beside it
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso  # noqa: E402
from _rank_parts import (DATASETS, DIM_CHOICES, WIDTH_CHOICES, BestEpochWeights, EpochScores,  # noqa: E402
                         StandaloneCache, band_taus, datamodule, draw_candidates, parse_bands, train_standalone,
                         trainer)
from _rank_report import variant_key, write_report  # noqa: E402

from ihas_lightning import SupernetModule  # noqa: E402
from ihas_lightning.modules import FINETUNE_SCOPES, REFIT_FIELDS, REFIT_PRIOR, REFIT_ROWS, REFIT_SWEEPS  # noqa: E402
from ihas_lightning.callbacks import SupernetSampler  # noqa: E402

VARIANTS: dict[str, dict] = {
    # the supernet before issue 21: one uniformly sampled sub-architecture per step, 100 warm-up steps
    "baseline": {"epochs": 8, "warmup_steps": 100},
    # budget-covering sampling: a cap per step, then every field's dim up to it
    "capped": {"epochs": 8, "warmup_steps": 100, "sampling": "capped"},
    # NASRec's longer warm-up: the full network's probability decays over 4 of the 8 epochs
    "long_warmup": {"epochs": 8, "warmup_epochs": 4},
    # BigNAS's sandwich rule (largest + smallest + 2 sampled per step), half the epochs: 2x the passes
    "sandwich": {"epochs": 4, "sandwich": 2},
    # the sandwich rule for as many epochs as one stand-alone training of the data (epochs None: with early
    # stopping the mean epochs the candidates trained, rounded; with --patience 0 the fixed schedule, 4 on
    # MovieLens-100K and synthetic, 2 on MovieLens-1M-first3k), so the supernet's cost follows the data's
    # stand-alone training instead of a fixed epoch count
    "sandwich_standalone_epochs": {"epochs": None, "sandwich": 2},
    "sandwich_kd": {"epochs": 4, "sandwich": 2, "distill": 0.5},
    "sandwich_kd_capped": {"epochs": 4, "sandwich": 2, "distill": 0.5, "sampling": "capped"},
    # shorter training: the supernet overfits MovieLens-100K's id embeddings when trained 8 epochs
    "baseline_e4": {"epochs": 4, "warmup_steps": 100},
    "sandwich_e2": {"epochs": 2, "sandwich": 2},
    "sandwich_kd_e2": {"epochs": 2, "sandwich": 2, "distill": 0.5},
    "sandwich_kd_capped_e2": {"epochs": 2, "sandwich": 2, "distill": 0.5, "sampling": "capped"},
    # more sandwich: longer, or more sampled sub-architectures per step
    "sandwich_e8": {"epochs": 8, "sandwich": 2},
    "sandwich4": {"epochs": 4, "sandwich": 4},
    # one sub-architecture a step, the optimiser leaving what it masks where it is (SupernetModule.freeze_masked)
    "baseline_frozen": {"epochs": 8, "warmup_steps": 100, "freeze_masked": True},
    "uniform_frozen_e12": {"epochs": 12, "warmup_steps": 100, "freeze_masked": True},
    "uniform_e12": {"epochs": 12, "warmup_steps": 100},
    # each candidate scored at its own best epoch of the supernet, as the early-stopped reference is (every
    # candidate evaluated after every epoch, charged to the amortised cost); the last epoch's tau beside it
    "sandwich_best_epoch": {"epochs": 4, "sandwich": 2, "score": "best_epoch"},
    "sandwich_e8_best_epoch": {"epochs": 8, "sandwich": 2, "score": "best_epoch"},
    "baseline_best_epoch": {"epochs": 8, "warmup_steps": 100, "score": "best_epoch"},
    "frozen_best_epoch": {"epochs": 8, "warmup_steps": 100, "freeze_masked": True, "score": "best_epoch"},
    # the sandwich rule with an L2 on the tables' rows a step trains (the largest trains every row a batch looks
    # up, so nothing masked is decayed): against the shared rows of large tables overfitting in the supernet where
    # each early-stopped stand-alone candidate stops before they do. Tried on the development sets, not kept
    # (docs/supernet_ranking.md: 1e-3 and 1e-2 change nothing, 1 and 10 rank MovieLens-100K worse)
    "sandwich_l2_1e-3": {"epochs": 4, "sandwich": 2, "l2_reg_embedding": 1e-3},
    "sandwich_l2_1e-2": {"epochs": 4, "sandwich": 2, "l2_reg_embedding": 1e-2},
    "sandwich_l2_1": {"epochs": 4, "sandwich": 2, "l2_reg_embedding": 1.0},
    "sandwich_l2_10": {"epochs": 4, "sandwich": 2, "l2_reg_embedding": 10.0},
    # one sub-architecture per sample (nested-dropout-like, against the shared rows overfitting; 2026-11-27)
    "per_sample": {"epochs": 4, "warmup_steps": 100, "per_sample": True},
    "per_sample_e8": {"epochs": 8, "warmup_steps": 100, "per_sample": True},
    # Tried on 2026-11-27 with synthetic-large: the supernet early-stopped as each stand-alone candidate is (its full
    # network's validation AUC after every epoch, patience 2, at most 10 epochs; the best epoch's weights scored).
    "sandwich_early_stop": {"epochs": 10, "sandwich": 2, "early_stop": 2},
    # `ihas supernet`'s default (and so the PIM study's) adds NASRec's one-epoch warm-up to the sandwich rule
    "sandwich_warmup": {"epochs": 4, "sandwich": 2, "warmup_epochs": 1},
    # the supernet at `ihas supernet`'s default learning rate (1e-3) instead of the stand-alone trainings' (--lr)
    "sandwich_lr_1e-3": {"epochs": 4, "sandwich": 2, "lr": 1e-3},
}
"""Supernet variants: ``epochs``, SupernetModule's ``freeze_masked``, ``score`` (``"best_epoch"``: see
:class:`EpochScores`; otherwise the trained supernet's) and SupernetSampler options. The first listed
in ``--variants`` is the headline.

Chosen on the development data (MovieLens-100K and synthetic) against the fixed schedule
(results/supernet_rank_variants_*.md): ``sandwich`` had the highest overall tau averaged over both (0.72). Against
the early-stopped reference with 16 candidates per band (results/supernet_rank.md) ``sandwich`` and ``sandwich_kd``
still lead there (overall 0.59 and 0.60, within-band 0.43 and 0.42, against 0.56 and 0.37-0.39 for one
sub-architecture a step; after the whole-network fine-tune all four are within 0.02 overall, 0.65-0.67, and the
sandwich rule leads within bands, 0.52 against 0.48-0.51), so it stays the headline (and the PIM study's
supernet), although MovieLens-1M-first3k ranks better with one sub-architecture a step. With the first-order refit
before the fine-tune (at 865251d) ``sandwich_kd`` leads it there by 0.01 (within-band 0.68 against 0.67, overall 0.76
against 0.75; one sub-architecture a step 0.54-0.59 and 0.69-0.72), within what the supernet's seed moves: kept."""
DEFAULT_VARIANT = "sandwich,baseline"
MAX_EPOCHS = 10
"""The most epochs of an early-stopped stand-alone training (at lr 1e-2 the candidates' best epochs were 4 on the
synthetic data and 7-8 on the MovieLens sets, in the mean)."""
PER_BAND = 16
"""Candidates per band. Kendall's tau of n pairs has a standard deviation of sqrt(2(2n+5) / (9n(n-1))) under
independence: 0.29 for n = 8 (a band of 8 hardly tells a tau of 0.5 from one of 0) and 0.19 for n = 16."""
SEARCH_SIZE = 150
"""Candidates one PIM study scores with the supernet (``pim_pareto.py --trials 150``, results/pim_pareto.md)."""


def train_variant(name: str, dm, model: dict, spec: dict, epochs: int, seed: int = 0,
                  epoch_scores: EpochScores | None = None) -> tuple[SupernetModule, float, float, int]:
    """A supernet trained ``epochs`` epochs with variant ``spec``; it, its wall and CPU seconds (less what
    ``epoch_scores``, if given, spent scoring) and its steps."""
    pl.seed_everything(seed, workers=True)
    # freeze_masked off unless a variant asks: the variants measured before it existed stay reproducible
    supernet = SupernetModule(dm.schema, dm.vocab_sizes, seed=seed, freeze_masked=spec.get("freeze_masked", False),
                              **{**model, "l2_reg_embedding": spec.get("l2_reg_embedding", 0.0),
                                 "lr": spec.get("lr", model["lr"])})
    module_keys = ("epochs", "warmup_epochs", "freeze_masked", "score", "l2_reg_embedding", "early_stop", "lr")
    options = {k: v for k, v in spec.items() if k not in module_keys}
    if "warmup_epochs" in spec:
        options["warmup_steps"] = spec["warmup_epochs"] * -(-len(dm.split("train")) // dm.batch_size)
    sampler = SupernetSampler(dim_choices=DIM_CHOICES, width_choices=WIDTH_CHOICES, seed=seed, **options)
    start, cpu = time.perf_counter(), time.process_time()
    # early stopping's per-epoch scoring is training cost, as the stand-alone trainings' is
    stopper = [BestEpochWeights(dm, supernet.supernet_masks.full, spec["early_stop"])] if "early_stop" in spec else []
    trainer(epochs, [sampler, *stopper, *([epoch_scores] if epoch_scores else [])]).fit(supernet, dm)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    if epoch_scores:
        wall, cpu = wall - epoch_scores.seconds, cpu - epoch_scores.cpu_seconds
    return supernet, wall, cpu, sampler.step


def run_dataset(name: str, args: argparse.Namespace, cache: StandaloneCache) -> dict:
    dm = datamodule(name, args.rows, args.batch_size)
    hidden = tuple(int(h) for h in args.dnn.split(","))
    model = {"backbone": args.backbone, "dim": 16, "dnn_hidden_units": hidden, "lr": args.lr}
    bands = parse_bands(args.bands)
    probe = SupernetModule(dm.schema, dm.vocab_sizes, seed=0, **model)
    candidates, _ = draw_candidates(probe, bands, args.per_band, seed=args.draw_seed)
    epochs = args.epochs or DATASETS[name]["epochs"]

    rows = []
    if args.shard is not None:   # one of several processes filling the cache: every n-th candidate
        shard, shards = args.shard
        candidates = [c for i, c in enumerate(candidates) if i % shards == shard]
    for index, (band, sub) in enumerate(candidates):
        runs = [cache.standalone(name, dm, sub, 100 + s, epochs, model, args.patience) for s in range(args.seeds)]
        rows.append({"candidate": index, "band": band, "dims": dict(zip(sub.fields, sub.dims)),
                     "widths": list(sub.widths), "embedding_share": runs[0]["embedding_share"],
                     "standalone_auc": float(np.mean([r["auc"] for r in runs])),
                     "standalone_auc_seeds": [r["auc"] for r in runs],
                     "standalone_seconds": float(np.mean([r["seconds"] for r in runs])),
                     "standalone_epochs_trained": [r.get("epochs_trained", epochs) for r in runs]})
        print(f"[{name}] candidate {index:2d} band {bands[band]} share {rows[-1]['embedding_share']:.3f} "
              f"stand-alone {rows[-1]['standalone_auc']:.4f} ({rows[-1]['standalone_seconds']:.1f}s)", flush=True)
    seeds = {}
    if args.seeds >= 2:
        for r in rows:
            r["seed0"], r["seed1"] = r["standalone_auc_seeds"][:2]
        seeds = band_taus(rows, bands, "seed0", "seed1")
    result = {"dataset": name, "data": dm.data, "format": dm.format, "rows_train": len(dm.split("train")),
              "rows_val": len(dm.split("val")), "backbone": args.backbone, "dnn": list(hidden),
              "bands": [str(b) for b in bands], "per_band": args.per_band, "standalone_epochs": epochs,
              "standalone_patience": args.patience, "lr": args.lr,
              "standalone_seeds": args.seeds, "kendall_tau_between_standalone_seeds": seeds,
              "standalone_train_seconds_cached": float(np.median([r["standalone_seconds"] for r in rows])),
              "finetune_steps": args.finetune_steps, "finetune_scope": args.finetune_scope,
              "finetune_lr": args.finetune_lr, "refit_sweeps": args.refit_sweeps, "refit_prior": args.refit_prior,
              "refit_rows": args.refit_rows, "refit_fields": args.refit_fields,
              "variants": {}, "candidates": rows}
    if args.standalone_only:
        return result
    # The cached trainings ran under other loads of a shared machine: time a few again, next to the supernets.
    timed = [sub for i, (_, sub) in enumerate(candidates) if i % args.per_band == 0][:args.time_standalone]
    fresh = [train_standalone(dm, sub, 100, epochs, model, args.patience) for sub in timed]
    result["standalone_train_seconds_fresh"] = [f["seconds"] for f in fresh]
    result["standalone_train_cpu_seconds"] = [f["cpu_seconds"] for f in fresh]
    # early stopping trains each candidate for its own number of epochs: the fresh runs' CPU seconds per epoch
    # times the mean epochs of all the candidates' runs
    per_epoch = float(np.median([f["cpu_seconds"] / f["epochs_trained"] for f in fresh]))
    mean_epochs = float(np.mean([e for r in rows for e in r["standalone_epochs_trained"]]))
    result["standalone_mean_epochs"] = mean_epochs
    result["standalone_train_seconds"] = per_epoch * mean_epochs

    for variant, seed in ((v, s) for v in args.variants for s in args.supernet_seeds):
        spec = VARIANTS[variant]
        # None: as many epochs as one stand-alone training (early stopping: the mean it trained, rounded)
        supernet_epochs = spec["epochs"] or (round(result["standalone_mean_epochs"]) if args.patience else epochs)
        epoch_scores = EpochScores(dm, [sub for _, sub in candidates]) if spec.get("score") == "best_epoch" else None
        supernet, wall, seconds, steps = train_variant(variant, dm, model, spec, supernet_epochs, seed, epoch_scores)
        variant = variant_key(variant, seed, args.supernet_seeds)
        print(f"[{name}] {variant}: supernet {supernet_epochs} epochs, {steps} steps, {wall:.1f}s ({seconds:.1f} "
              f"CPU s)", flush=True)
        scored = []
        for (band, sub), row in zip(candidates, rows):
            cpu = time.process_time()
            inherited = supernet.evaluate_subnet(sub, dm)          # reads the validation split each time
            cpu_inherited, cpu = time.process_time() - cpu, time.process_time()
            tuned = supernet.evaluate_subnet(sub, dm, finetune_steps=args.finetune_steps,
                                             finetune_scope=args.finetune_scope, finetune_lr=args.finetune_lr,
                                             refit_sweeps=args.refit_sweeps, refit_prior=args.refit_prior,
                                             refit_rows=args.refit_rows, refit_fields=args.refit_fields)
            scored.append({**row, "inherited_auc": inherited.auc, "finetuned_auc": tuned.auc,
                           "inherited_logloss": inherited.logloss, "inherited_seconds": cpu_inherited,
                           "finetuned_seconds": time.process_time() - cpu})
        extra = {}
        eval_s = float(np.median([r["inherited_seconds"] for r in scored]))
        if epoch_scores is not None:   # each candidate at its best epoch; every epoch's evaluations charged
            for r, best in zip(scored, epoch_scores.best):
                r["last_epoch_auc"], r["inherited_auc"] = r["inherited_auc"], best
            evaluations = len(epoch_scores.aucs) * len(scored)
            eval_s = epoch_scores.cpu_seconds / evaluations * len(epoch_scores.aucs)   # per candidate, all epochs
            extra = {"kendall_tau_last_epoch": band_taus(scored, bands, "last_epoch_auc"),
                     "epoch_aucs": epoch_scores.aucs,
                     "best_epochs": (np.argmax(np.asarray(epoch_scores.aucs), axis=0) + 1).tolist()}
        taus = band_taus(scored, bands, "inherited_auc")
        taus_ft = band_taus(scored, bands, "finetuned_auc")
        ft_s = float(np.median([r["finetuned_seconds"] for r in scored]))
        alone_s = result["standalone_train_seconds"]
        amortised = {str(n): (n * alone_s) / (seconds + n * eval_s) for n in (len(scored), SEARCH_SIZE)}
        amortised_ft = {str(n): (n * alone_s) / (seconds + n * ft_s) for n in (len(scored), SEARCH_SIZE)}
        result["variants"][variant] = {
            "spec": spec, "supernet_epochs": supernet_epochs, "supernet_seed": seed, "supernet_seconds": seconds,
            "supernet_wall_seconds": wall,
            "supernet_steps": steps,
            "kendall_tau": taus,
            "kendall_tau_finetuned": taus_ft, "inherited_eval_seconds": eval_s, "finetuned_eval_seconds": ft_s,
            "speedup": alone_s / eval_s, "speedup_finetuned": alone_s / ft_s, "speedup_amortised": amortised,
            "speedup_amortised_finetuned": amortised_ft, **extra,
            "scores": [{k: r[k] for k in ("candidate", "inherited_auc", "finetuned_auc", "inherited_logloss")}
                       for r in scored]}
        print(f"[{name}] {variant}: tau per band {_fmt(taus['bands'])} overall {taus['overall']:.2f}; fine-tuned "
              f"{_fmt(taus_ft['bands'])} overall {taus_ft['overall']:.2f}; seeds {_fmt(seeds.get('bands', {}))}; "
              f"amortised speed-up {_fmt(amortised)}", flush=True)
        if extra:
            last = extra["kendall_tau_last_epoch"]
            print(f"[{name}] {variant}: last epoch's tau per band {_fmt(last['bands'])} overall "
                  f"{last['overall']:.2f}; best epochs {extra['best_epochs']}", flush=True)
    return result


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"--shard must look like I/N with 0 <= I < N, got {text!r}")
    return int(index), int(count)


def _fmt(values: dict) -> str:
    return "{" + ", ".join(f"{k}: {v:.2f}" for k, v in values.items()) + "}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="movielens-100k,ml-1m-first3k,synthetic",
                        help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--variants", default=DEFAULT_VARIANT, help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of synthetic data")
    parser.add_argument("--bands", default="0.03-0.06,0.15-0.3,0.5-1.0", help="embedding-parameter share bands")
    parser.add_argument("--per-band", type=int, default=PER_BAND)
    parser.add_argument("--seeds", type=int, default=2, help="stand-alone training seeds per candidate")
    parser.add_argument("--epochs", type=int, default=None,
                        help="stand-alone epochs: the most with --patience (default 10), else all of them (default: "
                             "per data set)")
    parser.add_argument("--patience", type=int, default=2,
                        help="stand-alone early stopping: epochs without a better validation AUC (0: none, the AUC "
                             "after the last epoch)")
    parser.add_argument("--finetune-steps", type=int, default=10, help="fine-tune steps before the second score")
    parser.add_argument("--finetune-scope", choices=FINETUNE_SCOPES, default="all",
                        help="what the fine-tune trains: every parameter the candidate uses, or the last layer")
    parser.add_argument("--finetune-lr", type=float, default=1e-2, help="the fine-tune's Adam learning rate")
    parser.add_argument("--refit-sweeps", type=int, default=REFIT_SWEEPS,
                        help="first-order refit sweeps before the fine-tune (0: none; SupernetModule.evaluate_subnet)")
    parser.add_argument("--refit-prior", type=float, default=REFIT_PRIOR,
                        help="the first-order refit's prior precision around the inherited weights")
    parser.add_argument("--refit-rows", type=int, default=REFIT_ROWS,
                        help="training rows the first-order refit fits (the first batches that hold them)")
    parser.add_argument("--refit-fields", choices=REFIT_FIELDS, default="all",
                        help="the refit moves every first-order weight (all), only those of the fields a candidate "
                             "narrows (narrowed), or those with a firmer prior the less they narrow (scaled)")
    parser.add_argument("--backbone", default="DeepFM")
    parser.add_argument("--dnn", default="128,64")
    parser.add_argument("--lr", type=float, default=1e-2, help="Adam's learning rate, stand-alone and supernet")
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--draw-seed", type=int, default=0)
    parser.add_argument("--supernet-seeds", default="0,1",
                        help="each variant's supernet is trained once per seed (its tau varies with the seed)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--standalone-only", action="store_true", help="fill the stand-alone cache and stop")
    parser.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                        help="with --standalone-only: train candidates I, I+N, I+2N, ... only (N processes fill the "
                             "cache side by side)")
    parser.add_argument("--time-standalone", type=int, default=3,
                        help="stand-alone trainings timed again in the run (one per band) for the speed-ups")
    parser.add_argument("--cache", default=str(RESULTS_DIR / "supernet_rank_standalone.json"))
    parser.add_argument("--json", default=str(RESULTS_DIR / "supernet_rank.json"))
    args = parser.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    args.supernet_seeds = [int(x) for x in args.supernet_seeds.split(",") if x.strip()]
    unknown = [d for d in args.datasets if d not in DATASETS] + [v for v in args.variants if v not in VARIANTS]
    if unknown or not args.variants or not args.datasets:
        parser.error(f"unknown or missing data sets / variants: {unknown}")
    if args.per_band < 3 or args.seeds < 1 or args.patience < 0 or args.refit_sweeps < 0 or args.refit_rows < 1:
        parser.error("--per-band must be >= 3, --seeds >= 1, --patience >= 0, --refit-sweeps >= 0 and "
                     "--refit-rows >= 1")
    if args.shard is not None and not args.standalone_only:
        parser.error("--shard fills the stand-alone cache: give it with --standalone-only")
    args.patience = args.patience or None
    if args.epochs is None and args.patience:
        args.epochs = MAX_EPOCHS
    torch.set_num_threads(args.threads)
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    cache = StandaloneCache(args.cache)
    start = time.perf_counter()
    results = [run_dataset(name, args, cache) for name in args.datasets]
    if args.standalone_only:
        print(f"stand-alone cache: {cache.path}")
        return 0
    payload = {"benchmark": "supernet_rank", "date": now_iso(), "machine": machine_info(),
               "command": " ".join(["python", "benchmarks/supernet_rank.py", *(argv or sys.argv[1:])]),
               "total_seconds": time.perf_counter() - start, "headline_variant": args.variants[0],
               "kendall_tau_within_band": {r["dataset"]: r["variants"][args.variants[0]]["kendall_tau"]["bands"]
                                           for r in results},
               "kendall_tau": {r["dataset"]: r["variants"][args.variants[0]]["kendall_tau"]["overall"]
                               for r in results},
               "supernet_seeds": args.supernet_seeds,
               "datasets": results}
    path = write_report(results, args, payload, SEARCH_SIZE)
    print(f"results: {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Supernet rank correlation: inherited-weight scores vs stand-alone training of the same sub-architectures.

For each data set: train one DeepFM supernet with :class:`SupernetSampler` (dims and DNN widths sampled per
step), draw N sub-architectures spread over embedding-parameter budgets, and score each

* with inherited weights (``SupernetModule.evaluate_subnet``), without and with NASRec's last-layer
  post-training fine-tune;
* stand-alone: a fresh backbone with that sub-architecture's masks fixed, trained for the same epochs as
  the supernet, over ``--seeds`` initialization/shuffle seeds (mean validation AUC).

Reported: Kendall tau between the inherited and stand-alone AUCs (also after fine-tuning), the tau between
two stand-alone seeds (the noise ceiling of any proxy), and the time of one inherited evaluation vs one
stand-alone training.

How the N sub-architectures are drawn (seeded): 4000 candidates from the supernet's own sampler (uniform
dims per field, uniform width shares per layer); sorted by embedding-parameter share; the candidate nearest
to each of N log-spaced share targets between the smallest and the largest share is taken (so budgets from
"every field tiny" to "every field full" are all represented).

Usage:
    python benchmarks/supernet_rank.py                       # MovieLens-100K and synthetic, 12 subnets
    python benchmarks/supernet_rank.py --data PATH --format criteo --subnets 16 --json out.json
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
from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json, write_markdown_table  # noqa: E402

from ihas_lightning import CTRDataModule, SubArchitecture, SupernetConfig, SupernetModule  # noqa: E402
from ihas_lightning.callbacks import SupernetSampler  # noqa: E402
from ihas_lightning.paths import shared_data_dir  # noqa: E402

DIM_CHOICES = (0, 1, 2, 4, 8, 16)  # 0 drops a field: the biggest, most rankable effect
WIDTH_CHOICES = (0.25, 0.5, 0.75, 1.0)


def _trainer(epochs: int, callbacks: list) -> pl.Trainer:
    return pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
                      limit_val_batches=0, num_sanity_val_steps=0)


def draw_subnets(module: SupernetModule, config: SupernetConfig, n: int, seed: int) -> list[SubArchitecture]:
    """N sub-architectures spread evenly over embedding-parameter share (see the module docstring)."""
    masks = module.supernet_masks
    generator = torch.Generator().manual_seed(seed)
    vocab = {f: module.backbone.model.embedding_dict[f].num_embeddings for f in masks.fields}
    full = masks.full.embedding_params(vocab)
    candidates = list({masks.sample(generator, config=config) for _ in range(4000)})
    candidates.sort(key=lambda s: (s.embedding_params(vocab), s.dims, s.widths))
    shares = np.array([s.embedding_params(vocab) / full for s in candidates])
    chosen: list[SubArchitecture] = []
    # Log-spaced budgets: AUC changes most between tiny budgets, and barely among large ones, where ranks are
    # set by seed noise (see docs/design.md#5-supernet-sampling).
    for target in np.geomspace(max(shares.min(), 1e-4), shares.max(), n):
        order = np.argsort(np.abs(shares - target), kind="stable")
        chosen.append(next(candidates[i] for i in order if candidates[i] not in chosen))
    return chosen


def run_dataset(name: str, dm: CTRDataModule, args: argparse.Namespace) -> dict:
    dm.prepare_data()
    dm.setup("fit")
    hidden = tuple(int(h) for h in args.dnn.split(","))
    kwargs = dict(backbone=args.backbone, dim=16, dnn_hidden_units=hidden, lr=args.lr)
    config = SupernetConfig(dim_choices=DIM_CHOICES, width_choices=WIDTH_CHOICES, warmup_steps=args.warmup_steps)

    pl.seed_everything(0, workers=True)
    supernet = SupernetModule(dm.schema, dm.vocab_sizes, seed=0, **kwargs)
    sampler = SupernetSampler(dim_choices=DIM_CHOICES, width_choices=WIDTH_CHOICES, warmup_steps=args.warmup_steps,
                              seed=0)
    start = time.perf_counter()
    _trainer(args.supernet_epochs, [sampler]).fit(supernet, dm)
    supernet_seconds = time.perf_counter() - start
    print(f"[{name}] supernet: {args.supernet_epochs} epochs, {sampler.step} steps, {supernet_seconds:.1f}s",
          flush=True)

    space = SupernetConfig(dim_choices=DIM_CHOICES, width_choices=WIDTH_CHOICES)  # no warm-up: never "full" on purpose
    subnets = draw_subnets(supernet, space, args.subnets, seed=args.draw_seed)
    inherited = supernet.evaluate_many(subnets, dm)
    tuned = supernet.evaluate_many(subnets, dm, finetune_steps=args.finetune_steps)

    rows = []
    for index, (sub, inh, tun) in enumerate(zip(subnets, inherited, tuned)):
        aucs, seconds = [], []
        for seed in range(args.seeds):
            pl.seed_everything(100 + seed, workers=True)
            alone = SupernetModule(dm.schema, dm.vocab_sizes, seed=100 + seed, **kwargs)
            alone.supernet_masks.apply(sub)                     # the mask stays fixed for the whole training
            start = time.perf_counter()
            _trainer(args.epochs, []).fit(alone, dm)
            seconds.append(time.perf_counter() - start)
            aucs.append(alone.evaluate_subnet(sub, dm).auc)
        rows.append({"subnet": index, "dims": dict(zip(sub.fields, sub.dims)), "widths": list(sub.widths),
                     "embedding_params": inh.embedding_params, "embedding_share": inh.embedding_share,
                     "flops_per_sample": inh.flops_per_sample, "inherited_auc": inh.auc,
                     "inherited_logloss": inh.logloss, "finetuned_auc": tun.auc, "standalone_auc": float(np.mean(aucs)),
                     "standalone_auc_seeds": aucs, "inherited_seconds": inh.seconds,
                     "finetuned_seconds": tun.seconds, "standalone_seconds": float(np.mean(seconds))})
        print(f"[{name}] subnet {index:2d} share {inh.embedding_share:.3f} inherited {inh.auc:.4f} "
              f"fine-tuned {tun.auc:.4f} stand-alone {np.mean(aucs):.4f} ({np.mean(seconds):.1f}s)", flush=True)

    alone_auc = [r["standalone_auc"] for r in rows]
    tau = kendalltau([r["inherited_auc"] for r in rows], alone_auc)
    tau_ft = kendalltau([r["finetuned_auc"] for r in rows], alone_auc)
    seed_tau = kendalltau([r["standalone_auc_seeds"][0] for r in rows], [r["standalone_auc_seeds"][1] for r in rows]) \
        if args.seeds >= 2 else None
    # Medians: a shared machine stalls single runs now and then; a median is not thrown by one of them.
    eval_seconds = float(np.median([r["inherited_seconds"] for r in rows]))
    train_seconds = float(np.median([r["standalone_seconds"] for r in rows]))
    return {
        "dataset": name, "data": dm.data, "format": dm.format, "rows_train": len(dm.split("train")),
        "rows_val": len(dm.split("val")), "backbone": args.backbone, "dnn": list(hidden),
        "supernet": config.to_dict(), "supernet_epochs": args.supernet_epochs, "supernet_seconds": supernet_seconds,
        "standalone_epochs": args.epochs, "standalone_seeds": args.seeds, "finetune_steps": args.finetune_steps,
        "kendall_tau": float(tau.statistic), "kendall_tau_pvalue": float(tau.pvalue),
        "kendall_tau_finetuned": float(tau_ft.statistic), "kendall_tau_finetuned_pvalue": float(tau_ft.pvalue),
        "kendall_tau_between_standalone_seeds": None if seed_tau is None else float(seed_tau.statistic),
        "inherited_eval_seconds": eval_seconds,
        "finetuned_eval_seconds": float(np.median([r["finetuned_seconds"] for r in rows])),
        "standalone_train_seconds": train_seconds, "speedup": train_seconds / eval_seconds,
        "speedup_finetuned": train_seconds / float(np.median([r["finetuned_seconds"] for r in rows])),
        "subnets": rows,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="one data set (default: MovieLens-100K and synthetic)")
    parser.add_argument("--format", default=None)
    parser.add_argument("--rows", type=int, default=150_000, help="rows of synthetic data")
    parser.add_argument("--subnets", type=int, default=12)
    parser.add_argument("--seeds", type=int, default=2, help="stand-alone training seeds per sub-architecture")
    parser.add_argument("--epochs", type=int, default=4, help="stand-alone training epochs")
    parser.add_argument("--supernet-epochs", type=int, default=8,
                        help="supernet epochs (it trains many sub-architectures at once)")
    parser.add_argument("--warmup-steps", type=int, default=100)
    parser.add_argument("--finetune-steps", type=int, default=50)
    parser.add_argument("--backbone", default="DeepFM")
    parser.add_argument("--dnn", default="128,64")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--draw-seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(RESULTS_DIR / "supernet_rank.json"))
    args = parser.parse_args(argv)
    if args.subnets < 3:
        parser.error(f"--subnets must be >= 3, got {args.subnets}")
    args.supernet_epochs = args.supernet_epochs or args.epochs
    torch.set_num_threads(args.threads)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore")

    if args.data:
        sets = {Path(args.data).name: CTRDataModule(args.data, format=args.format, rows=args.rows,
                                                     batch_size=args.batch_size)}
    else:
        sets = {}
        movielens = shared_data_dir() / "movielens" / "ml-100k"
        if movielens.is_dir():
            sets["movielens-100k"] = CTRDataModule(str(movielens), format="movielens-100k",
                                                   batch_size=args.batch_size)
        else:
            print(f"skipping MovieLens-100K: {movielens} not found", file=sys.stderr)
        sets["synthetic"] = CTRDataModule("synthetic", rows=args.rows, batch_size=args.batch_size)
    start = time.perf_counter()
    results = [run_dataset(name, dm, args) for name, dm in sets.items()]
    payload = {"benchmark": "supernet_rank", "date": now_iso(), "machine": machine_info(),
               "command": " ".join(["python", "benchmarks/supernet_rank.py", *(argv or sys.argv[1:])]),
               "total_seconds": time.perf_counter() - start,
               "kendall_tau": {r["dataset"]: r["kendall_tau"] for r in results},
               "kendall_tau_finetuned": {r["dataset"]: r["kendall_tau_finetuned"] for r in results},
               "speedup": {r["dataset"]: r["speedup"] for r in results},
               "datasets": results}
    path = write_json(args.json, payload)
    table = [[r["dataset"], len(r["subnets"]), r["kendall_tau"], r["kendall_tau_finetuned"],
              r["kendall_tau_between_standalone_seeds"] if r["kendall_tau_between_standalone_seeds"] is not None
              else "n/a", r["inherited_eval_seconds"], r["standalone_train_seconds"], r["speedup"]] for r in results]
    notes = [f"{r['dataset']}: {r['backbone']} dim 16, DNN {r['dnn']}, supernet {r['supernet_epochs']} epochs "
             f"(dims {r['supernet']['dim_choices']}, widths {r['supernet']['width_choices']}, warm-up "
             f"{r['supernet']['warmup_steps']} steps); stand-alone {r['standalone_epochs']} epochs x "
             f"{r['standalone_seeds']} seeds; fine-tune {r['finetune_steps']} last-layer steps; "
             f"{r['rows_train']} train / {r['rows_val']} val rows" for r in results]
    notes.append("speedup = median stand-alone training seconds / median inherited evaluation seconds "
                 "(validation split)")
    notes.append(f"machine: {payload['machine']['cpu']}, {args.threads} torch threads; command: {payload['command']}")
    write_markdown_table(path.with_suffix(".md"), "Supernet rank correlation (Kendall tau)",
                         ["data", "subnets", "tau inherited", "tau fine-tuned", "tau seed vs seed",
                          "inherited eval s", "stand-alone train s", "speedup"], table, notes)
    per_subnet = [[r["dataset"], s["subnet"], s["embedding_share"], ",".join(map(str, s["dims"].values())),
                   ",".join(map(str, s["widths"])), s["inherited_auc"], s["finetuned_auc"], s["standalone_auc"]]
                  for r in results for s in r["subnets"]]
    md = path.with_suffix(".md")
    lines = ["", "## Per sub-architecture", "", "| data | # | emb. share | dims | widths | inherited AUC | "
             "fine-tuned AUC | stand-alone AUC |", "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row) + " |"
              for row in per_subnet]
    md.write_text(md.read_text() + "\n".join(lines) + "\n")
    for r in results:
        print(f"{r['dataset']}: kendall tau {r['kendall_tau']:.3f} (fine-tuned {r['kendall_tau_finetuned']:.3f}), "
              f"speedup {r['speedup']:.0f}x")
    print(f"results: {path} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

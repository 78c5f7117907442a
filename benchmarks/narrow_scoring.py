"""Scoring supernet candidates with the DNN cut to their own widths vs the masked full-width DNN, side by side.

Per data set and backbone: the ``sandwich`` supernet of ``supernet_rank.py`` (seed 0, 4 epochs, DNN [128, 64],
dim 16), the same candidates (16 per band of embedding-parameter share, three bands, ``draw_candidates`` with
seed 0) and the same scoring (``evaluate_subnet``: first-order refit, 5 sweeps on 40k training rows, then 10
Adam steps at lr 1e-2 of every parameter the candidate uses, then the validation AUC). Each candidate is scored
both ways, ``narrow=False`` (the masks multiply the full DNN's inputs and units by 0) and ``narrow=True``
(``SupernetMasks.narrowed``: a copy of the kept prefixes), in ``--repeats`` alternating passes over all
candidates; the fastest pass of each side counts. Reported: CPU seconds per candidate (``time.process_time``,
one torch thread), their ratio (narrow / masked), the largest AUC difference between the two and Kendall's tau
between their orders (1: the same ranking).

Usage:
    python benchmarks/narrow_scoring.py
    python benchmarks/narrow_scoring.py --datasets synthetic --backbones DeepFM --repeats 1 --json /tmp/n.json
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
from _common import RESULTS_DIR, machine_info, now_iso, write_json, write_markdown_table  # noqa: E402
from _rank_parts import (DATASETS, DIM_CHOICES, WIDTH_CHOICES, datamodule, draw_candidates,  # noqa: E402
                         parse_bands, tau, trainer)

from ihas_lightning import SupernetModule  # noqa: E402
from ihas_lightning.callbacks import SupernetSampler  # noqa: E402
from ihas_lightning.modules import REFIT_ROWS, REFIT_SWEEPS  # noqa: E402
from ihas_lightning.modules.supernet_module import first_batches  # noqa: E402

SCORING = {"finetune_steps": 10, "finetune_lr": 1e-2, "finetune_scope": "all", "refit_sweeps": REFIT_SWEEPS,
           "refit_rows": REFIT_ROWS}
"""``supernet_rank.py``'s fine-tuned scoring (its defaults)."""


def measure(name: str, backbone: str, args: argparse.Namespace) -> dict:
    dm = datamodule(name, args.rows, 2048)
    model = {"backbone": backbone, "dim": 16, "dnn_hidden_units": (128, 64), "lr": 1e-2}
    pl.seed_everything(0, workers=True)
    supernet = SupernetModule(dm.schema, dm.vocab_sizes, seed=0, freeze_masked=False, **model)
    candidates, _ = draw_candidates(supernet, parse_bands("0.03-0.06,0.15-0.3,0.5-1.0"), args.per_band, seed=0)
    sampler = SupernetSampler(dim_choices=DIM_CHOICES, width_choices=WIDTH_CHOICES, seed=0, sandwich=2)
    trainer(4, [sampler]).fit(supernet, dm)
    # read once, as a search does (ihas pim); both sides score the same batches
    val = list(dm.stream("val"))
    train = first_batches(dm.stream("train"), SCORING["finetune_steps"], SCORING["refit_rows"])
    subs = [sub for _, sub in candidates]
    seconds: dict[bool, list[float]] = {False: [], True: []}
    aucs: dict[bool, list[float]] = {}
    for _ in range(args.repeats):
        for narrow in (False, True):
            start = time.process_time()
            aucs[narrow] = [supernet.evaluate_subnet(s, val, finetune_data=train, narrow=narrow, **SCORING).auc
                            for s in subs]
            seconds[narrow].append((time.process_time() - start) / len(subs))
    masked, narrow = min(seconds[False]), min(seconds[True])
    row = {"dataset": name, "backbone": backbone, "candidates": len(subs), "masked_cpu_s": masked,
           "narrow_cpu_s": narrow, "ratio": narrow / masked, "passes_cpu_s": {"masked": seconds[False],
                                                                               "narrow": seconds[True]},
           "max_abs_auc_difference": float(np.max(np.abs(np.subtract(aucs[True], aucs[False])))),
           "kendall_tau_narrow_vs_masked": tau(aucs[True], aucs[False]),
           "rows_train": len(dm.split("train")), "rows_val": len(dm.split("val"))}
    print(f"[{name} / {backbone}] masked {masked:.3f} s, narrow {narrow:.3f} s per candidate (ratio "
          f"{row['ratio']:.2f}); max |dAUC| {row['max_abs_auc_difference']:.1e}, tau "
          f"{row['kendall_tau_narrow_vs_masked']:.3f}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="synthetic,movielens-100k,ml-1m-first3k",
                        help=f"comma-separated, of {', '.join(DATASETS)}")
    parser.add_argument("--backbones", default="DeepFM,DCN")
    parser.add_argument("--rows", type=int, default=100_000, help="rows of synthetic data")
    parser.add_argument("--per-band", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2, help="alternating passes per side; the fastest counts")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "narrow_scoring.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    rows = [measure(name, backbone, args) for name in args.datasets.split(",")
            for backbone in args.backbones.split(",")]
    payload = {"benchmark": "narrow_scoring", "date": now_iso(), "machine": machine_info(), "scoring": SCORING,
               "supernet": {"variant": "sandwich", "epochs": 4, "seed": 0}, "results": rows}
    path = write_json(args.json, payload)
    write_markdown_table(
        path.with_suffix(".md"), "Scoring a candidate with the DNN cut to it vs masked (CPU s per candidate)",
        ["data", "backbone", "candidates", "masked", "narrow", "narrow / masked", "max abs AUC diff", "tau"],
        [[r["dataset"], r["backbone"], r["candidates"], f"{r['masked_cpu_s']:.3f}", f"{r['narrow_cpu_s']:.3f}",
          f"{r['ratio']:.2f}", f"{r['max_abs_auc_difference']:.1e}", f"{r['kendall_tau_narrow_vs_masked']:.3f}"]
         for r in rows],
        [f"scoring: evaluate_subnet({', '.join(f'{k}={v!r}' for k, v in SCORING.items())}), the supernet_rank "
         f"benchmark's fine-tuned score; supernet 'sandwich', seed 0, 4 epochs, DNN [128, 64], dim 16",
         f"best of {args.repeats} alternating passes per side, CPU seconds of the process, 1 torch thread",
         f"machine: {payload['machine'].get('cpu', '?')}; {payload['date']}; command: python "
         f"benchmarks/narrow_scoring.py {' '.join(sys.argv[1:])}".rstrip()])
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The report of ``supernet_rank.py``: its result JSON and Markdown tables (what the benchmark measured lives there,
how it is laid out here)."""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import write_json, write_markdown_table

__all__ = ["variant_key", "write_report"]


def variant_key(variant: str, seed: int, seeds: list[int]) -> str:
    """A trained supernet's key in the results: the variant's name for the first seed, ``name@seedN`` after."""
    return variant if seed == seeds[0] else f"{variant}@seed{seed}"


def _schedule(result: dict) -> str:
    if not result.get("standalone_patience"):
        return f"{result['standalone_epochs']} epochs"
    return (f"early-stopped (patience {result['standalone_patience']}, at most {result['standalone_epochs']} epochs; "
            f"{result.get('standalone_mean_epochs', float('nan')):.1f} trained in the mean)")


def write_report(results: list[dict], args: argparse.Namespace, payload: dict, search_size: int) -> Path:
    """The result JSON and its Markdown: the headline variant's taus per band and speed-ups, every variant's
    taus, the best-epoch pairs where a variant has them, and each candidate's scores."""
    path = write_json(args.json, payload)
    head = args.variants[0]
    table, variants = [], []
    heads = [variant_key(head, seed, args.supernet_seeds) for seed in args.supernet_seeds]
    for r in results:
        seeds = r["kendall_tau_between_standalone_seeds"]
        scores = (("inherited", "kendall_tau"), ("fine-tuned", "kendall_tau_finetuned"))
        for v, (label, key) in ((r["variants"][h], score) for h in heads for score in scores):
            inherited = label == "inherited"
            table.append([r["dataset"], f"{label}, supernet seed {v['supernet_seed']}",
                          *[v[key]["bands"][b] for b in r["bands"]], v[key]["overall"],
                          " / ".join(f"{seeds['bands'][b]:.2f}" for b in r["bands"]) + f" ({seeds['overall']:.2f})",
                          v["speedup"] if inherited else v["speedup_finetuned"],
                          " / ".join(f"{x:.0f}" for x in (v["speedup_amortised"] if inherited
                                                         else v["speedup_amortised_finetuned"]).values())])
        for name, w in r["variants"].items():
            variants.append([r["dataset"], name, *[w["kendall_tau"]["bands"][b] for b in r["bands"]],
                             w["kendall_tau"]["overall"], *[w["kendall_tau_finetuned"]["bands"][b] for b in r["bands"]],
                             w["kendall_tau_finetuned"]["overall"], w["supernet_seconds"],
                             " / ".join(f"{x:.0f}" for x in w["speedup_amortised"].values())])
    bands = results[0]["bands"]
    n = len(results[0]["candidates"])
    notes = [f"{r['dataset']}: {r['backbone']} dim 16, DNN {r['dnn']}; {r['per_band']} candidates per band; "
             f"stand-alone {_schedule(r)} x {r['standalone_seeds']} seeds, Adam lr {r['lr']:g} "
             f"(timed again in the run: median {r['standalone_train_seconds']:.1f} CPU s); supernet '{head}' "
             f"{r['variants'][head]['spec']} ({r['variants'][head].get('supernet_epochs')} epochs) trained in "
             f"{r['variants'][head]['supernet_seconds']:.1f} CPU s; "
             f"{r['rows_train']} train / {r['rows_val']} val rows" for r in results]
    notes += ["seed vs seed: Kendall tau between the two stand-alone seeds per band (overall), the ceiling of a proxy",
              "times are CPU seconds of the process (time.process_time, 1 torch thread): the shared machine's wall "
              "times varied up to 10x between identical runs minutes apart; "
              f"speed-up: median stand-alone training / median evaluation (data reading included on both sides); "
              f"amortised: N stand-alone trainings / (supernet training + N evaluations) for N = {n} / {search_size}",
              (f"fine-tuned: the first-order weights refit ({args.refit_sweeps} Newton sweeps, prior "
               f"{args.refit_prior:g}, on the first {args.refit_rows:,} training rows"
               + (" (all of them where a split has fewer)" if any(r["rows_train"] < args.refit_rows for r in results)
                  else "") + ", the rest frozen), then "
               if args.refit_sweeps else "fine-tuned: ")
              + f"{args.finetune_steps} Adam steps (lr {args.finetune_lr:g}) of "
              f"{'every parameter the candidate uses' if args.finetune_scope == 'all' else 'the last layer'} before "
              "scoring, charged to the evaluation's time",
              f"machine: {payload['machine']['cpu']}, {args.threads} torch thread(s); command: {payload['command']}"]
    write_markdown_table(path.with_suffix(".md"), f"Supernet rank correlation within share bands (variant '{head}')",
                         ["data", "score", *[f"tau {b}" for b in bands], "tau overall", "seed vs seed",
                          "speed-up", "amortised"], table, notes)
    md = path.with_suffix(".md")
    lines = ["", "## Variants tried (Kendall tau inherited | fine-tuned)", "",
             "| data | variant | " + " | ".join(f"{b}" for b in bands) + " | overall | "
             + " | ".join(f"ft {b}" for b in bands) + " | ft overall | supernet CPU s | amortised |",
             "|" + "---|" * (2 * len(bands) + 6)]
    lines += ["| " + " | ".join(f"{x:.2f}" if isinstance(x, float) else str(x) for x in row) + " |"
              for row in variants]
    paired = [(r["dataset"], name, w) for r in results for name, w in r["variants"].items()
              if "kendall_tau_last_epoch" in w]
    if paired:
        lines += ["", "## Scored at each candidate's best epoch vs after the last epoch (the same supernet)", "",
                  "| data | variant | " + " | ".join(f"best epoch {b}" for b in bands) + " | best epoch overall | "
                  + " | ".join(f"last {b}" for b in bands) + " | last overall |", "|" + "---|" * (2 * len(bands) + 4)]
        lines += [f"| {d} | {name} | " + " | ".join(f"{w['kendall_tau']['bands'][b]:.2f}" for b in bands)
                  + f" | {w['kendall_tau']['overall']:.2f} | "
                  + " | ".join(f"{w['kendall_tau_last_epoch']['bands'][b]:.2f}" for b in bands)
                  + f" | {w['kendall_tau_last_epoch']['overall']:.2f} |" for d, name, w in paired]
    lines += ["", "## Per candidate", "", "| data | # | band | share | dims | widths | stand-alone AUC (seeds) | "
              "inherited | fine-tuned |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        scores = {s["candidate"]: s for s in r["variants"][head]["scores"]}
        lines += [f"| {r['dataset']} | {c['candidate']} | {bands[c['band']]} | {c['embedding_share']:.3f} | "
                  f"{','.join(map(str, c['dims'].values()))} | {','.join(map(str, c['widths']))} | "
                  f"{c['standalone_auc']:.4f} ({', '.join(f'{a:.4f}' for a in c['standalone_auc_seeds'])}) | "
                  f"{scores[c['candidate']]['inherited_auc']:.4f} | {scores[c['candidate']]['finetuned_auc']:.4f} |"
                  for c in r["candidates"]]
    md.write_text(md.read_text() + "\n".join(lines) + "\n")
    return path

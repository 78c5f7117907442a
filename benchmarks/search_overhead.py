"""Search-stage overhead: training throughput of ``SearchModule`` (gates on) vs the plain ``BackboneModule``.

Both sides train the same DeepCTR-Torch model (DeepFM, DCN) with the same feature columns, DNN widths,
initialization seed, Adam learning rate and batch size, in the same ``Trainer`` settings, on the same
synthetic Criteo-shaped rows (``benchmarks/throughput.py``'s ``make_data``: 26 sparse fields with
Criteo-like cardinalities capped at 200k rows, 13 dense fields). The search side has its gates on from the
first step (``warmup_epochs=0``) with the stage's callbacks (``TemperatureAnnealing``,
``RegularizerWarmup``): gate network, relaxed Bernoulli sampling, masking, sparsity/budget and
bi-polarization terms, the dual step, and the per-step gate logging. Only training is timed, from
``on_train_epoch_start`` to ``on_train_epoch_end`` (no validation: ``limit_val_batches=0``). Runs
alternate between the sides, ``--repeats`` times each; the best run of each side counts (the least
disturbed one on a shared machine). ``ratio = search / plain``; the target is >= 0.7.

Usage:
    python benchmarks/search_overhead.py                         # 200k rows, CPU, all usable cores
    python benchmarks/search_overhead.py --rows 50000 --threads 1 --json /tmp/s.json
    python benchmarks/search_overhead.py --device cuda
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_speed_arguments, best_of, machine_info, now_iso, setup_speed_run, speed_notes, time_one_epoch, write_json,
    write_markdown_table,
)
from throughput import BATCH_SIZE, MODELS, SEED, VOCAB_CAP, make_data  # noqa: E402

TARGET_RATIO = 0.7
DIM = 16


def run(side: str, name: str, splits, encoder, hidden: tuple[int, ...], device: str) -> dict:
    """One fit of one epoch; returns the timed training epoch's samples/s."""
    from ihas_lightning import BackboneModule, SearchModule
    from ihas_lightning.callbacks import RegularizerWarmup, TemperatureAnnealing

    common = {"backbone": name, "dim": DIM, "dnn_hidden_units": hidden, "lr": 1e-3, "seed": SEED}
    callbacks = []
    if side == "search":
        module = SearchModule(encoder.schema, encoder.vocab_sizes, warmup_epochs=0, gate_lr=3e-3,
                              gate={"budget": 0.5}, **common)
        steps = -(-len(splits["train"]) // BATCH_SIZE)
        callbacks = [TemperatureAnnealing(steps=max(1, int(0.8 * steps))), RegularizerWarmup(steps=max(1, steps // 5))]
    else:
        module = BackboneModule(encoder.schema, encoder.vocab_sizes, **common)
    if device.startswith("cuda"):
        module.backbone.model.device = device  # DeepCTR's regularizer allocates on model.device
    return time_one_epoch(module, splits, encoder, BATCH_SIZE, device, callbacks)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_speed_arguments(parser, rows=200_000, json_name="search_overhead.json", models=MODELS)
    args = parser.parse_args(argv)

    threads, device = setup_speed_run(args)
    hidden = tuple(args.hidden)

    t0 = time.perf_counter()
    splits, encoder = make_data(args.rows)
    print(f"data: {args.rows:,} rows, {len(encoder.schema.sparse)} sparse + {len(encoder.schema.dense)} dense "
          f"fields ({time.perf_counter() - t0:.1f}s)", flush=True)

    results: dict[str, dict] = {}
    for name in args.models:
        runs: dict[str, list[dict]] = {"search": [], "plain": []}
        for repeat in range(args.repeats):
            order = ("plain", "search") if repeat % 2 == 0 else ("search", "plain")
            for side in order:
                record = run(side, name, splits, encoder, hidden, device)
                runs[side].append(record)
                print(f"{name:7s} {side:7s} run {repeat + 1}: {record['samples_per_s']:10,.0f} samples/s "
                      f"({record['seconds']:.1f}s)", flush=True)
        search = best_of([r["samples_per_s"] for r in runs["search"]])
        plain = best_of([r["samples_per_s"] for r in runs["plain"]])
        results[name] = {"search": round(search, 1), "plain": round(plain, 1), "ratio": round(search / plain, 3),
                         "runs": runs}
        print(f"{name}: search {search:,.0f} vs plain {plain:,.0f} samples/s -> ratio {search / plain:.2f}",
              flush=True)

    payload = {
        "models": results,
        "target_ratio": TARGET_RATIO,
        "rows": args.rows,
        "batch_size": BATCH_SIZE,
        "threads": threads,
        "repeats": args.repeats,
        "device": "cuda" if device.startswith("cuda") else device,
        "dnn_hidden_units": list(hidden),
        "embedding_dim": DIM,
        "vocab_cap": VOCAB_CAP,
        "gates": {"relaxation": "hard_concrete", "hidden": 64, "budget": 0.5, "warmup_epochs": 0},
        "machine": machine_info(device),
        "date": now_iso(),
        "command": "python benchmarks/search_overhead.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    json_path = write_json(args.json, payload)
    md_path = write_markdown_table(
        json_path.with_suffix(".md"), "Search-stage overhead: SearchModule (gates on) vs plain BackboneModule",
        ["model", "search (samples/s)", "plain (samples/s)", "ratio", f">= {TARGET_RATIO}"],
        [[n, r["search"], r["plain"], f"{r['ratio']:.2f}", "yes" if r["ratio"] >= TARGET_RATIO else "NO"]
         for n, r in results.items()],
        notes=[f"{args.rows:,} synthetic Criteo-shaped rows (26 sparse fields, cardinalities capped at "
               f"{VOCAB_CAP:,}; 13 dense), embedding dim {DIM}, DNN {list(hidden)}, batch {BATCH_SIZE}, Adam 1e-3",
               "search: hard-concrete gates (gate MLP 416-64-416), budget 0.5, warmup_epochs=0, "
               "TemperatureAnnealing + RegularizerWarmup; plain: BackboneModule; same Trainer settings, "
               "no validation, no logger",
               *speed_notes(payload, args.repeats)])
    print(f"wrote {json_path} and {md_path}")
    return payload


if __name__ == "__main__":
    main()

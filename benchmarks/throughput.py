"""Training throughput: DeepCTR-Torch's own ``fit`` vs our ``BackboneModule`` in a Lightning ``Trainer``.

Both sides train the same model class (DeepFM, DCN) with identical feature columns, DNN widths,
initialization seed, L2 terms, Adam (lr 1e-3) and batch size on the same synthetic Criteo-shaped rows
(26 sparse fields with Criteo-like cardinalities capped at 200k rows, 13 dense fields). Only the training
epoch is timed: from the epoch-start to the epoch-end callback of each side (DeepCTR-Torch's
``on_epoch_begin``/``on_epoch_end``, Lightning's ``on_train_epoch_start``/``on_train_epoch_end``), so
data generation, model construction and DeepCTR-Torch's one-off input concatenation are excluded. The
wall time of the whole ``fit`` call is recorded too. Sides run alternately, ``--repeats`` times each,
and the best run counts (the least disturbed one on a shared machine).

Usage:
    python benchmarks/throughput.py                      # 1M rows, all cores, CPU
    python benchmarks/throughput.py --rows 200000 --threads 1 --json /tmp/t.json
    python benchmarks/throughput.py --device cuda        # ours with accelerator="gpu", DeepCTR on cuda:0
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    add_speed_arguments, best_of, machine_info, now_iso, setup_speed_run, silenced_stdout, speed_notes, sync,
    time_one_epoch, write_json, write_markdown_table,
)

# Kaggle Criteo (Display Advertising Challenge) cardinalities of C1..C26, capped so that the tables,
# their gradients and two Adam moments of two models stay well inside a laptop's memory.
CRITEO_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                        14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
VOCAB_CAP = 200_000
MODELS = ("DeepFM", "DCN")
BATCH_SIZE = 4096
SEED = 1024


def make_data(rows: int, seed: int = 0):
    """Encoded train rows (ids shifted by 2: 0 = missing, 1 = OOV), a tiny val/test split, the encoder."""
    from ihas_lightning.data.encoders import EncodedColumns, FeatureEncoder
    from ihas_lightning.data import SyntheticConfig, SyntheticCTR

    vocab = tuple(min(v, VOCAB_CAP) for v in CRITEO_CARDINALITIES)
    generator = SyntheticCTR(SyntheticConfig(num_sparse=26, num_dense=13, vocab_sizes=vocab), seed=seed)

    def encoded(n: int, data_seed: int) -> EncodedColumns:
        chunk = generator.generate(n, seed=data_seed)
        return EncodedColumns(chunk.labels.astype(np.float32), chunk.sparse + 2, chunk.dense.astype(np.float32),
                              np.zeros((n, 0), dtype=np.int64))

    splits = {"train": encoded(rows, 1), "val": encoded(BATCH_SIZE, 2), "test": encoded(BATCH_SIZE, 3)}
    encoder = FeatureEncoder.for_integer_ids(generator.schema, generator.vocab_sizes)
    return splits, encoder


def model_kwargs(hidden: tuple[int, ...]) -> dict:
    return {"dnn_hidden_units": hidden, "seed": SEED, "dnn_dropout": 0.0, "l2_reg_embedding": 1e-5}


# ----------------------------------------------------------------------------------------------- DeepCTR


def run_deepctr(name: str, splits, encoder, hidden: tuple[int, ...], device: str) -> dict:
    from ihas_lightning.backbones import feature_columns, import_deepctr

    dc = import_deepctr()
    schema, vocab = encoder.schema, encoder.vocab_sizes
    columns = feature_columns(schema, vocab, 16)
    model = getattr(dc.models, name)(columns, columns, task="binary", device=device, **model_kwargs(hidden))
    model.compile("adam", "binary_crossentropy")
    train = splits["train"]
    # DeepCTR-Torch feeds one float32 X: ids must stay below 2**24 to survive (they do here).
    assert int(train.sparse.max()) < 2**24
    x = {f: train.sparse[:, i] for i, f in enumerate(schema.sparse)}
    x.update({f: train.dense[:, j] for j, f in enumerate(schema.dense)})
    stamps: dict[str, float] = {}

    class EpochClock(dc.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            sync(device)
            stamps["start"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            sync(device)
            stamps["end"] = time.perf_counter()

    begin = time.perf_counter()
    with silenced_stdout():
        # No validation data: fit evaluates nothing; its epoch-end summary line is silenced.
        model.fit(x, train.labels, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[EpochClock()])
    fit_seconds = time.perf_counter() - begin
    seconds = stamps["end"] - stamps["start"]
    del model
    gc.collect()
    return {"seconds": seconds, "fit_seconds": fit_seconds, "samples_per_s": len(train) / seconds}


# ----------------------------------------------------------------------------------------------- ours


def run_ours(name: str, splits, encoder, hidden: tuple[int, ...], device: str) -> dict:
    from ihas_lightning import BackboneModule

    module = BackboneModule(encoder.schema, encoder.vocab_sizes, backbone=name, dim=16, **model_kwargs(hidden))
    return time_one_epoch(module, splits, encoder, BATCH_SIZE, device)


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_speed_arguments(parser, rows=1_000_000, json_name="throughput.json", models=MODELS)
    parser.add_argument("--epochs", type=int, default=1, help="timed epochs per run (each is one fit call)")
    args = parser.parse_args(argv)

    threads, device = setup_speed_run(args)
    hidden = tuple(args.hidden)

    t0 = time.perf_counter()
    splits, encoder = make_data(args.rows)
    print(f"data: {args.rows:,} rows, {len(encoder.schema.sparse)} sparse + {len(encoder.schema.dense)} dense "
          f"fields, {sum(encoder.vocab_sizes.values()):,} embedding rows ({time.perf_counter() - t0:.1f}s)",
          flush=True)

    results: dict[str, dict] = {}
    for name in args.models:
        runs: dict[str, list[dict]] = {"ours": [], "deepctr": []}
        for repeat in range(args.repeats):
            # Alternate which side goes first so that drift in machine load hits both equally.
            order = ("deepctr", "ours") if repeat % 2 == 0 else ("ours", "deepctr")
            for side in order:
                run = run_deepctr if side == "deepctr" else run_ours
                per_epoch = [run(name, splits, encoder, hidden, device) for _ in range(args.epochs)]
                record = {"seconds": sum(r["seconds"] for r in per_epoch),
                          "fit_seconds": sum(r["fit_seconds"] for r in per_epoch)}
                record["samples_per_s"] = args.rows * args.epochs / record["seconds"]
                runs[side].append(record)
                print(f"{name:7s} {side:8s} run {repeat + 1}: {record['samples_per_s']:10,.0f} samples/s "
                      f"(epoch {record['seconds']:.1f}s, fit {record['fit_seconds']:.1f}s)", flush=True)
        ours = best_of([r["samples_per_s"] for r in runs["ours"]])
        theirs = best_of([r["samples_per_s"] for r in runs["deepctr"]])
        results[name] = {"ours": round(ours, 1), "deepctr": round(theirs, 1), "ratio": round(ours / theirs, 3),
                         "runs": runs}
        print(f"{name}: ours {ours:,.0f} vs deepctr {theirs:,.0f} samples/s -> {ours / theirs:.2f}x", flush=True)

    payload = {
        "models": results,
        "rows": args.rows,
        "batch_size": BATCH_SIZE,
        "threads": threads,
        "epochs": args.epochs,
        "repeats": args.repeats,
        "device": "cuda" if device.startswith("cuda") else device,
        "dnn_hidden_units": list(hidden),
        "embedding_dim": 16,
        "vocab_cap": VOCAB_CAP,
        "machine": machine_info(device),
        "date": now_iso(),
        "command": "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    json_path = write_json(args.json, payload)
    md_path = write_markdown_table(
        json_path.with_suffix(".md"), "Training throughput: ours vs DeepCTR-Torch",
        ["model", "ours (samples/s)", "deepctr-torch (samples/s)", "ratio"],
        [[n, r["ours"], r["deepctr"], f"{r['ratio']:.2f}x"] for n, r in results.items()],
        notes=[f"{args.rows:,} synthetic Criteo-shaped rows (26 sparse fields, cardinalities capped at "
               f"{VOCAB_CAP:,}; 13 dense), embedding dim 16, DNN {list(hidden)}, batch {BATCH_SIZE}, Adam 1e-3, "
               f"L2 1e-5 on embeddings in both",
               *speed_notes(payload, args.repeats)])
    print(f"wrote {json_path} and {md_path}")
    return payload


if __name__ == "__main__":
    main()

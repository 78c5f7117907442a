"""Training throughput: DeepCTR-Torch's own ``fit`` vs our ``BackboneModule`` (row-wise and dense updates).

All sides train the same model class (DeepFM, DCN) with identical feature columns, DNN widths,
initialization seed, L2 terms, Adam (lr 1e-3) and batch size on the same synthetic Criteo-shaped rows (26
sparse fields with Zipf-distributed ids, 13 dense fields). ``--vocab criteo`` gives the fields the real
cardinalities of the Criteo Kaggle data (33.8M ids; see ``CRITEO_CARDINALITIES``), ``--vocab capped``
(default) caps them at 200k rows. Sides: ``ours`` (``embedding_updates="rowwise"``, the default: a step
reads and writes the rows the batch touches), ``deepctr`` (DeepCTR-Torch's ``fit`` with the optimizer its
``compile("adam")`` builds: dense gradients and Adam over every row), ``deepctr_fused`` (the same ``fit`` with
``torch.optim.Adam(fused=True)``, the optimizer ``ours_dense`` uses: the gap between the two DeepCTR-Torch sides
is the optimizer's share, the rest is the training loop's) and ``ours_dense`` (``embedding_updates="dense"``).
Our DCN also computes DeepCTR-Torch's cross network in folded form (``ihas_lightning.cross_network``: the same
values, without its batched 1x1 matrix products), on both of our sides; ``ours / ours_dense`` is then the
row-wise updates' share alone.
Each run is a fresh subprocess on the same saved rows, so its peak RSS is its own. Only the training epoch is
timed: from the epoch-start to the epoch-end callback of each side (DeepCTR-Torch's
``on_epoch_begin``/``on_epoch_end``, Lightning's ``on_train_epoch_start``/``on_train_epoch_end``), so data
loading, model construction and DeepCTR-Torch's one-off input concatenation are excluded; the first step (and
the optimizer state it allocates) is inside the timed epoch on every side. Sides run alternately,
``--repeats`` times each; the median counts and the spread (lowest, highest) is reported.

``--batches N`` times the first N batches of the rows instead of the whole epoch, on every side alike. At
Criteo's vocabulary a dense step reads and writes every one of the 33.8M rows (11 s a step for DeepCTR-Torch's
``fit`` on this project's 2-core machine), so a 1M-row epoch would take 45 minutes a run; the dense sides'
step cost does not depend on the batch, and the row-wise side's depends on the rows a batch touches, which the
Zipf ids keep the same from batch to batch.

Usage:
    python benchmarks/throughput.py --repeats 3                  # capped, 1M rows, every usable core
    python benchmarks/throughput.py --vocab criteo --repeats 3 --batches 8   # Criteo's vocabulary sizes
    python benchmarks/throughput.py --device cuda        # ours with accelerator="gpu", DeepCTR on cuda:0
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    RESULTS_DIR, add_speed_arguments, machine_info, now_iso, setup_speed_run, silenced_stdout, sync, time_one_epoch,
    provenance, write_json, write_markdown_table,
)

# Distinct values of C1..C26 in the Criteo Kaggle (Display Advertising Challenge) train.txt, 45.8M rows: the
# table sizes facebookresearch/dlrm gives for that data set (``--data-set=kaggle``,
# ``--arch-embedding-size=1460-583-10131227-...``). 33,762,577 ids; four fields above 5M.
CRITEO_CARDINALITIES = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
                        14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
VOCAB_CAP = 200_000                 # the capped setting: tables that fit a laptop many times over
VOCABS = ("capped", "criteo")
SIDES = ("ours", "deepctr", "deepctr_fused", "ours_dense")
BASELINES = SIDES[1:]
MODELS = ("DeepFM", "DCN")
BATCH_SIZE = 4096
SEED = 1024


def vocabulary(kind: str = "capped") -> tuple[int, ...]:
    return CRITEO_CARDINALITIES if kind == "criteo" else tuple(min(v, VOCAB_CAP) for v in CRITEO_CARDINALITIES)


def make_data(rows: int, seed: int = 0, vocab: str = "capped"):
    """Encoded train rows (ids shifted by 2: 0 = missing, 1 = OOV; Zipf-distributed, exponent 1.1), a tiny
    val/test split, the encoder.

    The dense counts are encoded as ``FeatureEncoder`` encodes them (log1p, standardized with the training
    split's mean and standard deviation, missing -> 0), not fed raw: raw counts reach 3e8, and DCN's cross
    network squares them, to gradients of 1e19 that overflow Adam's second moment on a GPU (found there).
    """
    from ihas_lightning.data import SyntheticConfig, SyntheticCTR
    from ihas_lightning.data.encoders import EncodedColumns, FeatureEncoder

    generator = SyntheticCTR(SyntheticConfig(num_sparse=26, num_dense=13, vocab_sizes=vocabulary(vocab)), seed=seed)
    chunks = {"train": generator.generate(rows, seed=1), "val": generator.generate(BATCH_SIZE, seed=2),
              "test": generator.generate(BATCH_SIZE, seed=3)}

    def raw_dense(chunk) -> np.ndarray:
        return np.where(chunk.dense_missing, np.nan, chunk.dense.astype(np.float64))

    encoder = FeatureEncoder.for_integer_ids(generator.schema, generator.vocab_sizes)
    encoder.fit_dense(raw_dense(chunks["train"]))

    def encoded(chunk) -> EncodedColumns:
        n = len(chunk.labels)
        return EncodedColumns(chunk.labels.astype(np.float32), chunk.sparse + 2, encoder.encode_dense(raw_dense(chunk)),
                              np.zeros((n, 0), np.int64))

    return {name: encoded(chunk) for name, chunk in chunks.items()}, encoder


def save_data(path: Path, splits, encoder) -> None:
    arrays = {f"{split}.{part}": getattr(columns, part) for split, columns in splits.items()
              for part in ("labels", "sparse", "dense", "multi")}
    np.savez(path, encoder=np.array(json.dumps(encoder.to_dict())), **arrays)


def load_data(path: Path):
    from ihas_lightning.data.encoders import EncodedColumns, FeatureEncoder

    data = np.load(path)
    splits = {split: EncodedColumns(*(data[f"{split}.{part}"] for part in ("labels", "sparse", "dense", "multi")))
              for split in ("train", "val", "test")}
    return splits, FeatureEncoder.from_dict(json.loads(str(data["encoder"])))


def model_kwargs(hidden: tuple[int, ...]) -> dict:
    return {"dnn_hidden_units": hidden, "seed": SEED, "dnn_dropout": 0.0, "l2_reg_embedding": 1e-5}


# ----------------------------------------------------------------------------------------------- the sides


def run_deepctr(name: str, splits, encoder, hidden: tuple[int, ...], device: str, fused: bool = False,
                batches: int | None = None) -> dict:
    import torch

    from ihas_lightning.backbones import feature_columns, import_deepctr

    dc = import_deepctr()
    schema, vocab = encoder.schema, encoder.vocab_sizes
    columns = feature_columns(schema, vocab, 16)
    model = getattr(dc.models, name)(columns, columns, task="binary", device=device, **model_kwargs(hidden))
    # "adam" is what DeepCTR-Torch users write: torch.optim.Adam(model.parameters()) at lr 1e-3.
    model.compile(torch.optim.Adam(model.parameters(), lr=1e-3, fused=True) if fused else "adam",
                  "binary_crossentropy")
    train = splits["train"]
    rows = len(train) if batches is None else min(len(train), batches * BATCH_SIZE)
    # DeepCTR-Torch feeds one float32 X: ids must stay below 2**24 to survive (they do here: at most 10.1M).
    assert int(train.sparse.max()) < 2**24
    x = {f: train.sparse[:rows, i] for i, f in enumerate(schema.sparse)}
    x.update({f: train.dense[:rows, j] for j, f in enumerate(schema.dense)})
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
        model.fit(x, train.labels[:rows], batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=[EpochClock()])
    fit_seconds = time.perf_counter() - begin
    seconds = stamps["end"] - stamps["start"]
    del model
    gc.collect()
    return {"seconds": seconds, "fit_seconds": fit_seconds, "samples_per_s": rows / seconds}


def run_ours(name: str, splits, encoder, hidden: tuple[int, ...], device: str, updates: str = "rowwise",
             batches: int | None = None) -> dict:
    from ihas_lightning import BackboneModule

    module = BackboneModule(encoder.schema, encoder.vocab_sizes, backbone=name, dim=16, embedding_updates=updates,
                            **model_kwargs(hidden))
    if device.startswith("cuda"):
        module.backbone.model.device = device
    return time_one_epoch(module, splits, encoder, BATCH_SIZE, device, batches=batches)


def run_side(side: str, name: str, data: Path, hidden: tuple[int, ...], device: str,
             batches: int | None = None) -> dict:
    """One fit of one epoch on the saved rows (in this process); samples/s and this process's peak RSS."""
    splits, encoder = load_data(data)
    if side.startswith("deepctr"):
        record = run_deepctr(name, splits, encoder, hidden, device, fused=side == "deepctr_fused", batches=batches)
    else:
        record = run_ours(name, splits, encoder, hidden, device, "dense" if side == "ours_dense" else "rowwise",
                          batches)
    record["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    if device.startswith("cuda"):
        import torch

        record["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
    return record


def spawn(side: str, name: str, data: Path, args: argparse.Namespace) -> dict:
    """``run_side`` in a fresh interpreter: each side's memory is measured alone, nothing carries over."""
    command = [sys.executable, __file__, "--worker", side, "--models", name, "--data-file", str(data),
               "--hidden", *map(str, args.hidden), "--device", args.device, "--threads", str(args.threads or 0)]
    if args.batches:
        command += ["--batches", str(args.batches)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"{side} {name} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_speed_arguments(parser, rows=1_000_000, json_name="throughput.json", models=MODELS)
    parser.add_argument("--vocab", choices=VOCABS, default="capped", help="table sizes: capped at 200k or Criteo's")
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=list(SIDES))
    parser.add_argument("--batches", type=int, default=None,
                        help="time the first N batches on every side instead of the whole epoch (see the docstring)")
    parser.add_argument("--worker", choices=SIDES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-file", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.json == RESULTS_DIR / "throughput.json":              # the default: one result file per vocabulary
        args.json = RESULTS_DIR / f"throughput_{args.vocab}.json"
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.batches is not None and args.batches < 1:
        raise SystemExit("--batches must be >= 1")
    threads, device = setup_speed_run(args)
    hidden = tuple(args.hidden)
    if args.worker:
        record = run_side(args.worker, args.models[0], args.data_file, hidden, device, args.batches)
        print(json.dumps(record), flush=True)
        return {}

    t0 = time.perf_counter()
    splits, encoder = make_data(args.rows, vocab=args.vocab)
    print(f"data: {args.rows:,} rows, {len(encoder.schema.sparse)} sparse + {len(encoder.schema.dense)} dense "
          f"fields, {sum(encoder.vocab_sizes.values()):,} embedding rows ({time.perf_counter() - t0:.1f}s)",
          flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "rows.npz"
        save_data(data, splits, encoder)
        del splits
        for name in args.models:
            runs: dict[str, list[dict]] = {side: [] for side in args.sides}
            for repeat in range(args.repeats):
                # Rotate which side goes first so that drift in machine load hits all sides alike.
                order = args.sides[repeat % len(args.sides):] + args.sides[:repeat % len(args.sides)]
                for side in order:
                    record = spawn(side, name, data, args)
                    runs[side].append(record)
                    print(f"{name:7s} {side:10s} run {repeat + 1}: {record['samples_per_s']:10,.0f} samples/s "
                          f"(epoch {record['seconds']:.1f}s, fit {record['fit_seconds']:.1f}s, peak RSS "
                          f"{record['peak_rss_gib']:.2f} GiB)", flush=True)
            results[name] = summarise(runs)
            print(f"{name}: " + ", ".join(f"{side} {r['samples_per_s']:,.0f}/s" for side, r in
                                          results[name]["sides"].items()), flush=True)

    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"models": results, "vocab": args.vocab, "vocab_sizes": list(vocabulary(args.vocab)),
               "embedding_rows": sum(encoder.vocab_sizes.values()), "rows": args.rows, "batch_size": BATCH_SIZE,
               "timed_batches": args.batches,
               "threads": threads, "repeats": args.repeats, "device": "cuda" if device.startswith("cuda") else device,
               "dnn_hidden_units": list(hidden), "embedding_dim": 16, "machine": machine_info(device),
               "date": now_iso(),
               "provenance": {**provenance(), "command": command}}
    json_path = write_json(args.json, payload)
    write_markdown(json_path.with_suffix(".md"), payload)
    print(f"wrote {json_path} and {json_path.with_suffix('.md')}")
    return payload


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Median, lowest and highest samples/s and the largest peak RSS per side; median ratios of ``ours`` to the
    other sides."""
    sides = {}
    for side, records in runs.items():
        speeds = [r["samples_per_s"] for r in records]
        sides[side] = {"samples_per_s": round(statistics.median(speeds), 1), "min_samples_per_s": round(min(speeds), 1),
                       "max_samples_per_s": round(max(speeds), 1),
                       "peak_rss_gib": max(r["peak_rss_gib"] for r in records), "runs": records}
    out: dict = {"sides": sides}
    if "ours" in sides:
        for other in BASELINES:
            if other in sides:
                out[f"ratio_vs_{other}"] = round(sides["ours"]["samples_per_s"] / sides[other]["samples_per_s"], 3)
    return out


def write_markdown(path: Path, payload: dict) -> None:
    sides = [s for s in SIDES if any(s in r["sides"] for r in payload["models"].values())]
    ratios = [o for o in BASELINES if any(f"ratio_vs_{o}" in r for r in payload["models"].values())]
    rows = []
    for name, result in payload["models"].items():
        row = [name]
        for side in sides:
            record = result["sides"].get(side)
            row += ([f"{record['samples_per_s']:,.0f} ({record['min_samples_per_s']:,.0f}-"
                     f"{record['max_samples_per_s']:,.0f})", f"{record['peak_rss_gib']:.2f}"] if record else ["-", "-"])
        row += [f"{result[f'ratio_vs_{o}']:.2f}x" if f"ratio_vs_{o}" in result else "-" for o in ratios]
        rows.append(row)
    headers = ["model"] + [h for side in sides for h in (f"{side} samples/s (range)", f"{side} peak RSS (GiB)")]
    vocab = ("Criteo Kaggle's real cardinalities (DLRM's table sizes)" if payload["vocab"] == "criteo"
             else f"Criteo's cardinalities capped at {VOCAB_CAP:,}")
    timed = ("the whole epoch" if not payload.get("timed_batches") else
             f"the first {payload['timed_batches']} batches ({payload['timed_batches'] * BATCH_SIZE:,} rows) of the "
             "epoch on every side (see the script's docstring)")
    write_markdown_table(path, f"Training throughput ({payload['vocab']} vocabulary, {payload['threads']} "
                               "threads): ours vs DeepCTR-Torch",
                         headers + [f"ours / {o}" for o in ratios], rows, notes=[
        f"{payload['rows']:,} synthetic Criteo-shaped rows: 26 sparse fields with Zipf(1.1) ids, {vocab}, "
        f"{payload['embedding_rows']:,} embedding rows; 13 dense fields; embedding dim 16, DNN "
        f"{payload['dnn_hidden_units']}, batch {BATCH_SIZE}, Adam 1e-3, L2 1e-5 on embeddings on every side",
        "ours: embedding_updates='rowwise' (sparse gradients, lazy Adam over the batch's rows, L2 as the "
        "optimiser's weight decay on those rows); "
        "ours_dense: embedding_updates='dense' (fused Adam over every row); deepctr: DeepCTR-Torch's own fit with "
        "compile('adam'); deepctr_fused: the same fit with torch.optim.Adam(fused=True); our DCN computes the "
        "cross network folded (ihas_lightning.cross_network, same values) on both of our sides",
        f"device {payload['device']}, {payload['threads']} torch threads, {payload['machine']['cpu']} "
        f"({payload['machine']['logical_cores']} cores, {payload['machine'].get('usable_cores', '?')} usable by "
        "the run)",
        f"median (lowest-highest) of {payload['repeats']} alternating runs per side, each a fresh process (peak "
        f"RSS: the largest of its runs, data included); timed: {timed}, from epoch start to epoch end",
        f"command: `{payload['provenance']['command']}`; commit {payload['provenance']['commit']}; "
        f"{payload['date']}"])


if __name__ == "__main__":
    main()

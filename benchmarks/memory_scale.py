"""Peak memory of the search stage over 1M and 10M rows read from the on-disk cache (issue 8).

Each size runs in fresh subprocesses: one prepares the encoded cache of synthetic Criteo-like rows
(``CTRDataModule("synthetic", rows=N, in_memory=False)``: Zipf-distributed categories, 8 sparse and 4 dense
fields), one trains the search stage (``SearchModule``, gates on from the first step, DeepFM at dimension 4)
for one full epoch over the training split, streamed from the cache. Peak RSS is the child's own
``ru_maxrss`` (and ``psutil``'s resident size sampled after the epoch). The requirement: the 10M run's
training peak RSS is at most 1.3x the 1M run's, i.e. memory does not grow with the data.

Usage:
    python benchmarks/memory_scale.py                     # 1M and 10M rows
    python benchmarks/memory_scale.py --sizes 100000 1000000 --json /tmp/m.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json, write_markdown_table  # noqa: E402

BATCH_SIZE = 8192
RATIO_LIMIT = 1.3


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def child_prepare(rows: int, cache: str) -> dict:
    import torch

    torch.set_num_threads(1)
    from ihas_lightning import CTRDataModule

    dm = CTRDataModule("synthetic", rows=rows, batch_size=BATCH_SIZE, cache_dir=cache, in_memory=False)
    start = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - start
    return {"prepare_seconds": seconds, "prepare_rows_per_s": rows / seconds, "prepare_peak_rss_mib": _peak_rss_mib(),
            "cache_bytes": sum(p.stat().st_size for p in dm.cache_dir.rglob("*") if p.is_file())}


def child_train(rows: int, cache: str) -> dict:
    import psutil
    import pytorch_lightning as pl
    import torch

    torch.set_num_threads(1)
    from ihas_lightning import CTRDataModule, SearchModule
    from ihas_lightning.callbacks import RegularizerWarmup, TemperatureAnnealing
    from ihas_lightning.data.cache import EncodedStore

    baseline = _peak_rss_mib()
    dm = CTRDataModule("synthetic", rows=rows, batch_size=BATCH_SIZE, cache_dir=cache, in_memory=False)
    dm.prepare_data()
    dm.setup("fit")
    assert all(isinstance(s, EncodedStore) for s in dm.splits.values()), "the cache must be streamed from disk"
    module = SearchModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=4, dnn_hidden_units=(16,),
                          warmup_epochs=0, gate={"budget": 0.5}, seed=0)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[TemperatureAnnealing(), RegularizerWarmup()])
    start = time.perf_counter()
    trainer.fit(module, dm)
    seconds = time.perf_counter() - start
    train_rows = len(dm.split("train"))
    return {"train_rows": train_rows, "train_steps": int(trainer.global_step), "train_seconds": seconds,
            "train_rows_per_s": train_rows / seconds, "train_peak_rss_mib": _peak_rss_mib(),
            "rss_after_epoch_mib": psutil.Process().memory_info().rss / 2**20,
            "rss_before_data_mib": baseline}


def run_child(kind: str, rows: int, cache: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--rows", str(rows), "--cache", cache],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child for {rows} rows failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--json", default=str(RESULTS_DIR / "memory_scale.json"))
    parser.add_argument("--cache", default=None, help="cache folder (default: a temporary one, removed after)")
    parser.add_argument("--child", choices=["prepare", "train"], help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = (child_prepare if args.child == "prepare" else child_train)(args.rows, args.cache)
        print(json.dumps(result))
        return

    cache = args.cache or tempfile.mkdtemp(prefix="ihas_memory_scale_")
    results = []
    try:
        for rows in args.sizes:
            entry = {"rows": rows, **run_child("prepare", rows, cache), **run_child("train", rows, cache)}
            results.append(entry)
            print(json.dumps(entry), flush=True)
            if not args.cache:
                shutil.rmtree(cache, ignore_errors=True)
                os.makedirs(cache, exist_ok=True)
    finally:
        if not args.cache:
            shutil.rmtree(cache, ignore_errors=True)
    ratio = results[-1]["train_peak_rss_mib"] / results[0]["train_peak_rss_mib"]
    payload = {"benchmark": "memory_scale", "date": now_iso(), "machine": machine_info(), "batch_size": BATCH_SIZE,
               "model": "SearchModule(DeepFM, dim=4, dnn=(16,), gates on), 1 thread",
               "data": "CTRDataModule('synthetic', in_memory=False): 8 sparse + 4 dense fields, 80/10/10 split",
               "results": results, "peak_rss_ratio_largest_to_smallest": ratio, "ratio_limit": RATIO_LIMIT,
               "passed": ratio <= RATIO_LIMIT}
    path = Path(args.json)
    write_json(path, payload)
    rows = [[f"{r['rows']:,}", r["prepare_rows_per_s"], r["prepare_peak_rss_mib"], r["train_rows"],
             r["train_steps"], r["train_seconds"], r["train_rows_per_s"], r["train_peak_rss_mib"]] for r in results]
    write_markdown_table(
        path.with_suffix(".md"), "Memory scaling of the search stage (one epoch from the on-disk cache)",
        ["rows", "prep rows/s", "prep peak RSS MiB", "train rows", "steps", "train s", "train rows/s",
         "train peak RSS MiB"], rows,
        notes=[f"peak RSS ratio {results[-1]['rows']:,} / {results[0]['rows']:,} rows: {ratio:.3f} "
               f"(limit {RATIO_LIMIT}): {'PASS' if ratio <= RATIO_LIMIT else 'FAIL'}",
               f"batch {BATCH_SIZE}, {payload['model']}; {payload['data']}; validation skipped",
               "each size in fresh subprocesses (one prepares the cache, one trains); peak RSS = the "
               "child's ru_maxrss", f"machine: {payload['machine']['cpu']}, {payload['date']}"])
    print(f"ratio {ratio:.3f} -> {path}")


if __name__ == "__main__":
    main()

"""Memory of the search stage on Criteo-shaped rows, 1M vs 10M rows streamed from the on-disk cache (issue 17).

Rows: Criteo's 39 columns, 26 sparse fields ``C1..C26`` and 13 dense count fields ``I1..I13``, made by
``CTRDataModule("synthetic", rows=N, in_memory=False, synthetic_config=CRITEO_SHAPED)``: Zipf(1.1)-distributed ids
(as in ``throughput.py``) over the Criteo Kaggle cardinalities (``throughput.CRITEO_CARDINALITIES``, 33.8M ids,
source cited there) capped at ``throughput.VOCAB_CAP`` = 200,000 ids a field: 1,483,115 ids in all, six fields at
the cap. Why capped: the tables, their Adam moments and the encoder's vocabulary are the same at every row count,
so they are no part of what this benchmark looks for; at the full 33.8M ids the tables alone (dimension 4: 540 MB,
1.6 GB with Adam's two moments) plus 33.8M vocabulary tokens would dominate the RSS and drown the data-dependent
part. Everything else: the search stage (``SearchModule``, gates on from the first step, DeepFM at dimension 4,
one DNN layer of 16) for one epoch over the training split (80%), batch 8192, 1 torch thread, no validation.

Each size runs in fresh subprocesses: one prepares the cache, one trains. The training child reads its current
RSS (``psutil``) at checkpoints:

* import baseline: python, torch, pytorch_lightning and ihas_lightning imported, nothing built;
* model baseline: data module set up (encoder and its 1.48M-token vocabulary loaded, labels checked), model
  and optimizer built, at ``on_train_start``, before the first batch is read. The high-water mark is reset
  here (``/proc/self/clear_refs``), so the epoch's peak is the epoch's own;
* after step 1: Adam's moments now exist (allocated by the first step, the same size at every row count);
* epoch peak: ``VmHWM`` at the end of the epoch (falls back to the whole child's ``ru_maxrss`` where the mark
  cannot be reset); and the whole child's peak (``ru_maxrss``, setup included).

The data-dependent part is the epoch peak minus the model baseline (and minus the import baseline). It is
bounded by the loader's read chunk, 64 batches (524,288 rows, 264 bytes each: 132 MiB read, then a shuffled
copy), so it grows with the rows only while the training split is smaller than one chunk (under ~655k rows).
The requirement: at the largest size the training child's peak RSS, and the epoch's, are at most 1.3x the
smallest size's, i.e. memory does not grow with the data. The ratio of the data-dependent parts is reported too.

Usage:
    python benchmarks/memory_scale.py                     # 1M and 10M rows
    python benchmarks/memory_scale.py --sizes 20000 200000 --json /tmp/m.json
"""

from __future__ import annotations

import argparse
import gc
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
from throughput import CRITEO_CARDINALITIES, VOCAB_CAP, vocabulary  # noqa: E402

BATCH_SIZE = 8192
RATIO_LIMIT = 1.3
NUM_DENSE = 13


def _criteo_shaped():
    from ihas_lightning.data import SyntheticConfig

    return SyntheticConfig(num_sparse=len(CRITEO_CARDINALITIES), num_dense=NUM_DENSE,
                           vocab_sizes=vocabulary("capped"), zipf_exponent=1.1)


def _datamodule(rows: int, cache: str):
    from ihas_lightning import CTRDataModule

    return CTRDataModule("synthetic", rows=rows, batch_size=BATCH_SIZE, cache_dir=cache, in_memory=False,
                         synthetic_config=_criteo_shaped())


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _max_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _vm_hwm_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def child_prepare(rows: int, cache: str) -> dict:
    import torch

    torch.set_num_threads(1)
    dm = _datamodule(rows, cache)
    start = time.perf_counter()
    dm.prepare_data()
    seconds = time.perf_counter() - start
    cache_bytes = sum(p.stat().st_size for p in dm.cache_dir.rglob("*") if p.is_file())
    # Rows only (the split folders), without the encoder's vocabulary file, the same size at every row count.
    row_bytes = sum(p.stat().st_size for name in ("train", "val", "test")
                    for p in (dm.cache_dir / name).rglob("*") if p.is_file())
    return {"prepare_seconds": seconds, "prepare_rows_per_s": rows / seconds, "prepare_peak_rss_mib": _max_rss_mib(),
            "cache_bytes": cache_bytes, "cache_bytes_per_row": row_bytes / rows,
            "cache_fixed_bytes": cache_bytes - row_bytes}


def child_train(rows: int, cache: str) -> dict:
    import pytorch_lightning as pl
    import torch
    from typing_extensions import override

    torch.set_num_threads(1)
    from ihas_lightning import SearchModule
    from ihas_lightning.callbacks import RegularizerWarmup, TemperatureAnnealing
    from ihas_lightning.data.cache import EncodedStore

    class MemoryCheckpoints(pl.Callback):
        """Current RSS before the first batch, after the first step and after the epoch; the epoch's peak."""

        def __init__(self) -> None:
            self.values: dict[str, float | bool | None] = {}

        @override
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            gc.collect()
            self.values["model_baseline_rss_mib"] = _rss_mib()
            self.values["pre_epoch_peak_rss_mib"] = _max_rss_mib()
            self.values["peak_was_reset"] = _reset_peak()

        @override
        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch,
                               batch_idx: int) -> None:
            if batch_idx == 0:
                self.values["after_step1_rss_mib"] = _rss_mib()

        @override
        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            hwm = _vm_hwm_mib() if self.values["peak_was_reset"] else None
            self.values["epoch_peak_rss_mib"] = hwm if hwm is not None else _max_rss_mib()
            self.values["epoch_peak_source"] = "VmHWM since on_train_start" if hwm is not None else "ru_maxrss"
            self.values["rss_after_epoch_mib"] = _rss_mib()

    gc.collect()
    import_rss = _rss_mib()
    dm = _datamodule(rows, cache)
    dm.prepare_data()
    dm.setup("fit")
    assert all(isinstance(s, EncodedStore) for s in dm.splits.values()), "the cache must be streamed from disk"
    module = SearchModule(dm.schema, dm.vocab_sizes, backbone="DeepFM", dim=4, dnn_hidden_units=(16,),
                          warmup_epochs=0, gate={"budget": 0.5}, seed=0)
    probe = MemoryCheckpoints()
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         num_sanity_val_steps=0, callbacks=[TemperatureAnnealing(), RegularizerWarmup(), probe])
    start = time.perf_counter()
    trainer.fit(module, dm)
    seconds = time.perf_counter() - start
    train_rows = len(dm.split("train"))
    v = probe.values
    return {"train_rows": train_rows, "train_steps": int(trainer.global_step), "train_seconds": seconds,
            "train_rows_per_s": train_rows / seconds, "embedding_rows": sum(dm.vocab_sizes.values()),
            "import_rss_mib": import_rss, **v,
            "data_dependent_mib": v["epoch_peak_rss_mib"] - v["model_baseline_rss_mib"],
            "epoch_peak_above_import_mib": v["epoch_peak_rss_mib"] - import_rss,
            "train_peak_rss_mib": max(v["pre_epoch_peak_rss_mib"], v["epoch_peak_rss_mib"], _max_rss_mib())}


def run_child(kind: str, rows: int, cache: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--rows", str(rows), "--cache", cache],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} child for {rows} rows failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_results(path: Path, results: list[dict]) -> dict:
    """The JSON record and its Markdown table; the ratios are largest size over smallest."""
    first, last = results[0], results[-1]
    ratios = {key: last[key] / first[key] for key in ("train_peak_rss_mib", "epoch_peak_rss_mib",
                                                        "data_dependent_mib", "epoch_peak_above_import_mib")}
    passed = ratios["train_peak_rss_mib"] <= RATIO_LIMIT and ratios["epoch_peak_rss_mib"] <= RATIO_LIMIT
    payload = {"benchmark": "memory_scale", "date": now_iso(), "machine": machine_info(), "batch_size": BATCH_SIZE,
               "model": "SearchModule(DeepFM, dim=4, dnn=(16,), gates on), 1 thread",
               "data": (f"CTRDataModule('synthetic', in_memory=False, synthetic_config=SyntheticConfig(26 sparse, "
                        f"{NUM_DENSE} dense, Zipf 1.1, Criteo Kaggle cardinalities capped at {VOCAB_CAP:,})), "
                        "80/10/10 split"),
               "vocab_sizes": list(vocabulary("capped")), "vocab_cap": VOCAB_CAP,
               "results": results, "ratios_largest_to_smallest": ratios, "ratio_limit": RATIO_LIMIT,
               "passed": passed}
    write_json(path, payload)
    table = [[f"{r['rows']:,}", r["cache_bytes"] / 2**20, r["prepare_seconds"], r["train_steps"], r["train_seconds"],
              r["train_rows_per_s"], r["import_rss_mib"], r["model_baseline_rss_mib"], r["after_step1_rss_mib"],
              r["epoch_peak_rss_mib"], r["data_dependent_mib"], r["epoch_peak_above_import_mib"],
              r["train_peak_rss_mib"]] for r in results]
    sizes = f"{last['rows']:,} / {first['rows']:,} rows"
    write_markdown_table(
        path.with_suffix(".md"), "Memory scaling of the search stage on Criteo-shaped rows (one epoch from the "
        "on-disk cache)",
        ["rows", "cache MiB", "prep s", "steps", "train s", "train rows/s", "import RSS MiB", "model RSS MiB",
         "after step 1 MiB", "epoch peak MiB", "data-dep. (peak - model) MiB", "peak - import MiB",
         "child peak MiB"], table,
        notes=[f"child peak RSS ratio {sizes}: {ratios['train_peak_rss_mib']:.3f}, epoch peak "
               f"{ratios['epoch_peak_rss_mib']:.3f} (limit {RATIO_LIMIT} for both): {'PASS' if passed else 'FAIL'}",
               f"data-dependent part ratio {sizes}: {ratios['data_dependent_mib']:.3f} (peak - model baseline), "
               f"{ratios['epoch_peak_above_import_mib']:.3f} (peak - import baseline)",
               f"rows: 26 sparse fields (Zipf 1.1 ids, Criteo Kaggle cardinalities capped at {VOCAB_CAP:,}: "
               f"{sum(vocabulary('capped')):,} ids) + {NUM_DENSE} dense fields, "
               f"cache: {first['cache_bytes_per_row']:.0f} bytes a row + {first['cache_fixed_bytes'] / 2**20:.0f} MiB "
               "(the encoder's vocabulary); 80/10/10 split, validation skipped",
               f"batch {BATCH_SIZE}, {payload['model']}",
               "each size in fresh subprocesses (one prepares the cache, one trains); RSS read with psutil in the "
               "training child: import = libraries imported; model = data module set up, model and optimizer "
               "built, before the first batch; after step 1 = Adam's moments allocated; epoch peak = "
               f"{first['epoch_peak_source']}; child peak = ru_maxrss of the whole training child",
               f"machine: {payload['machine']['cpu']}, {payload['date']}"])
    return payload


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
    payload = write_results(Path(args.json), results)
    print(f"ratios {payload['ratios_largest_to_smallest']} passed={payload['passed']} -> {args.json}")


if __name__ == "__main__":
    main()

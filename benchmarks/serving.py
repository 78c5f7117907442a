"""Serving speed, file size and memory of the exported models of one ``ihas run`` (issue 18).

One real run (``run_pipeline``, few epochs: speed does not depend on quality, but the groups' dimensions are
those a run finds) on MovieLens-1M-first3k by default; its models exported to TorchScript as ``ihas export``
does (``export_model``) and served with ``torch.jit.load``:

    baseline           uniform dimension 16
    baseline_matched   uniform, d or d+1 per field, at iHAS's footprint
    fieldwise          the run's search with one group (no router), each field at its own width
    ihas               iHAS as exported: each group at its own widths (``CompactGroups``)
    ihas_padded        iHAS zero-padded (``export_model(..., compact=False)``): every group at width 16

Measured in one process, CPU, 1 torch thread: samples/s at batch 1, 256 and 4096 on the run's test rows
(repeated to 4096 when fewer). In each of ``--repeats`` rounds the models take turns on every batch, each call
timed on its own, until each has run ``--min-seconds`` (so load from other jobs falls on all alike); the median
round counts, and a ratio is the median of the rounds' ratios. File size of the TorchScript file. Peak memory: a fresh
process per model (``--repeats`` times, the median counts) loads the model and predicts a 4096-row batch three
times; reported is its peak RSS and the part of it above the process before loading the model (the model and
its activations). Ratios are to uniform-16 (``baseline``) of the same run.

Usage:
    python benchmarks/serving.py                                # train a run (few epochs), then measure
    python benchmarks/serving.py --run DIR                      # train into DIR unless finished, then measure
    python benchmarks/serving.py --render benchmarks/results/serving.json     # the Markdown table again
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json, write_markdown_table  # noqa: E402

from ihas_lightning.paths import shared_data_dir  # noqa: E402

MODELS = (("baseline", "uniform 16"), ("baseline_matched", "uniform, same footprint"),
          ("fieldwise", "field-wise (one group)"), ("ihas", "iHAS, groups at their own widths"),
          ("ihas_padded", "iHAS zero-padded (reference)"))
BATCHES = (1, 256, 4096)
ROWS = 4096

# VmHWM, not ru_maxrss: a child started from this (large) process inherits its ru_maxrss across exec
_MEMORY = """
import json, sys
import torch
torch.set_num_threads(1)
inputs = torch.load(sys.argv[2])
def status_kib(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1])
before = status_kib('VmRSS')
model = torch.jit.load(sys.argv[1])
with torch.no_grad():
    for _ in range(3):
        model(*inputs)
print(json.dumps({"before_kib": before, "peak_kib": status_kib('VmHWM')}))
"""


def run_args(data: str, fmt: str, out: str, backbone: str, epochs: int, rows: int | None = None) -> list[str]:
    """``ihas run`` with few epochs: the search (one warm-up epoch + ``epochs - 1`` gated), one retraining epoch,
    one epoch of each uniform baseline."""
    return ["run", "--data", data, "--format", fmt, "--backbone", backbone, "--split-seed", "0", "--seed", "0",
            "--out", out, "--epochs", str(epochs), "--warmup-epochs", "1", "--retrain-epochs", "1",
            "--baseline-epochs", "1", "--fieldwise", "--quiet", "--threads", "1",
            *(["--rows", str(rows)] if rows else [])]


def train(argv: list[str]) -> dict:
    from ihas_lightning import run_pipeline
    from ihas_lightning.cli import parse_run_config
    from ihas_lightning.cli.quiet import quiet_output

    with quiet_output(True), contextlib.redirect_stdout(io.StringIO()):
        return run_pipeline(parse_run_config(argv))


def export_all(run: Path, folder: Path) -> dict[str, Path]:
    """Every compared model as a TorchScript file, exported as ``ihas export`` does."""
    from ihas_lightning.export import export_model, load_run_model
    from ihas_lightning.model import IHASModel

    paths = {}
    for name in ("baseline", "baseline_matched"):
        module, encoder = load_run_model(run, name)
        paths[name] = export_model(module, folder / f"{name}.pt", encoder=encoder).model
    fieldwise = IHASModel.load(run / "fieldwise" / "ihas_model.pt")
    paths["fieldwise"] = export_model(fieldwise, folder / "fieldwise.pt").model
    ihas = IHASModel.load(run / "retrain" / "ihas_model.pt")
    paths["ihas"] = export_model(ihas, folder / "ihas.pt").model
    paths["ihas_padded"] = export_model(ihas, folder / "ihas_padded.pt", compact=False).model
    return paths


def served_rows(run: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The run's test rows, encoded, repeated to :data:`ROWS` rows when fewer."""
    from ihas_lightning import training
    from ihas_lightning.data.loader import to_batch
    from ihas_lightning.pipeline.run_directory import RunDirectory

    config = RunDirectory(run).load_config()
    batch = to_batch(training.datamodule_from_config(config.data, 1).split("test"))
    index = torch.arange(ROWS) % len(batch["label"])
    return batch["sparse"][index], batch["dense"][index], batch["multi"][index]


def interleaved_samples_per_second(models: dict[str, torch.jit.ScriptModule], inputs: tuple[torch.Tensor, ...],
                                   batch: int, min_seconds: float) -> dict[str, float]:
    """Rows per second of each model in batches of ``batch`` (consecutive slices of the inputs, cycling), the
    models called in turn on each slice and each call timed on its own, until every model has run
    ``min_seconds``: load from other jobs on the machine falls on all of them alike."""
    slices = [tuple(t[start:start + batch] for t in inputs) for start in range(0, ROWS - batch + 1, batch)][:256]
    seconds = dict.fromkeys(models, 0.0)
    rows = 0
    with torch.no_grad():
        for model in models.values():                                                            # warm-up
            model(*slices[0])
        while min(seconds.values()) < min_seconds:
            for part in slices:
                for name, model in models.items():
                    start = time.perf_counter()
                    model(*part)
                    seconds[name] += time.perf_counter() - start
            rows += len(slices) * batch
    return {name: rows / spent for name, spent in seconds.items()}


def peak_memory(path: Path, inputs_path: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", _MEMORY, str(path), str(inputs_path)], capture_output=True,
                          text=True, check=True, timeout=300)
    record = json.loads(done.stdout)
    return {"peak_mib": record["peak_kib"] / 1024, "model_mib": (record["peak_kib"] - record["before_kib"]) / 1024}


def measure(paths: dict[str, Path], inputs: tuple[torch.Tensor, ...], repeats: int, min_seconds: float,
            inputs_path: Path) -> dict:
    models = {name: torch.jit.load(str(path)).eval() for name, path in paths.items()}
    with torch.no_grad():                                       # the compact and the padded iHAS agree
        gap = float((models["ihas"](*inputs) - models["ihas_padded"](*inputs)).abs().max())
    rounds: dict[str, dict[int, list[float]]] = {name: {b: [] for b in BATCHES} for name in models}
    for _ in range(repeats):
        for batch in BATCHES:
            for name, speed in interleaved_samples_per_second(models, inputs, batch, min_seconds).items():
                rounds[name][batch].append(speed)
    memory = {name: [peak_memory(path, inputs_path) for _ in range(repeats)] for name, path in paths.items()}
    results = {}
    for name, path in paths.items():
        results[name] = {
            "samples_per_s": {str(b): statistics.median(v) for b, v in rounds[name].items()},
            "samples_per_s_rounds": {str(b): v for b, v in rounds[name].items()},
            "file_bytes": path.stat().st_size,
            "peak_mib": statistics.median(m["peak_mib"] for m in memory[name]),
            "model_mib": statistics.median(m["model_mib"] for m in memory[name]),
        }
    base = results["baseline"]
    for name, record in results.items():                  # speed: the median of the rounds' paired ratios
        record["ratio"] = {**{f"samples_per_s_{b}": statistics.median(
                                  x / y for x, y in zip(rounds[name][b], rounds["baseline"][b])) for b in BATCHES},
                           "file_bytes": record["file_bytes"] / base["file_bytes"],
                           "model_mib": record["model_mib"] / base["model_mib"]}
    return {"models": results, "max_abs_probability_gap_compact_vs_padded": gap}


def run_summary(run: Path) -> dict:
    """What the run found: the groups' dims and shares, and each model's counts from its metrics."""
    metrics = json.loads((run / "metrics.json").read_text())
    keys = ("test_auc", "footprint_params", "dense_params", "flops_per_sample")
    summary = {name: {k: metrics.get(name, {}).get(k) for k in keys} for name, _ in MODELS if name in metrics}
    retrain = json.loads((run / "retrain" / "metrics.json").read_text())
    summary["ihas"].update(dims=retrain.get("dims"), group_share_test=retrain.get("group_share_test"))
    return summary


def markdown(payload: dict, path: Path) -> None:
    models = payload["results"]["models"]
    headers = ["model", *(f"samples/s @{b}" for b in BATCHES), *(f"x uniform-16 @{b}" for b in BATCHES),
               "file MiB", "file x", "peak RSS MiB", "model MiB", "model MiB x", "FLOPs/sample"]
    rows = []
    for name, label in MODELS:
        r = models[name]
        flops = payload["run"].get(name if name != "ihas_padded" else "baseline", {}).get("flops_per_sample")
        flops = "16-wide (as uniform 16)" if name == "ihas_padded" else (f"{flops:,.0f}" if flops else "n/a")
        rows.append([f"{label} (`{name}`)", *(f"{r['samples_per_s'][str(b)]:,.0f}" for b in BATCHES),
                     *(f"{r['ratio'][f'samples_per_s_{b}']:.2f}" for b in BATCHES),
                     f"{r['file_bytes'] / 2**20:.2f}", f"{r['ratio']['file_bytes']:.2f}", f"{r['peak_mib']:.0f}",
                     f"{r['model_mib']:.1f}", f"{r['ratio']['model_mib']:.2f}", flops])
    share = payload["run"]["ihas"].get("group_share_test") or []
    dims = payload["run"]["ihas"].get("dims") or {}
    widths = [sum(row.values()) for row in dims.values()]
    fields = len(next(iter(dims.values()), {}))
    notes = [f"data {payload['data']}, backbone {payload['backbone']}; one `ihas run` ({payload['epochs']} search "
             "epochs, 1 retraining epoch, 1 epoch per baseline)",
             f"iHAS: {len(widths)} groups, test shares {[round(x, 3) for x in share]}, summed embedding widths "
             f"{widths} (uniform 16: {16 * fields}); {len(set(map(str, dims.values())))} distinct sets of dims",
             f"CPU only ({payload['machine']['cpu']}), 1 torch thread, TorchScript via `torch.jit.load`; no GPU was "
             "lent to this session, so there is no GPU column",
             f"samples/s: median of {payload['repeats']} rounds; in a round the models take turns on each batch, "
             f"each call timed, until each has run >= {payload['min_seconds']} s; ratios: the median of the "
             f"rounds' ratios; memory: median of {payload['repeats']} fresh processes (peak RSS, and "
             "its part above the process before loading the model) predicting a 4096-row batch 3 times",
             f"the compact and the zero-padded iHAS files agree to "
             f"{payload['results']['max_abs_probability_gap_compact_vs_padded']:.1e} in probability on the 4096 rows",
             f"FLOPs/sample: the run's metrics (router included); the zero-padded file computes every group at "
             f"width 16; command: `{payload['provenance']['command']}`; {payload['date']}"]
    write_markdown_table(path, "Serving: samples/s, file size and memory of the exported models (ratios to "
                         "uniform 16)", headers, rows, notes)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="the run folder: measured when finished, else trained there first "
                        "(default: a temporary folder)")
    parser.add_argument("--data", default=str(shared_data_dir() / "movielens" / "ml-1m-first3k"))
    parser.add_argument("--format", default="movielens-1m")
    parser.add_argument("--backbone", default="DeepFM")
    parser.add_argument("--rows", type=int, help="rows of --data synthetic (the generator's)")
    parser.add_argument("--epochs", type=int, default=2, help="search epochs (one of them warm-up)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "serving.json")
    parser.add_argument("--render", type=Path, help="only write the Markdown table of this result JSON")
    args = parser.parse_args(argv)
    if args.render is not None:
        payload = json.loads(args.render.read_text())
        markdown(payload, args.render.with_suffix(".md"))
        return payload
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        run = args.run or Path(scratch) / "run"
        if not (run / "metrics.json").is_file():
            train(run_args(args.data, args.format, str(run), args.backbone, args.epochs, args.rows))
        trained = time.perf_counter() - start
        paths = export_all(run, Path(scratch) / "export")
        inputs = served_rows(run)
        inputs_path = Path(scratch) / "inputs.pt"
        torch.save(inputs, inputs_path)
        results = measure(paths, inputs, args.repeats, args.min_seconds, inputs_path)
        summary = run_summary(run)
    payload = {"benchmark": "serving", "date": now_iso(), "data": args.data, "format": args.format,
               "backbone": args.backbone, "epochs": args.epochs, "repeats": args.repeats,
               "min_seconds": args.min_seconds, "threads": 1, "device": "cpu", "gpu": None,
               "train_seconds": trained, "seconds": time.perf_counter() - start, "run": summary,
               "results": results, "machine": machine_info("cpu")}
    written = write_json(args.json, payload)
    payload = json.loads(written.read_text())
    markdown(payload, args.json.with_suffix(".md"))
    return payload


if __name__ == "__main__":
    main()

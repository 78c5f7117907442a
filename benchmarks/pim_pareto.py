"""PIM co-design on real data: supernet accuracy x analytic PIM cost, with Optuna, under the study's rules.

Per data set:

1. a DeepFM supernet (dim 16, dims (2, 4, 8, 16), width shares 0.25..1) with the quality benchmark's DNN
   (``ihas run``'s default, 256-128; ``benchmarks/quality.py``), via ``train_supernet`` with BigNAS's sandwich
   rule (``sandwich=2``: the largest, the smallest and 2 sampled sub-architectures a step), the variant that
   ranked sub-architectures of similar size best in ``benchmarks/results/supernet_rank.md`` (``ihas supernet
   --sandwich 2``);
2. the baseline: a uniform-16 model of that shape trained on its own on the same split with the quality
   benchmark's recipe (``ihas run``'s baseline: batch 1024, 5 + 2 epochs; :mod:`ihas_lightning.pim.standalone`);
3. the multi-objective study (TPE; validation AUC with the supernet's weights after a first-order refit,
   ``--refit-sweeps``, and a 10-step fine-tune of each candidate's whole sub-network, ``--finetune-steps``, as in
   ``ihas pim``; latency and energy ratios), whose
   reported points are chosen on validation only: the highest validation AUC among front points within the
   TORS cost ratios (``chosen``), and the same among front points where PIM pays, i.e. with a table in PIM and
   cheaper than their own shape served host-only (``chosen_pim``). Each is then tested: the supernet's weights on
   the test split, and the sub-architecture retrained on its own with the baseline's recipe;
4. the front is described by how many points put any table in PIM (with the ratios of those points apart) and how
   many of those beat their own shape served host-only; when none does, the verdict is "host only".

The data sets here have tables of a few MB, which fit a server's last-level cache, so the cost model finds
little for PIM to gain. Two more parts ask where it would: the Criteo study again with every candidate costed at
Criteo's real per-field vocabularies (``CRITEO_CARDINALITIES``, 33.8M ids, from ``benchmarks/throughput.py``)
while the AUC side stays on the 10k-row sample at hand; and a cost-only sweep of the Criteo shape over table
sizes from 1e-5x to 1x those vocabularies, which finds where the best PIM configuration starts to beat the host,
under uniform and under Zipf(1.1) access.

TORS target (NASRec's journal extension): a point within 0.001 test AUC of the baseline with FLOPs ratio <= 0.5,
energy ratio <= 0.56 and latency ratio <= 0.67, under our cost model.

Usage:
    python benchmarks/pim_pareto.py                                   # MovieLens-100K and Criteo 10k, 120 trials
    python benchmarks/pim_pareto.py --trials 20 --datasets criteo-10k --json /tmp/pim.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_info, now_iso, write_json  # noqa: E402
from throughput import CRITEO_CARDINALITIES  # noqa: E402

from ihas_lightning import SupernetConfig  # noqa: E402
from ihas_lightning.cli import parse_run_config  # noqa: E402
from ihas_lightning.pim import ModelSpec  # noqa: E402
from ihas_lightning.paths import shared_data_dir  # noqa: E402
from ihas_lightning.pim.pareto import TORS_LIMITS, write_outputs  # noqa: E402
from ihas_lightning.pim.search_space import model_spec  # noqa: E402
from ihas_lightning.pim.standalone import DEFAULT_EPOCHS, train_standalone  # noqa: E402
from ihas_lightning.modules import REFIT_SWEEPS  # noqa: E402
from ihas_lightning.pim.study import StudySettings, build_objective, candidate_of, load_supernet, run_study  # noqa: E402
from ihas_lightning.pim.sweep import crossover, pim_configs, table_size_sweep  # noqa: E402
from ihas_lightning.pipeline.supernet import train_supernet  # noqa: E402
from ihas_lightning.run_config import RunConfig  # noqa: E402

AUC_TOLERANCE = 0.001
QUALITY_DNN = RunConfig.from_options({}).model.dnn_hidden_units  # benchmarks/quality.py runs `ihas run`'s defaults
BASELINE_BATCH = RunConfig.from_options({}).data.batch_size       # and its batch size
SANDWICH = 2          # supernet_rank.py's chosen variant: largest + smallest + 2 sampled a step
DATASETS = {  # name: (path under the shared data folder, format, supernet batch size, supernet epochs)
    "movielens-100k": ("movielens/ml-100k", "movielens-100k", 1024, 3),
    "criteo-10k": ("criteo/train-10k.txt", "criteo", 256, 6),
}
CRITEO_REAL = {f"C{i + 1}": v for i, v in enumerate(CRITEO_CARDINALITIES)}
SWEEP_FACTORS = tuple(10 ** (e / 2) for e in range(-10, 1))         # 1e-5x .. 1x Criteo's vocabularies
OWN_FACTORS = tuple(10 ** (e / 2) for e in range(0, 11))           # 1x .. 1e5x a data set's own vocabularies
SWEEP_ZIPF = 1.1                                                   # the skew of throughput.py's synthetic Criteo


def tested(point: dict | None, objective, test: list, run: Path, tag: str, base_test: float) -> dict | None:
    """A point chosen on validation, now tested: the supernet's (fine-tuned) weights on the test split, then
    retrained alone."""
    if point is None:
        return None
    candidate = candidate_of(objective.space, point["params"])
    precision = candidate.config.precision
    inherited = objective.accuracy(candidate.subarch, precision, test)
    start = time.perf_counter()
    alone = train_standalone(run, candidate.subarch, stage=f"pim_{tag}_trial_{point['number']}",
                             batch_size=BASELINE_BATCH, precision=precision)
    alone_auc = alone["test_auc"] if precision == "fp32" else alone["test_auc_at_precision"]
    return {"number": point["number"], "val_auc": point["auc"], "test_auc_inherited": inherited,
            "test_auc_standalone": alone_auc, "test_auc_standalone_fp32": alone["test_auc"],
            "val_auc_standalone": alone["val_auc"], "delta_inherited": inherited - base_test,
            "delta_standalone": alone_auc - base_test,
            "auc_within_tolerance": alone_auc >= base_test - AUC_TOLERANCE,
            **{k: point[k] for k in ("latency_ratio", "energy_ratio", "flops_ratio", "pim_tables")},
            "dims": list(candidate.subarch.dims), "widths": list(candidate.subarch.widths),
            "pim": short(point["pim"]), "seconds_standalone": time.perf_counter() - start,
            "host_only": point["host_only"], "pim_beats_host": point["pim_beats_host"]}


def short(pim: dict) -> str:
    place = f"top_{pim['pim_top_k']}" if pim["table_placement"] == "top_k" else pim["table_placement"]
    mem = "pool+inter" if pim["interaction_in_memory"] else "pool" if pim["pooling_in_memory"] else "none"
    return (f"{pim['device']} x{pim['num_units']} {place} {pim['precision']} {pim['partitioning']} in-mem:{mem} "
            f"B={pim['batch_size']}")


def study(run: Path, args: argparse.Namespace, trained: dict, test: list, tag: str, cost: str,
          cost_vocab: dict | None = None, zipf: float | None = None) -> dict:
    settings = StudySettings(run_dir=str(run), trials=args.trials, sampler=args.sampler, seed=args.seed,
                             study_name=f"pim_{tag}", cost_vocab=cost_vocab, cost_zipf=zipf,
                             finetune_steps=args.finetune_steps, refit_sweeps=args.refit_sweeps)
    objective = build_objective(settings)
    start = time.perf_counter()
    result = run_study(settings, objective)
    seconds = time.perf_counter() - start
    report = write_outputs(result, run / f"pim_{tag}", objective.space, settings.storage_url, tensorboard=False,
                           baseline_trained=trained)
    selection = report["selection"]
    chosen = tested(selection["chosen"], objective, test, run, tag, trained["test_auc"])
    chosen_pim = tested(selection["chosen_pim"], objective, test, run, tag, trained["test_auc"])
    front = [{"number": p["number"], "val_auc": p["auc"], "pim_tables": p["pim_tables"],
              **{k: p[k] for k in ("latency_ratio", "energy_ratio", "flops_ratio", "host_only", "pim_beats_host")},
              "pim": short(p["pim"])} for p in report["points"]]
    return {"tag": tag, "cost_vocab": cost, "trials": args.trials, "sampler": args.sampler,
            "trial_states": report["trials"], "seconds": seconds, "front_size": report["front_size"],
            "front_pim_points": report["front_pim_points"], "front_pim_beats_host": report["front"]["pim_beats_host"],
            "verdict": report["front"]["verdict"], "front_summary": report["front"],
            "chosen": chosen, "chosen_pim": chosen_pim,
            "tors_met": bool(chosen and chosen["auc_within_tolerance"]),
            "tors_met_with_pim": bool(chosen_pim and chosen_pim["auc_within_tolerance"]), "front": front}


def quality_baseline(name: str) -> dict | None:
    """The quality benchmark's uniform-16 DeepFM of seed 0 on the same split (results/quality.json), if recorded:
    the baseline trained here follows its recipe, so the two should agree."""
    path = RESULTS_DIR / "quality.json"
    key = {"criteo-10k": "criteo"}.get(name, name)
    if not path.exists():
        return None
    for cell in json.loads(path.read_text()).get("cells", []):
        if cell.get("dataset") == key and cell.get("backbone") == "DeepFM":
            for run in cell.get("runs", []):
                if run.get("seed") == 0 and "baseline" in run:
                    return {k: run["baseline"][k] for k in ("val_auc", "test_auc")}
    return None


def sweep(spec: ModelSpec, zipf: float | None, factors: tuple[float, ...] = SWEEP_FACTORS) -> dict:
    """The best fp32 PIM configuration against host-only serving of ``spec`` as its tables grow."""
    rows = table_size_sweep(spec, pim_configs(), factors, zipf=zipf)
    return {"access": "uniform" if zipf is None else f"zipf {zipf}", "rows": rows,
            "crossover": {m: crossover(rows, m) for m in ("latency_ratio", "energy_ratio")},
            "crossover_both": crossover(rows, "latency_ratio", best="both")}


def run_dataset(name: str, args: argparse.Namespace, root: Path) -> dict:
    rel, fmt, batch, epochs = DATASETS[name]
    run = root / name
    start = time.perf_counter()
    config = parse_run_config([
        "supernet", "--data", str(shared_data_dir() / rel), "--format", fmt, "--dim", "16",
        "--dnn", ",".join(map(str, QUALITY_DNN)), "--epochs", str(epochs), "--batch-size", str(batch),
        "--out", str(run), "--quiet", "--seed", str(args.seed), "--threads", "1"])
    metrics = train_supernet(run, config, SupernetConfig(dim_choices=(2, 4, 8, 16), sandwich=SANDWICH))
    supernet_s = time.perf_counter() - start
    trained = train_standalone(run, stage="pim_baseline", batch_size=BASELINE_BATCH)
    objective = build_objective(StudySettings(run_dir=str(run), finetune_steps=args.finetune_steps,
                                              refit_sweeps=args.refit_sweeps))
    _, dm = load_supernet(str(run))
    test = [dict(b) for b in dm.stream("test")]
    full_test = objective.accuracy(objective.space.full, "fp32", test)
    studies = [study(run, args, trained, test, "data", "the data's own vocabularies")]
    if name.startswith("criteo"):
        studies.append(study(run, args, trained, test, "criteo_real",
                             "Criteo's real vocabularies (33.8M ids), uniform access", CRITEO_REAL))
        studies.append(study(run, args, trained, test, "criteo_real_zipf",
                             f"Criteo's real vocabularies, Zipf({SWEEP_ZIPF}) access", CRITEO_REAL, SWEEP_ZIPF))
    own = sweep(model_spec(objective.space, objective.space.full), None, OWN_FACTORS)  # own shape, grown to 1e5x
    return {"dataset": name, "rows_train": metrics["rows_train"], "dnn": list(QUALITY_DNN),
            "quality_seed0_baseline": quality_baseline(name),
            "supernet": {"epochs": metrics["epochs"], "sandwich": SANDWICH, "batch_size": batch,
                         "val_auc": metrics["val_auc"], "seconds": supernet_s},
            "baseline_trained": {k: trained[k] for k in ("val_auc", "test_auc", "epochs", "batch_size", "seconds")},
            "supernet_full_path": {"val_auc": objective.baseline_auc, "test_auc": full_test},
            "own_sweep": own, "studies": studies}


def criteo_sweeps() -> dict:
    spec = ModelSpec((16,) * 26, CRITEO_CARDINALITIES, dense_dim=13, dnn_hidden=QUALITY_DNN, interaction="fm",
                     field_names=tuple(CRITEO_REAL))
    return {"vocab": "CRITEO_CARDINALITIES (benchmarks/throughput.py), 33.8M ids; uniform 16, DNN "
                     + "-".join(map(str, QUALITY_DNN)) + ", 13 dense, FM, fp32",
            "uniform": sweep(spec, None), "zipf": sweep(spec, SWEEP_ZIPF)}


def _mb(b: float) -> str:
    return f"{b / 1e6:,.1f} MB" if b >= 1e5 else f"{b / 1e3:,.1f} KB"


def _point_cells(p: dict | None) -> str:
    if p is None:
        return "none | - | - | - | -"
    host = p["host_only"]
    return (f"trial {p['number']}: {p['pim_tables']} in PIM, {p['pim']}, dims {','.join(map(str, p['dims']))}, "
            f"widths {','.join(map(str, p['widths']))} | {p['latency_ratio']:.3f} / {p['energy_ratio']:.3f} / "
            f"{p['flops_ratio']:.3f} | {host['latency_ratio']:.3f} / {host['energy_ratio']:.3f} | {p['val_auc']:.4f} | "
            f"{p['test_auc_inherited']:.4f} ({p['delta_inherited']:+.4f}) / {p['test_auc_standalone']:.4f} "
            f"({p['delta_standalone']:+.4f})")


def _crossover_text(c: dict) -> str:
    host, pim = c["host_until"], c["pim_from"]
    if pim is None:
        return "never: the host is at least as cheap at every size"
    if host is None:
        return f"PIM is cheaper at every size (from {_mb(pim['table_bytes'])})"
    return (f"between {_mb(host['table_bytes'])} (host cache serves {host['host_cache_hit_rate']:.0%}) and "
            f"{_mb(pim['table_bytes'])} (serves {pim['host_cache_hit_rate']:.0%}; best PIM: latency "
            f"{pim['latency_ratio']:.3f}, energy {pim['energy_ratio']:.3f}, {pim['config']})")


def write_markdown(path: Path, payload: dict) -> None:
    t = payload["target"]
    lines = ["# PIM co-design (supernet x analytic PIM cost model)", "",
             f"TORS target: a point within {t['auc_tolerance']} test AUC of the baseline with FLOPs ratio <= "
             f"{t['flops_ratio']:.2f}, energy ratio <= {t['energy_ratio']:.2f}, latency ratio <= "
             f"{t['latency_ratio']:.2f}. Baseline: uniform dim 16, DNN {'-'.join(map(str, QUALITY_DNN))} (the quality "
             f"benchmark's), trained on its own on the same split (batch {payload['baseline_batch_size']}, "
             f"{payload['baseline_epochs']} epochs, best epoch by validation AUC), served host-only in fp32. Reported "
             "points are chosen on validation AUC only (highest among front points within the cost ratios; "
             "`PIM pays`: among those with a table in PIM that beat their own shape served host-only), then tested "
             f"with the supernet's weights (each candidate's first-order weights refit with "
             f"{payload.get('refit_sweeps', 0)} Newton sweeps, `ihas pim --refit-sweeps`, then its whole sub-network "
             f"fine-tuned {payload['finetune_steps']} steps before scoring, `ihas pim --finetune-steps`) and "
             "retrained on their own with the baseline's recipe. Costs are ratios under "
             "the analytic model of `ihas_lightning/pim/cost_model.py` (not a simulator), which counts the host's "
             "last-level cache. The Criteo rows costed at the real vocabularies take their AUCs from the 10k-row "
             "sample at hand (1,000 test rows: differences of a few thousandths are within its noise).", "",
             "## Baselines", "", "| data | train rows | tables (fp32) | trained uniform-16: val / test AUC | "
             "supernet full path, supernet-scored: val / test AUC | quality benchmark's uniform-16, seed 0 |",
             "|---|---|---|---|---|---|"]
    for r in payload["results"]:
        b, f = r["baseline_trained"], r["supernet_full_path"]
        q = r["quality_seed0_baseline"]
        lines.append(f"| {r['dataset']} | {r['rows_train']} | {_mb(r['own_sweep']['rows'][0]['table_bytes'])} | "
                     f"{b['val_auc']:.4f} / {b['test_auc']:.4f} | {f['val_auc']:.4f} / {f['test_auc']:.4f} | "
                     + ("-" if q is None else f"{q['val_auc']:.4f} / {q['test_auc']:.4f}") + " |")
    lines += ["", "## Studies", "", "Front columns: points; with a table in PIM; of those, beating their own shape "
              "served host-only (same precision and batch size); the verdict. `any`: the reported point among all "
              "front points within the cost ratios; `PIM pays`: among those where PIM beats the host-only shape.", "",
              "| data | cost side | trials | front: points / PIM / PIM pays / verdict | lowest latency / energy / "
              "FLOPs ratio, PIM points | reported point (chosen on validation) | latency / energy / FLOPs | same "
              "shape host-only: latency / energy | val AUC | test AUC supernet / retrained alone (vs baseline) | "
              "TORS met |", "|" + "---|" * 11]
    for r in payload["results"]:
        for s in r["studies"]:
            low = s["front_summary"]["pim"]["lowest"]
            lows = " / ".join("-" if low[k] is None else f"{low[k]:.3f}"
                              for k in ("latency_ratio", "energy_ratio", "flops_ratio"))
            for key, label in (("chosen", "any"), ("chosen_pim", "PIM pays")):
                met = s["tors_met"] if key == "chosen" else s["tors_met_with_pim"]
                lines.append(f"| {r['dataset']} | {s['cost_vocab']} | {s['trials']} | {s['front_size']} / "
                             f"{s['front_pim_points']} / {s['front_pim_beats_host']} / {s['verdict']} | {lows} | "
                             f"{label}: {_point_cells(s[key])} | {'yes' if met else 'no'} |")
    cs = payload["criteo_sweep"]
    lines += ["", "## Where PIM starts to pay: Criteo's shape as its tables grow (cost only)", "",
              f"Shape: {cs['vocab']}. At each size, the best of {len(pim_configs())} fp32 PIM configurations "
              "(devices, units, all tables or the 1/2/4/8 largest in PIM, partitioning, in-memory work, batch "
              "64/256/1024) against host-only serving at the same batch size. No AUC is involved.", "",
              "| access | latency crossover | energy crossover |", "|---|---|---|"]
    for key in ("uniform", "zipf"):
        c = cs[key]["crossover"]
        lines.append(f"| {cs[key]['access']} | {_crossover_text(c['latency_ratio'])} | "
                     f"{_crossover_text(c['energy_ratio'])} |")
    lines += ["", "| factor | tables (fp32) | host cache hit rate (uniform / zipf) | best latency ratio (uniform / "
              "zipf) | best energy ratio (uniform / zipf) | best config for both, uniform |",
              "|---|---|---|---|---|---|"]
    for u, z in zip(cs["uniform"]["rows"], cs["zipf"]["rows"]):
        lines.append(f"| {u['factor']:.0e} | {_mb(u['table_bytes'])} | {u['host_cache_hit_rate']:.2f} / "
                     f"{z['host_cache_hit_rate']:.2f} | {u['latency']['latency_ratio']:.3f} / "
                     f"{z['latency']['latency_ratio']:.3f} | {u['energy']['energy_ratio']:.3f} / "
                     f"{z['energy']['energy_ratio']:.3f} | {u['both']['config']} |")
    lines += ["", "## The data sets' own shapes, grown (cost only, uniform access)", "",
              "| data | at its own size: best latency / energy ratio | latency crossover | energy crossover |",
              "|---|---|---|---|"]
    for r in payload["results"]:
        own = r["own_sweep"]
        first = own["rows"][0]
        lines.append(f"| {r['dataset']} | {first['latency']['latency_ratio']:.3f} / "
                     f"{first['energy']['energy_ratio']:.3f} | {_crossover_text(own['crossover']['latency_ratio'])} | "
                     f"{_crossover_text(own['crossover']['energy_ratio'])} |")
    for r in payload["results"]:
        for s in r["studies"]:
            shown = s["front"][:15]
            lines += ["", f"## {r['dataset']}, {s['cost_vocab']}: front by validation AUC ({len(shown)} of "
                      f"{s['front_size']})", "",
                      "| trial | val AUC | tables in PIM | latency | energy | FLOPs | same shape host-only: latency / "
                      "energy | PIM pays | PIM configuration |", "|---|---|---|---|---|---|---|---|---|"]
            lines += [f"| {p['number']} | {p['val_auc']:.4f} | {p['pim_tables']} | {p['latency_ratio']:.3f} | "
                      f"{p['energy_ratio']:.3f} | {p['flops_ratio']:.3f} | {p['host_only']['latency_ratio']:.3f} / "
                      f"{p['host_only']['energy_ratio']:.3f} | {'yes' if p['pim_beats_host'] else 'no'} | {p['pim']} |"
                      for p in shown]
            lines.append(f"- {s['trials']} trials ({s['sampler']}), {s['seconds']:.0f} s; states {s['trial_states']}")
        lines.append(f"- supernet: {r['supernet']['epochs']} epochs, sandwich {r['supernet']['sandwich']}, "
                     f"batch {r['supernet']['batch_size']}, "
                     f"{r['supernet']['seconds']:.0f} s; baseline trained alone in "
                     f"{r['baseline_trained']['seconds']:.0f} s")
    lines += ["", f"- machine: {payload['machine']['cpu']}, {payload['machine']['torch_threads']} torch thread(s); "
              f"{payload['seconds']:.0f} s in all; command: {payload['command']}"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help="comma-separated: " + ", ".join(DATASETS))
    parser.add_argument("--trials", type=int, default=120)
    parser.add_argument("--sampler", default="tpe", choices=("tpe", "nsga2", "gp"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--finetune-steps", type=int, default=10,
                        help="fine-tune steps of each candidate's whole sub-network before scoring (0: inherited)")
    parser.add_argument("--refit-sweeps", type=int, default=REFIT_SWEEPS,
                        help="first-order refit sweeps of each candidate before the fine-tune (0: none)")
    parser.add_argument("--out", default=None, help="run directory (default: a temporary one)")
    parser.add_argument("--json", default=str(RESULTS_DIR / "pim_pareto.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    root = Path(args.out or tempfile.mkdtemp(prefix="ihas_pim_"))
    start = time.perf_counter()
    results = [run_dataset(name.strip(), args, root) for name in args.datasets.split(",") if name.strip()]
    payload = {"benchmark": "pim_pareto", "date": now_iso(), "machine": machine_info(),
               "target": {"auc_tolerance": AUC_TOLERANCE, **TORS_LIMITS}, "baseline_epochs": DEFAULT_EPOCHS,
               "baseline_batch_size": BASELINE_BATCH, "finetune_steps": args.finetune_steps,
               "refit_sweeps": args.refit_sweeps,
               "command": "python benchmarks/pim_pareto.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "results": results, "criteo_sweep": criteo_sweeps(), "seconds": time.perf_counter() - start}
    path = write_json(args.json, payload)
    write_markdown(Path(path).with_suffix(".md"), payload)
    print(f"wrote {path} and {Path(path).with_suffix('.md')} ({payload['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

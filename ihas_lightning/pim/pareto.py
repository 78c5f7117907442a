"""The Pareto front of a PIM co-design study, written as JSON, Markdown, a PNG and TensorBoard hparams.

``DIR/pim/pareto.json``: ``{"study", "storage", "trials": {state: count}, "baseline_auc", "baseline_trained_auc",
"baseline_trained_test_auc", "front_size", "front_pim_points", "selection", "points": [...]}``; each point has
``number``, ``auc`` (validation, inherited weights), ``latency_ratio``, ``energy_ratio``, ``flops_ratio``,
``dims`` (per field), ``widths`` (DNN units), ``pim`` (the configuration), ``pim_tables`` (embedding tables it
places in PIM: 0 is host-only serving, whatever the device), ``host_only`` (the ratios of the same
sub-architecture at the same precision and batch size with every table on the host: what the shape gains
without PIM), ``pim_beats_host`` (it has a table in PIM and beats ``host_only`` on latency or energy without
losing on the other) and ``params`` (the trial's raw parameters).
``baseline_auc`` is the supernet's full path (inherited weights); ``baseline_trained_auc`` a uniform model of the
same shape trained on its own on the same split (validation; ``_test_auc``: test), when one was trained.
``selection`` holds the reported points, chosen on validation only (:func:`choose_point`): ``chosen`` among all
front points, ``chosen_pim`` among those where PIM pays (:func:`beats_host`); ``front`` counts the front's points,
those with a table in PIM and those where PIM pays, with a verdict ("host only" when PIM never pays). The study
itself stays readable by optuna-dashboard: ``optuna-dashboard sqlite:///DIR/pim/study.db``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna

from .cost_model import estimate
from .search_space import SearchSpace, describe, model_spec
from .study import candidate_of

__all__ = ["pareto_points", "write_outputs", "write_markdown", "plot_front", "dashboard_command", "choose_point",
           "TORS_LIMITS", "pim_tables", "front_summary", "host_only", "beats_host"]

#: The cost side of NASRec's journal extension (ACM TORS, arXiv 2411.07569): 2x fewer FLOPs, 1.8x less energy,
#: 1.5x the performance of the baseline, as ratios candidate / baseline.
TORS_LIMITS = {"flops_ratio": 1 / 2, "energy_ratio": 1 / 1.8, "latency_ratio": 1 / 1.5}


def host_only(space: SearchSpace, candidate: object) -> dict[str, float]:
    """Latency and energy ratios of the candidate's sub-architecture served host-only, at its precision and batch
    size, against the study's baseline: the same AUC without PIM (a PIM point is a PIM result only if it beats
    this)."""
    config = candidate.config
    base = estimate(model_spec(space, space.full), space.baseline_config(config.batch_size))
    host = estimate(model_spec(space, candidate.subarch),
                    space.baseline_config(config.batch_size).with_(precision=config.precision))
    return {"latency_ratio": host.latency_s_per_batch / base.latency_s_per_batch,
            "energy_ratio": host.energy_j_per_sample / base.energy_j_per_sample}


def beats_host(point: Mapping[str, Any]) -> bool:
    """A point with a table in PIM that is cheaper than its own shape served host-only: lower latency or energy
    ratio, and not higher on the other."""
    host = point.get("host_only")
    if not host or not point.get("pim_tables"):
        return False
    pairs = [(point[k], host[k]) for k in ("latency_ratio", "energy_ratio")]
    return all(a <= b for a, b in pairs) and any(a < b for a, b in pairs)


def pim_tables(space: SearchSpace, candidate: object) -> int:
    """How many of the candidate's embedding tables (dims > 0) the configuration places in PIM."""
    spec = model_spec(space, candidate.subarch)
    placement = candidate.config.placement_for(spec)
    return sum(placement[i] == "pim" for i in spec.active_fields)


def choose_point(points: Sequence[dict], limits: Mapping[str, float] | None = None,
                 require_pim: bool = False) -> dict | None:
    """The reported point, chosen on validation only: among front points with every ratio of ``limits`` at or
    below its limit (and, with ``require_pim``, a table in PIM that pays: :func:`beats_host`), the highest
    validation ``auc`` (ties: lower latency, then energy ratio, then trial number). None when no point qualifies."""
    limits = limits or {}
    fits = [p for p in points if all(p[k] <= v for k, v in limits.items()) and (not require_pim or beats_host(p))]
    return min(fits, key=lambda p: (-p["auc"], p["latency_ratio"], p["energy_ratio"], p["number"])) if fits else None


def dashboard_command(storage_url: str) -> str:
    """How to open the study in optuna-dashboard (it takes an RDB URL, or a journal file's path)."""
    return f"optuna-dashboard {storage_url.removeprefix('journal:')}"


def pareto_points(study: optuna.Study, space: SearchSpace | None = None) -> list[dict[str, Any]]:
    """The feasible non-dominated trials (Optuna's ``best_trials`` honors constraints), best AUC first."""
    points = []
    for trial in study.best_trials:
        attrs = trial.user_attrs
        arch = attrs["arch"]
        point = {"number": trial.number, "auc": trial.values[0], "latency_ratio": trial.values[1],
                 "energy_ratio": trial.values[2], "flops_ratio": attrs.get("flops_ratio"),
                 "dims": dict(zip(space.fields, arch["dims"])) if space else arch["dims"],
                 "widths": arch["widths"], "cost": attrs.get("cost"), "params": dict(trial.params)}
        if space is not None:
            candidate = candidate_of(space, trial.params)
            point["pim"] = {k: v for k, v in candidate.config.__dict__.items()}
            point["pim_tables"] = pim_tables(space, candidate)
            point["host_only"] = host_only(space, candidate)
            point["pim_beats_host"] = beats_host(point)
        else:
            point["pim"] = {k: trial.params.get(k) for k in ("device", "unit_share", "placement", "pim_top_k",
                                                            "precision", "partitioning", "in_memory", "batch_size")}
            point["pim"]["num_units"] = arch["num_units"]
        points.append(point)
    return sorted(points, key=lambda p: (-p["auc"], p["latency_ratio"], p["number"]))


def write_markdown(path: Path, points: Sequence[dict], title: str, notes: Sequence[str] = ()) -> None:
    header = ["#", "val AUC", "latency ratio", "energy ratio", "FLOPs ratio", "tables in PIM", "dims", "widths",
              "PIM configuration"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        dims = p["dims"].values() if isinstance(p["dims"], dict) else p["dims"]
        lines.append(f"| {p['number']} | {p['auc']:.4f} | {p['latency_ratio']:.3f} | {p['energy_ratio']:.3f} | "
                     f"{p['flops_ratio']:.3f} | {p.get('pim_tables', '-')} | {','.join(map(str, dims))} | "
                     f"{','.join(map(str, p['widths']))} | "
                     f"{describe(p['params'])} |")
    lines += [""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")


def plot_front(path: Path, study: optuna.Study, points: Sequence[dict], baseline_auc: float | None,
               trained_auc: float | None = None) -> None:
    """AUC against latency ratio: every complete trial in gray, the front colored by energy ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter([t.values[1] for t in done], [t.values[0] for t in done], s=8, c="lightgrey", label="trials")
    if points:
        sc = ax.scatter([p["latency_ratio"] for p in points], [p["auc"] for p in points],
                        c=[p["energy_ratio"] for p in points], cmap="viridis", s=28, edgecolors="k", linewidths=0.4,
                        label="Pareto front")
        fig.colorbar(sc, ax=ax, label="energy ratio (vs baseline)")
    if baseline_auc is not None:
        ax.scatter([1.0], [baseline_auc], marker="*", s=160, c="red", label="supernet full path (host, fp32)")
    if trained_auc is not None:
        ax.scatter([1.0], [trained_auc], marker="P", s=120, c="black", label="baseline trained on its own")
    ax.set_xlabel("latency ratio (vs baseline, same batch size)")
    ax.set_ylabel("validation AUC (supernet, inherited weights)")
    ax.set_title(f"PIM co-design: {study.study_name}")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _tensorboard(out: Path, points: Sequence[dict]) -> None:
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(out / "tensorboard")) as writer:
        for p in points:
            hparams = {k: v for k, v in p["params"].items() if isinstance(v, (int, float, str, bool))}
            hparams["widths"] = ",".join(map(str, p["widths"]))
            metrics = {f"pim/{k}": float(p[k]) for k in ("auc", "latency_ratio", "energy_ratio", "flops_ratio")}
            writer.add_hparams(hparams, metrics, run_name=f"trial_{p['number']}")


def front_summary(points: Sequence[dict], limits: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Front points overall and with at least one table in PIM, kept apart: how many, each ratio's lowest value,
    and how many are within every cost limit (``limits``, default :data:`TORS_LIMITS`); how many PIM points beat
    their own shape served host-only (:func:`beats_host`), and the verdict: "host only" when none does."""
    limits = TORS_LIMITS if limits is None else limits

    def part(group: Sequence[dict]) -> dict[str, Any]:
        lowest = {k: min((p[k] for p in group), default=None) for k in ("latency_ratio", "energy_ratio", "flops_ratio")}
        return {"points": len(group), "lowest": lowest,
                "within_limits": sum(all(p[k] <= v for k, v in limits.items()) for p in group)}

    pim = [p for p in points if (p.get("pim_tables") or 0) > 0]
    beating = sum(beats_host(p) for p in pim)
    return {"all": part(points), "pim": part(pim), "pim_beats_host": beating,
            "verdict": "PIM" if beating else "host only", "limits": dict(limits)}


def write_outputs(study: optuna.Study, out: str | Path, space: SearchSpace | None = None,
                  storage_url: str = "", tensorboard: bool = True, baseline_trained: Mapping[str, Any] | None = None,
                  limits: Mapping[str, float] | None = None) -> dict[str, Any]:
    """pareto.json, pareto.md, pareto.png and TensorBoard hparams of the front into ``out``.

    ``baseline_trained``: the metrics of a uniform model trained on the run's split (``val_auc``, ``test_auc``;
    :func:`~ihas_lightning.pim.standalone.train_standalone`). ``limits``: the cost ratios a reported point must
    stay within (default :data:`TORS_LIMITS`; ``{}`` for none); the point is chosen on validation AUC.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    limits = TORS_LIMITS if limits is None else dict(limits)
    points = pareto_points(study, space)
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    baseline_auc = study.user_attrs.get("baseline_auc")
    trained = dict(baseline_trained or {})
    failed = [{"number": t.number, "error": t.user_attrs.get("error")}
              for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))]
    summary = front_summary(points, limits)
    selection = {"rule": "highest validation AUC among front points within the cost limits (chosen_pim: among those "
                         "with a table in PIM that beat their own shape served host-only); test data is never read",
                 "limits": limits,
                 "chosen": choose_point(points, limits), "chosen_pim": choose_point(points, limits, require_pim=True)}
    report = {"study": study.study_name, "storage": storage_url, "trials": dict(states), "baseline_auc": baseline_auc,
              "baseline_trained_auc": trained.get("val_auc"), "baseline_trained_test_auc": trained.get("test_auc"),
              "objectives": {"auc": "maximize (validation, inherited weights)", "latency_ratio": "minimize",
                             "energy_ratio": "minimize"}, "front_size": len(points),
              "front_pim_points": summary["pim"]["points"] if space is not None else None, "front": summary,
              "selection": selection, "points": points, "failed": failed}
    (out / "pareto.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    notes = [f"trials: {dict(states)}; baseline (full supernet, uniform dims, full widths, host-only fp32) "
             f"validation AUC {baseline_auc:.4f}" if baseline_auc is not None else f"trials: {dict(states)}"]
    if trained.get("val_auc") is not None:
        notes.append(f"baseline trained on its own (same shape, same split): validation AUC {trained['val_auc']:.4f}"
                     + (f", test AUC {trained['test_auc']:.4f}" if trained.get("test_auc") is not None else ""))
    if space is not None:
        notes.append(f"{summary['pim']['points']} of {len(points)} front points put a table in PIM (the others serve "
                     f"every table from the host); {summary['pim_beats_host']} of them beat their own shape served "
                     "host-only" + ("" if summary["pim_beats_host"] else ": on these tables the answer is host-only "
                                    "serving, and the front's gains come from the smaller shapes, not from PIM"))
    for key, what in (("chosen", "front point"), ("chosen_pim", "front point where PIM pays")):
        point = selection[key]
        notes.append(f"reported {what} (highest validation AUC within {limits}): "
                     + (f"trial {point['number']}" if point else "none qualifies"))
    notes += ["ratios are candidate / baseline under the analytic cost model (a model, not a simulator)",
              f"dashboard: {dashboard_command(storage_url or '<storage>')}"]
    write_markdown(out / "pareto.md", points, f"PIM co-design Pareto front ({study.study_name})", notes)
    plot_front(out / "pareto.png", study, points, baseline_auc, trained.get("val_auc"))
    if tensorboard and points:
        _tensorboard(out, points)
    return report

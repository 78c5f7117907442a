"""The Pareto front of a PIM co-design study, written as JSON, Markdown, a PNG and TensorBoard hparams.

``DIR/pim/pareto.json``: ``{"study", "storage", "trials": {state: count}, "baseline_auc", "points": [...]}``;
each point has ``number``, ``auc``, ``latency_ratio``, ``energy_ratio``, ``flops_ratio``, ``dims`` (per
field), ``widths`` (DNN units), ``pim`` (the configuration) and ``params`` (the trial's raw parameters).
The study itself stays readable by optuna-dashboard: ``optuna-dashboard sqlite:///DIR/pim/study.db``.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from .search_space import SearchSpace, describe
from .study import candidate_of

__all__ = ["pareto_points", "write_outputs", "write_markdown", "plot_front", "dashboard_command"]


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
            config = candidate_of(space, trial.params).config
            point["pim"] = {k: v for k, v in config.__dict__.items()}
        else:
            point["pim"] = {k: trial.params.get(k) for k in ("device", "unit_share", "placement", "pim_top_k",
                                                            "precision", "partitioning", "in_memory", "batch_size")}
            point["pim"]["num_units"] = arch["num_units"]
        points.append(point)
    return sorted(points, key=lambda p: (-p["auc"], p["latency_ratio"], p["number"]))


def write_markdown(path: Path, points: Sequence[dict], title: str, notes: Sequence[str] = ()) -> None:
    header = ["#", "AUC", "latency ratio", "energy ratio", "FLOPs ratio", "dims", "widths", "PIM configuration"]
    lines = [f"# {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for p in points:
        dims = p["dims"].values() if isinstance(p["dims"], dict) else p["dims"]
        lines.append(f"| {p['number']} | {p['auc']:.4f} | {p['latency_ratio']:.3f} | {p['energy_ratio']:.3f} | "
                     f"{p['flops_ratio']:.3f} | {','.join(map(str, dims))} | {','.join(map(str, p['widths']))} | "
                     f"{describe(p['params'])} |")
    lines += [""] + [f"- {n}" for n in notes]
    path.write_text("\n".join(lines) + "\n")


def plot_front(path: Path, study: optuna.Study, points: Sequence[dict], baseline_auc: float | None) -> None:
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
        ax.scatter([1.0], [baseline_auc], marker="*", s=160, c="red", label="baseline (full, host, fp32)")
    ax.set_xlabel("latency ratio (vs baseline, same batch size)")
    ax.set_ylabel("AUC (supernet, inherited weights)")
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


def write_outputs(study: optuna.Study, out: str | Path, space: SearchSpace | None = None,
                  storage_url: str = "", tensorboard: bool = True) -> dict[str, Any]:
    """pareto.json, pareto.md, pareto.png and TensorBoard hparams of the front into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = pareto_points(study, space)
    states = Counter(t.state.name for t in study.get_trials(deepcopy=False))
    baseline_auc = study.user_attrs.get("baseline_auc")
    failed = [{"number": t.number, "error": t.user_attrs.get("error")}
              for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))]
    report = {"study": study.study_name, "storage": storage_url, "trials": dict(states), "baseline_auc": baseline_auc,
              "objectives": {"auc": "maximize (validation, inherited weights)", "latency_ratio": "minimize",
                             "energy_ratio": "minimize"}, "points": points, "failed": failed}
    (out / "pareto.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    notes = [f"trials: {dict(states)}; baseline (full supernet, uniform dims, full widths, host-only fp32) "
             f"validation AUC {baseline_auc:.4f}" if baseline_auc is not None else f"trials: {dict(states)}",
             "ratios are candidate / baseline under the analytic cost model (a model, not a simulator)",
             f"dashboard: {dashboard_command(storage_url or '<storage>')}"]
    write_markdown(out / "pareto.md", points, f"PIM co-design Pareto front ({study.study_name})", notes)
    plot_front(out / "pareto.png", study, points, baseline_auc)
    if tensorboard and points:
        _tensorboard(out, points)
    return report

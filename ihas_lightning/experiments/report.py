"""``ihas report``: a Markdown report with plots for one run directory."""

from __future__ import annotations

import json
from pathlib import Path

from ..flops import format_flops
from ..footprint_dims import width_label
from ..pipeline.selection import selection_message

__all__ = ["write_report"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _dims_heatmap(dims: dict[str, dict[str, int]], path: Path) -> None:
    plt = _plt()
    groups = sorted(dims, key=int)
    fields = list(dims[groups[0]])
    values = [[dims[g][f] for f in fields] for g in groups]
    figure, axis = plt.subplots(figsize=(1.5 + 0.45 * len(fields), 1.2 + 0.45 * len(groups)))
    image = axis.imshow(values, cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(fields)), fields, rotation=60, fontsize=7)
    axis.set_yticks(range(len(groups)), [f"group {g}" for g in groups], fontsize=8)
    for row, line in enumerate(values):
        for column, value in enumerate(line):
            axis.text(column, row, str(value), ha="center", va="center", fontsize=6, color="white")
    axis.set_title("embedding dimension per group and field")
    figure.colorbar(image, ax=axis)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _group_sizes(sizes: list[int], path: Path) -> None:
    plt = _plt()
    figure, axis = plt.subplots(figsize=(4, 3))
    axis.bar([str(i) for i in range(len(sizes))], sizes, color="tab:blue")
    axis.set_xlabel("group")
    axis.set_ylabel("training samples")
    axis.set_title("group sizes")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _footprint(m: dict) -> int:
    return int(m.get("footprint_params") or m["embedding_params"])


def _auc_vs_params(metrics: dict, path: Path) -> None:
    """Test AUC against the footprint (tables + router) of every model the run trained."""
    plt = _plt()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    uniform = [metrics["baseline"]] + ([metrics["baseline_matched"]] if "baseline_matched" in metrics else [])
    uniform.sort(key=_footprint)
    axis.plot([_footprint(m) for m in uniform], [m["test_auc"] for m in uniform], "o--",
              color="tab:gray", label="uniform dimension")
    for m in uniform:
        axis.annotate(f"d={m['dim']}" if m.get("dim") is not None else width_label(m),
                      (_footprint(m), m["test_auc"]), fontsize=7)
    for key, marker, color, label in (("baseline_mde", "s", "tab:green", "mixed dims by frequency"),
                                      ("fieldwise", "D", "tab:blue", "field-wise (one group)")):
        if key in metrics:
            axis.plot([_footprint(metrics[key])], [metrics[key]["test_auc"]], marker, color=color, label=label)
    axis.plot([_footprint(metrics["ihas"])], [metrics["ihas"]["test_auc"]], "*", markersize=12,
              color="tab:red", label="iHAS")
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    axis.xaxis.set_major_locator(MaxNLocator(5))
    axis.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:,.0f}"))
    axis.set_xlabel("footprint (tables + router parameters)")
    axis.set_ylabel("test AUC")
    axis.legend(fontsize=7)
    axis.set_title(f"{metrics['backbone']} on {Path(str(metrics['dataset'])).name}")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _row(name: str, m: dict) -> str:
    """A table row; a run from before the router was counted has no router and a footprint of its tables."""
    def count(value: int | None) -> str:
        return "-" if value is None else f"{int(value):,}"

    val = "-" if m.get("val_auc") is None else f"{m['val_auc']:.4f}"
    return (f"| {name} | {val} | {m['test_auc']:.4f} | {m['test_logloss']:.4f} | {count(m['embedding_params'])} | "
            f"{count(m.get('router_params', 0))} | {count(m.get('footprint_params', m['embedding_params']))} | "
            f"{format_flops(m['flops_per_sample'])} |")


def write_report(run_dir: str | Path) -> Path:
    """Write ``DIR/report.md`` and its PNG plots from ``DIR/metrics.json``; returns the report's path."""
    root = Path(run_dir)
    metrics_path = root / "metrics.json"
    if not metrics_path.exists():
        raise FileNotFoundError(f"{metrics_path} is missing: finish the run first (`ihas run --out {root}`)")
    metrics = json.loads(metrics_path.read_text())
    _dims_heatmap(metrics["ihas"]["dims"], root / "dims_heatmap.png")
    _group_sizes(metrics["ihas"]["group_sizes"], root / "group_sizes.png")
    _auc_vs_params(metrics, root / "auc_vs_params.png")
    rows = [("uniform d=%d" % metrics["baseline"]["dim"], metrics["baseline"])]
    if "baseline_matched" in metrics:
        rows.append((width_label(metrics["baseline_matched"]) + " (footprint-matched)", metrics["baseline_matched"]))
    if "baseline_mde" in metrics:
        rows.append(("mixed dims by frequency (footprint-matched)", metrics["baseline_mde"]))
    if "fieldwise" in metrics:
        rows.append(("field-wise (one group)", metrics["fieldwise"]))
    rows.append((f"iHAS, {metrics['ihas']['groups']} groups", metrics["ihas"]))
    table = "\n".join(_row(name, m) for name, m in rows)
    kept = f"\n{selection_message(metrics['selection'])}.\n" if "selection" in metrics else ""
    search = metrics["search"]
    text = f"""# iHAS run: {metrics['backbone']} on {metrics['dataset']}

| model | val AUC | test AUC | test logloss | tables | router | footprint | FLOPs/sample |
|---|---|---|---|---|---|---|---|
{table}
{kept}
Search: validation AUC {search['val_auc']:.4f}, mean active dimensions {search['mean_active_dims']['overall']:.2f},
{search['distinct_masks']} distinct masks on validation data.

Stage seconds: {', '.join(f'{k} {v:.0f}' for k, v in metrics['seconds'].items() if v is not None)}.

![test AUC against footprint](auc_vs_params.png)

![dimensions per group and field](dims_heatmap.png)

![group sizes](group_sizes.png)

Footprint: the tables as stored plus everything routing needs (the model a user ships). FLOPs per sample: what
executes, each group's compact model weighted by the share of test samples routed to it, plus the router.
"""
    report = root / "report.md"
    report.write_text(text)
    return report

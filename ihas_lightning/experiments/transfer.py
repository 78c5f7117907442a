"""Transferability: a run's searched groups and dimensions on other backbones.

A run searched on backbone A. For every target backbone B this retrains A's groups (the searched router and
the per-group dimensions) on B, and trains B at a uniform dimension (the search's by default) and at
per-field widths with iHAS's whole footprint (tables + router; every field ``d`` or ``d + 1`` columns,
:func:`~ihas_lightning.footprint_dims.matched_field_dims`: "matched"), all on the run's own split::

    DIR/transfer/<B>/seed<k>/ihas/       retrained groups (TensorBoard, checkpoints, metrics.json)
    DIR/transfer/<B>/seed<k>/uniform16/  B at the uniform dimension
    DIR/transfer/<B>/seed<k>/matched/    B at iHAS's footprint
    DIR/transfer/transfer.json, transfer.md, transfer.png

Seeds. The split comes from the run's ``seed`` (``run.json``) and never changes here; seed ``k`` is the
*model seed*: weight initialization and the order of training batches. A stage whose ``metrics.json``
exists is done and is not redone.

One start, one schedule. The three variants of a target differ only in their dimensions: each starts its
embedding and first-order tables from the search's trained tables, cut to its own widths (iHAS: each field at
its widest group's width; uniform: the first ``uniform_dim`` columns; matched: the first ``d``/``d + 1``), its
dense layers fresh (on the searched backbone too), and each trains for the run's ``baseline_epochs`` at its
``lr``. So the search's epochs count for every variant alike, and no variant inherits trained dense layers.
See docs/design.md#7-transferability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..backbones import check_backbone_name
from ..data.datamodule import CTRDataModule
from ..footprint_dims import matched_field_dims, width_label
from ..pipeline import RunDirectory, embedding_rows, stage_baseline, stage_retrain
from ..pipeline.search import load_searched_module
from ..run_config import RunConfig
from ..training import datamodule_from_config, write_json

__all__ = ["TransferConfig", "check_backbones", "run_transfer", "summarize", "VARIANTS", "METRICS"]

VARIANTS = ("ihas", "uniform", "matched")
METRICS = ("test_auc", "test_logloss")


def check_backbones(names: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Target backbones, checked before any training: unsupported and unknown names fail with the reason."""
    if not names:
        raise ValueError("--backbones needs at least one DeepCTR-Torch model")
    for name in names:
        check_backbone_name(name, refusal="cannot be a transfer target")
    if len(set(names)) != len(names):
        raise ValueError(f"--backbones lists a model twice: {', '.join(names)}")
    return tuple(names)


@dataclass(frozen=True)
class TransferConfig:
    """What ``ihas transfer`` trains.

    Args:
        backbones: target DeepCTR-Torch models (see ``BACKBONES``).
        seeds: model seeds ``0 .. seeds-1`` (initialization and batch order; the split stays the run's).
        uniform_dim: the uniform baseline's dimension; None (default): the search's. It starts from the
            searched tables' first columns, so it cannot exceed the search's dimension.
    """

    backbones: tuple[str, ...]
    seeds: int = 3
    uniform_dim: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "backbones", check_backbones(tuple(self.backbones)))
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.uniform_dim is not None and self.uniform_dim < 1:
            raise ValueError(f"uniform_dim must be >= 1, got {self.uniform_dim}")

    def stage(self, backbone: str, seed: int, variant: str, uniform_dim: int) -> str:
        name = f"uniform{uniform_dim}" if variant == "uniform" else variant
        return f"transfer/{backbone}/seed{seed}/{name}"


def _seeded(config: RunConfig, dm: CTRDataModule, model_seed: int) -> tuple[RunConfig, CTRDataModule]:
    """The run's config and split with ``model_seed`` for initialization and batch order only, and the
    baselines' schedule for the retrained groups too (module docstring)."""
    seeded_config = replace(config, model=replace(config.model, seed=model_seed),
                            retrain=replace(config.retrain, epochs=config.baseline_epochs, lr=config.model.lr))
    seeded = CTRDataModule.from_encoded(dm.splits, dm.encoder, batch_size=dm.batch_size, seed=model_seed,
                                        eval_batch_size=dm.eval_batch_size)
    return seeded_config, seeded


def _stats(values: list[float]) -> dict:
    """Mean and sample standard deviation (ddof=1; None for one seed) over seeds."""
    array = np.asarray(values, dtype=float)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else None,
            "per_seed": [float(v) for v in array]}


def _finite(value: float | None) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def summarize(runs: list[dict], dim: int | None) -> dict:
    """One variant of one backbone: mean/std over seeds of the metrics, and its size (same for every seed)."""
    return {"dim": dim, **{m: _stats([r[m] for r in runs]) for m in METRICS},
            "embedding_params": int(runs[0]["embedding_params"]),
            "footprint_params": int(runs[0].get("footprint_params", runs[0]["embedding_params"])),
            "dims": runs[0].get("dims"),
            "flops_per_sample": _finite(runs[0]["flops_per_sample"]), "seeds": [r["model_seed"] for r in runs]}


def run_transfer(run_dir: str | Path, config: TransferConfig, quiet: bool | None = None) -> dict:
    """Train every (backbone, seed, variant) not yet done; write ``transfer.json``, ``.md`` and ``.png``."""
    run = RunDirectory(run_dir)
    config_run = run.load_config(quiet=quiet)  # None: as the run was started
    clusters = run.stage("cluster") / "clusters.json"
    if not clusters.exists():
        raise FileNotFoundError(f"{clusters} is missing: finish the search and clustering first (`ihas run`)")
    search_state = load_searched_module(run).state_dict()          # every variant's tables start from these
    search_dim = config_run.model.dim
    uniform_dim = config.uniform_dim or search_dim
    if uniform_dim > search_dim:
        raise ValueError(f"--uniform-dim {uniform_dim} exceeds the search's dimension {search_dim}: the uniform "
                         "baseline starts from the searched tables' first columns")
    dm = datamodule_from_config(config_run.data, config_run.trainer.threads)  # the run's split, for every stage
    fields = dm.schema.embedded_fields
    rows_total = embedding_rows(dm.vocab_sizes)
    rows = []
    for backbone in config.backbones:
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        for seed in range(config.seeds):
            seeded_config, seeded = _seeded(config_run, dm, seed)
            stage = {v: config.stage(backbone, seed, v, uniform_dim) for v in VARIANTS}
            ihas = stage_retrain(run, seeded_config, seeded, backbone=backbone, stage=stage["ihas"], tables_only=True)
            matched = matched_field_dims(ihas["footprint_params"], dm.vocab_sizes, fields)
            found = {"ihas": ihas,
                     "uniform": stage_baseline(run, seeded_config, uniform_dim, stage["uniform"], seeded,
                                               backbone=backbone, init_tables=search_state),
                     "matched": stage_baseline(run, seeded_config, max(matched.values()), stage["matched"], seeded,
                                               backbone=backbone, field_dims=matched, init_tables=search_state)}
            for variant, metrics in found.items():
                runs[variant].append({**metrics, "model_seed": seed})
        rows.append({"backbone": backbone, **{v: summarize(runs[v], runs[v][0].get("dim") if v != "ihas" else None)
                                              for v in VARIANTS}})
    result = {"run": str(run.root), "source_backbone": config_run.model.backbone, "dataset": config_run.data.data,
              "format": config_run.data.format, "split_seed": config_run.data.seed,
              "model_seeds": list(range(config.seeds)), "search_dim": search_dim, "uniform_dim": uniform_dim,
              "epochs": config_run.baseline_epochs, "start": "searched tables cut to each variant's widths",
              "embedding_rows": rows_total, "rows": rows}
    out = run.stage("transfer")
    write_json(out / "transfer.json", result)
    write_markdown(result, out / "transfer.md")
    plot(result, out / "transfer.png")
    return result


def _cell(stats: dict) -> str:
    std = stats["std"]
    return f"{stats['mean']:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def write_markdown(result: dict, path: Path) -> Path:
    """One row per backbone and variant: mean ± std over seeds, footprint (tables + router), FLOPs per sample."""
    names = {"ihas": f"iHAS (searched on {result['source_backbone']})", "uniform": "uniform", "matched": "matched"}
    lines = [f"# Transfer of dimensions searched on {result['source_backbone']}", "",
             f"Data `{result['dataset']}` (split seed {result['split_seed']}); model seeds {result['model_seeds']}; "
             f"mean ± sample std over seeds. Every variant: tables from the {result['start']}, fresh dense layers, "
             f"{result['epochs']} epochs.", "",
             "| backbone | variant | widths | test AUC | test logloss | footprint params | FLOPs/sample |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for variant in VARIANTS:
            entry = row[variant]
            flops = entry["flops_per_sample"]
            widths = "per group" if variant == "ihas" else width_label(entry)
            lines.append(f"| {row['backbone']} | {names[variant]} | {widths} | "
                         f"{_cell(entry['test_auc'])} | {_cell(entry['test_logloss'])} | "
                         f"{entry['footprint_params']:,} | {f'{flops:,.0f}' if flops is not None else 'n/a'} |")
    path.write_text("\n".join(lines) + "\n")
    return path


def plot(result: dict, path: Path) -> Path:
    """Test AUC against embedding parameters: a line per backbone through its uniform models, a star for iHAS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.get_cmap("tab10")
    for index, row in enumerate(result["rows"]):
        color = colors(index % 10)
        uniform = sorted((row["uniform"], row["matched"]), key=lambda e: e["footprint_params"])
        axis.errorbar([e["footprint_params"] for e in uniform], [e["test_auc"]["mean"] for e in uniform],
                      yerr=[e["test_auc"]["std"] or 0.0 for e in uniform], fmt="o--", color=color, capsize=3,
                      label=row["backbone"])
        ihas = row["ihas"]
        axis.errorbar([ihas["footprint_params"]], [ihas["test_auc"]["mean"]], yerr=[ihas["test_auc"]["std"] or 0.0],
                      fmt="*", markersize=13, color=color, capsize=3)
    axis.plot([], [], "k*", markersize=10, label=f"iHAS (searched on {result['source_backbone']})")
    axis.set_xlabel("footprint parameters (tables + router)")
    axis.set_ylabel("test AUC (mean ± std over seeds)")
    axis.set_title(f"transfer from {result['source_backbone']} on {Path(str(result['dataset'])).name}")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

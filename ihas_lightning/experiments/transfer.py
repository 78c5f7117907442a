"""Transferability: a run's searched groups and dimensions on other backbones.

A run searched on backbone A. For every target backbone B this retrains A's groups (the searched router and
the per-group dimensions) on B, and trains B at a uniform dimension (16 by default) and at the uniform
dimension with iHAS's embedding parameters ("matched"), all on the run's own split::

    DIR/transfer/<B>/seed<k>/ihas/       retrained groups (TensorBoard, checkpoints, metrics.json)
    DIR/transfer/<B>/seed<k>/uniform16/  B at the uniform dimension
    DIR/transfer/<B>/seed<k>/matched/    B at the parameter-matched uniform dimension
    DIR/transfer/transfer.json, transfer.md, transfer.png

Seeds. The split comes from the run's ``seed`` (``run.json``) and never changes here; seed ``k`` is the
*model seed*: weight initialization and the order of training batches. A stage whose ``metrics.json``
exists is done and is not redone.

Schedule. Except on the searched backbone itself (where the groups warm-start from the search and that
starting point competes with the fine-tuning's epochs, as in ``ihas run``), the retrained groups start from
fresh weights, so they get the uniform baselines' schedule (``baseline_epochs`` at ``lr``) rather than the
short fine-tuning schedule of ``ihas run``: all three variants of a target then train equally long from
scratch, and differ only in their dimensions. See docs/design.md#7-transferability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..backbones import check_backbone_name
from ..data.datamodule import CTRDataModule
from ..pipeline import RunDirectory, embedding_rows, stage_baseline, stage_retrain
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
        uniform_dim: the uniform baseline's dimension.
    """

    backbones: tuple[str, ...]
    seeds: int = 3
    uniform_dim: int = 16

    def __post_init__(self) -> None:
        object.__setattr__(self, "backbones", check_backbones(tuple(self.backbones)))
        if self.seeds < 1:
            raise ValueError(f"seeds must be >= 1, got {self.seeds}")
        if self.uniform_dim < 1:
            raise ValueError(f"uniform_dim must be >= 1, got {self.uniform_dim}")

    def stage(self, backbone: str, seed: int, variant: str) -> str:
        name = f"uniform{self.uniform_dim}" if variant == "uniform" else variant
        return f"transfer/{backbone}/seed{seed}/{name}"


# Uniform dimensions a backbone accepts besides "any positive integer": AutoInt's attention splits the embedding
# into att_head_num (2 by default) heads.
_DIM_MULTIPLE = {"AutoInt": 2}


def matched_dim(params: int, rows: int, backbone: str) -> int:
    """The uniform dimension whose embedding parameters are nearest iHAS's, among those ``backbone`` accepts."""
    step = _DIM_MULTIPLE.get(backbone, 1)
    exact = params / rows
    candidates = range(step, step * (int(exact // step) + 2) + 1, step)
    return min(candidates, key=lambda d: (abs(d - exact), d))


def _seeded(config: RunConfig, dm: CTRDataModule, model_seed: int, backbone: str
            ) -> tuple[RunConfig, CTRDataModule]:
    """The run's config and split with ``model_seed`` for initialization and batch order only."""
    seeded_config = replace(config, model=replace(config.model, seed=model_seed))
    if backbone != config.model.backbone:  # fresh weights: the baselines' schedule (module docstring)
        seeded_config = replace(seeded_config, retrain=replace(config.retrain, epochs=config.baseline_epochs,
                                                               lr=config.model.lr))
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
            "flops_per_sample": _finite(runs[0]["flops_per_sample"]), "seeds": [r["model_seed"] for r in runs]}


def _baseline_options(config: RunConfig) -> dict:
    """The settings that decide a uniform baseline's result besides its backbone, dimension and model seed."""
    data = config.data
    return {"data": data.data, "format": data.format, "schema": data.schema, "test": data.test, "rows": data.rows,
            "min_count": data.min_count, "batch_size": data.batch_size, "seed": data.seed,
            "dnn": config.model.dnn_hidden_units, "lr": config.model.lr, "baseline_epochs": config.baseline_epochs,
            "accelerator": config.trainer.accelerator}


def _reuse(run: RunDirectory, stage: str, donor: RunDirectory | None, donor_stage: str, dim: int | None) -> None:
    """Copy a finished stage that is this one by construction instead of training it again.

    Two cases: the run's own ``retrain``/``baseline``/``baseline_matched`` are the source backbone's stages at
    the run's seed; and two searches on one data set (say on DeepFM and on DCN) share their targets' uniform
    baselines (``baselines_from``). The copy records where it came from; a stage trained here is never replaced.
    """
    if donor is None or run.done(stage) or not donor.done(donor_stage) or donor.metrics(donor_stage).get("dim") != dim:
        return
    write_json(run.stage(stage) / "metrics.json",
               {**donor.metrics(donor_stage), "reused_from": str(donor.stage(donor_stage))})


def _check_donor(run: RunDirectory, donor: RunDirectory) -> None:
    ours, theirs = _baseline_options(run.load_config()), _baseline_options(donor.load_config())
    differ = [k for k in ours if ours[k] != theirs[k]]
    if differ:
        raise ValueError(f"baselines_from '{donor.root}' differs from '{run.root}' in {differ}: its baselines "
                         "are not comparable")


def run_transfer(run_dir: str | Path, config: TransferConfig, quiet: bool | None = None,
                 baselines_from: str | Path | None = None) -> dict:
    """Train every (backbone, seed, variant) not yet done; write ``transfer.json``, ``.md`` and ``.png``.

    ``baselines_from``: another run directory on the same split and options whose finished uniform baselines
    are reused instead of retrained (see :func:`_reuse`).
    """
    run = RunDirectory(run_dir)
    config_run = run.load_config(quiet=quiet)  # None: as the run was started
    donor = RunDirectory(baselines_from) if baselines_from else None
    if donor is not None:
        _check_donor(run, donor)
    clusters = run.stage("cluster") / "clusters.json"
    if not clusters.exists():
        raise FileNotFoundError(f"{clusters} is missing: finish the search and clustering first (`ihas run`)")
    dm = datamodule_from_config(config_run.data, config_run.trainer.threads)  # the run's split, for every stage
    rows_total = embedding_rows(dm.vocab_sizes)
    rows = []
    for backbone in config.backbones:
        runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
        dims: dict[str, int | None] = {"ihas": None, "uniform": config.uniform_dim}
        for seed in range(config.seeds):
            seeded_config, seeded = _seeded(config_run, dm, seed, backbone)
            own = backbone == config_run.model.backbone and seed == config_run.model.seed  # `ihas run` trained these
            if own:
                _reuse(run, config.stage(backbone, seed, "ihas"), run, "retrain", None)
            ihas = stage_retrain(run, seeded_config, seeded, backbone=backbone,
                                 stage=config.stage(backbone, seed, "ihas"))
            dims["matched"] = matched_dim(ihas["embedding_params"], rows_total, backbone)
            found = {"ihas": ihas}
            for variant in ("uniform", "matched"):
                if own:
                    _reuse(run, config.stage(backbone, seed, variant), run,
                           "baseline" if variant == "uniform" else "baseline_matched", dims[variant])
                _reuse(run, config.stage(backbone, seed, variant), donor, config.stage(backbone, seed, variant),
                       dims[variant])
                found[variant] = stage_baseline(run, seeded_config, dims[variant],
                                                config.stage(backbone, seed, variant), seeded, backbone=backbone)
            for variant, metrics in found.items():
                runs[variant].append({**metrics, "model_seed": seed})
        rows.append({"backbone": backbone, **{v: summarize(runs[v], dims[v]) for v in VARIANTS}})
    result = {"run": str(run.root), "source_backbone": config_run.model.backbone, "dataset": config_run.data.data,
              "format": config_run.data.format, "split_seed": config_run.data.seed,
              "model_seeds": list(range(config.seeds)), "search_dim": config_run.model.dim,
              "uniform_dim": config.uniform_dim, "embedding_rows": rows_total, "rows": rows}
    out = run.stage("transfer")
    write_json(out / "transfer.json", result)
    write_markdown(result, out / "transfer.md")
    plot(result, out / "transfer.png")
    return result


def _cell(stats: dict) -> str:
    std = stats["std"]
    return f"{stats['mean']:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def write_markdown(result: dict, path: Path) -> Path:
    """One row per backbone and variant: mean ± std over seeds, embedding parameters, FLOPs per sample."""
    names = {"ihas": f"iHAS (searched on {result['source_backbone']})", "uniform": "uniform", "matched": "matched"}
    lines = [f"# Transfer of dimensions searched on {result['source_backbone']}", "",
             f"Data `{result['dataset']}` (split seed {result['split_seed']}); model seeds {result['model_seeds']}; "
             "mean ± sample std over seeds.", "",
             "| backbone | variant | dim | test AUC | test logloss | embedding params | FLOPs/sample |",
             "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for variant in VARIANTS:
            entry = row[variant]
            flops = entry["flops_per_sample"]
            lines.append(f"| {row['backbone']} | {names[variant]} | {entry['dim'] or 'per group'} | "
                         f"{_cell(entry['test_auc'])} | {_cell(entry['test_logloss'])} | "
                         f"{entry['embedding_params']:,} | {f'{flops:,.0f}' if flops is not None else 'n/a'} |")
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
        uniform = sorted((row["uniform"], row["matched"]), key=lambda e: e["embedding_params"])
        axis.errorbar([e["embedding_params"] for e in uniform], [e["test_auc"]["mean"] for e in uniform],
                      yerr=[e["test_auc"]["std"] or 0.0 for e in uniform], fmt="o--", color=color, capsize=3,
                      label=row["backbone"])
        ihas = row["ihas"]
        axis.errorbar([ihas["embedding_params"]], [ihas["test_auc"]["mean"]], yerr=[ihas["test_auc"]["std"] or 0.0],
                      fmt="*", markersize=13, color=color, capsize=3)
    axis.plot([], [], "k*", markersize=10, label=f"iHAS (searched on {result['source_backbone']})")
    axis.set_xlabel("embedding parameters")
    axis.set_ylabel("test AUC (mean ± std over seeds)")
    axis.set_title(f"transfer from {result['source_backbone']} on {Path(str(result['dataset'])).name}")
    axis.legend(fontsize=7, ncol=2)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path

"""``ihas pim --run DIR`` co-designs embedding dims, DNN widths and a PIM configuration with Optuna.

Needs the supernet of ``ihas supernet --out DIR``. Writes ``DIR/pim/``: ``study.db`` (the Optuna study,
SQLite by default; open it with ``optuna-dashboard sqlite:///DIR/pim/study.db``), ``pareto.json``,
``pareto.md``, ``pareto.png`` and ``tensorboard/`` (hparams of the front). Running again adds trials to the
same study. For several machines give every worker the same ``--storage postgresql://...`` (or a journal
file on a shared disk: ``--storage journal:/shared/pim.log``).

The baseline is also trained on its own (``DIR/pim_baseline/``: the supernet's shape, uniform dims, on the
same split; ``--baseline-epochs 0`` skips it), and pareto.json reports it as ``baseline_trained_auc`` beside the
front. The reported point is chosen on validation AUC (test data is never read): the best front point within
the TORS cost ratios, and the best one of those with a table in PIM, if any (``selection``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import add_scoring_arguments, print_table

__all__ = ["register", "run_pim"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pim", help="Optuna multi-objective PIM co-design on a trained supernet "
                                   "(AUC vs latency vs energy)", description=__doc__)
    parser.add_argument("--run", required=True, help="run directory given to `ihas supernet --out`")
    parser.add_argument("--trials", type=int, default=100, help="trials to add to the study (default 100)")
    parser.add_argument("--storage", default=None, help="Optuna storage: sqlite:///..., postgresql://..., or a "
                        "journal file (journal:PATH); default sqlite:///RUN/pim/study.db")
    parser.add_argument("--sampler", choices=("tpe", "nsga2", "gp"), default="tpe")
    parser.add_argument("--workers", type=int, default=1, help="processes sharing the storage and the trials")
    parser.add_argument("--max-auc-drop", type=float, default=None,
                        help="constraint: largest validation AUC drop against the full supernet")
    parser.add_argument("--mode", choices=("per_field", "budget"), default="per_field",
                        help="per-field dims, or an embedding-parameter budget per trial")
    parser.add_argument("--baseline-epochs", type=int, default=None,
                        help="epochs of the baseline trained on its own (default: ihas run's baseline, "
                        "5 + 2); 0 skips it")
    parser.add_argument("--cost-vocab", default=None,
                        help="FIELD=ROWS,... : cost every candidate at these vocabulary sizes (the AUC still comes "
                        "from the run's data)")
    parser.add_argument("--cost-zipf", type=float, default=None,
                        help="with --cost-vocab: Zipf exponent of the lookups (default: uniform)")
    add_scoring_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bar of the trials")
    parser.add_argument("--study-name", default="pim")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_pim)


def run_pim(args: argparse.Namespace) -> dict:
    import torch

    from ..pim.pareto import dashboard_command, write_outputs
    from ..pim.standalone import train_standalone
    from ..pim.study import StudySettings, build_objective, run_study

    torch.set_num_threads(1)
    stage = Path(args.run) / "supernet"
    if not (stage / "checkpoints" / "last.ckpt").exists():
        raise FileNotFoundError(f"no trained supernet in {stage}: run `ihas supernet --out {args.run}` first")
    if args.baseline_epochs is not None and args.baseline_epochs < 0:
        raise ValueError(f"--baseline-epochs must be >= 0, got {args.baseline_epochs}")
    settings = StudySettings(run_dir=args.run, trials=args.trials, storage=args.storage, sampler=args.sampler,
                             workers=args.workers, max_auc_drop=args.max_auc_drop, seed=args.seed,
                             study_name=args.study_name, mode=args.mode, cost_vocab=_sizes(args.cost_vocab),
                             cost_zipf=args.cost_zipf, finetune_steps=args.finetune_steps,
                             finetune_lr=args.finetune_lr, refit_sweeps=args.refit_sweeps, refit_prior=args.refit_prior,
                             refit_rows=args.refit_rows, device=args.device,
                             progress=not args.quiet)
    trained = None if args.baseline_epochs == 0 else train_standalone(args.run, epochs=args.baseline_epochs)
    objective = build_objective(settings)
    study = run_study(settings, objective if settings.workers == 1 else None)
    report = write_outputs(study, Path(args.run) / "pim", objective.space, settings.storage_url,
                           baseline_trained=trained)
    rows = [[p["number"], p["auc"], p["latency_ratio"], p["energy_ratio"], p["flops_ratio"], p["pim_tables"]]
            for p in report["points"][:15]]
    print_table(f"ihas pim: Pareto front ({len(report['points'])} points, {report['front_pim_points']} with a table "
                f"in PIM; trials {report['trials']})",
                ["trial", "val AUC", "latency ratio", "energy ratio", "FLOPs ratio", "tables in PIM"], rows)
    chosen = {k: report["selection"][k] for k in ("chosen", "chosen_pim")}
    print("reported (chosen on validation AUC within " + ", ".join(f"{k} <= {v:.3f}" for k, v in
                                                                 report["selection"]["limits"].items()) + "): "
          + "; ".join(f"{k}: " + (f"trial {p['number']} (val AUC {p['auc']:.4f})" if p else "none")
                      for k, p in chosen.items()))
    trained_text = f", trained on its own {trained['val_auc']:.4f}" if trained else ""
    print(f"baseline val AUC: supernet full path {report['baseline_auc']:.4f}{trained_text}; results in "
          f"{Path(args.run) / 'pim'}; dashboard: {dashboard_command(settings.storage_url)}")
    return report


def _sizes(text: str | None) -> dict[str, int] | None:
    """``FIELD=ROWS,...`` as a dict (None stays None); a ValueError names the malformed entry."""
    if text is None:
        return None
    sizes = {}
    for item in (part.strip() for part in text.split(",") if part.strip()):
        field, _, rows = item.partition("=")
        if not field or not rows.strip().isdigit() or int(rows) < 1:
            raise ValueError(f"--cost-vocab entries must be FIELD=ROWS with ROWS >= 1, got '{item}'")
        sizes[field.strip()] = int(rows)
    return sizes

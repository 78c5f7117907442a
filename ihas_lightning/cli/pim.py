"""``ihas pim --run DIR`` co-designs embedding dims, DNN widths and a PIM configuration with Optuna.

Needs the supernet of ``ihas supernet --out DIR``. Writes ``DIR/pim/``: ``study.db`` (the Optuna study,
SQLite by default; open it with ``optuna-dashboard sqlite:///DIR/pim/study.db``), ``pareto.json``,
``pareto.md``, ``pareto.png`` and ``tensorboard/`` (hparams of the front). Running again adds trials to the
same study. For several machines give every worker the same ``--storage postgresql://...`` (or a journal
file on a shared disk: ``--storage journal:/shared/pim.log``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import print_table

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
    parser.add_argument("--study-name", default="pim")
    parser.add_argument("--seed", type=int, default=0)
    parser.set_defaults(handler=run_pim)


def run_pim(args: argparse.Namespace) -> dict:
    import torch

    from ..pim.pareto import dashboard_command, write_outputs
    from ..pim.study import StudySettings, build_objective, run_study

    torch.set_num_threads(1)
    stage = Path(args.run) / "supernet"
    if not (stage / "checkpoints" / "last.ckpt").exists():
        raise FileNotFoundError(f"no trained supernet in {stage}: run `ihas supernet --out {args.run}` first")
    settings = StudySettings(run_dir=args.run, trials=args.trials, storage=args.storage, sampler=args.sampler,
                             workers=args.workers, max_auc_drop=args.max_auc_drop, seed=args.seed,
                             study_name=args.study_name, mode=args.mode)
    objective = build_objective(settings)
    study = run_study(settings, objective if settings.workers == 1 else None)
    report = write_outputs(study, Path(args.run) / "pim", objective.space, settings.storage_url)
    rows = [[p["number"], p["auc"], p["latency_ratio"], p["energy_ratio"], p["flops_ratio"]]
            for p in report["points"][:15]]
    print_table(f"ihas pim: Pareto front ({len(report['points'])} points; trials {report['trials']})",
                ["trial", "val AUC", "latency ratio", "energy ratio", "FLOPs ratio"], rows)
    print(f"baseline val AUC {report['baseline_auc']:.4f}; results in {Path(args.run) / 'pim'}; "
          f"dashboard: {dashboard_command(settings.storage_url)}")
    return report

"""``ihas report``: ``DIR/report.md`` with plots for a finished run."""

from __future__ import annotations

import argparse

__all__ = ["register", "run_report"]


def register(subparsers: argparse._SubParsersAction) -> None:
    sub = subparsers.add_parser("report", help="write DIR/report.md with plots for a finished run")
    sub.add_argument("--run", required=True, help="run directory made by `ihas run`")
    sub.set_defaults(handler=run_report)


def run_report(args: argparse.Namespace) -> None:
    from ..experiments.report import write_report

    print(f"report: {write_report(args.run)}")

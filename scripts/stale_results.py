"""List benchmark results older than the last change to the code they measure (information, never a failure).

A result's commit is its ``provenance.commit`` (written by ``benchmarks/_common.write_json``) or older
``git_commit`` key, or, for results written without either, the last commit that changed the result file. It is
stale when a later commit changed its benchmark script, ``benchmarks/_common.py`` or the package
``ihas_lightning/``.

Usage: ``python scripts/stale_results.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

__all__ = ["Staleness", "changes_since", "result_commit", "stale_report"]

ROOT = Path(__file__).resolve().parent.parent
NOT_IN_HISTORY = "(the recorded commit is not in this history)"


class Staleness(NamedTuple):
    """One result file: the commit it was measured at, where that figure comes from, the later commits."""

    name: str
    commit: str
    source: str
    later: list[str]


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout.strip()


def result_commit(path: Path, root: Path = ROOT) -> tuple[str, str]:
    """The commit a result was measured at, and where that figure comes from."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        payload = {}
    for source, commit in (("provenance", (payload.get("provenance") or {}).get("commit")),
                           ("git_commit", payload.get("git_commit"))):
        if commit:
            return commit, source
    return git(root, "log", "-1", "--format=%H", "--", str(path.relative_to(root))), "last change of the file"


def changes_since(commit: str, *paths: str, root: Path = ROOT) -> list[str]:
    """Commits after ``commit`` that touched ``paths`` (one line each), newest first."""
    if not commit:
        return []
    try:
        out = git(root, "log", "--format=%h %s", f"{commit}..HEAD", "--", *paths)
    except subprocess.CalledProcessError:           # a commit that is not in this history
        return [NOT_IN_HISTORY]
    return [line for line in out.splitlines() if line]


def stale_report(root: Path = ROOT) -> list[Staleness]:
    """Every ``benchmarks/results/*.json`` of the repository at ``root`` with the commits to its code since."""
    rows = []
    for path in sorted((root / "benchmarks" / "results").glob("*.json")):
        script = root / "benchmarks" / f"{path.stem}.py"
        measured = [str(p.relative_to(root)) for p in (script, root / "benchmarks" / "_common.py") if p.exists()]
        commit, source = result_commit(path, root)
        rows.append(Staleness(path.name, commit, source, changes_since(commit, *measured, "ihas_lightning",
                                                                       root=root)))
    return rows


def main() -> int:
    rows = stale_report()
    width = max(len(r.name) for r in rows) if rows else 0
    for row in rows:
        state = (f"STALE: {len(row.later)} later commits to its code (newest: {row.later[0]})" if row.later
                 else "current")
        print(f"{row.name:<{width}}  measured at {row.commit[:10] or '?'} ({row.source})  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

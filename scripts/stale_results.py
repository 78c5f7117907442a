"""List benchmark results older than the last change to the code they measure (information, never a failure).

A result's commit is its ``provenance.commit`` (written by ``benchmarks/_common.write_json``), or, for results
written before provenance existed, the last commit that changed the result file. It is stale when a later commit
changed its benchmark script, ``benchmarks/_common.py`` or the package ``ihas_lightning/``.

Usage: ``python scripts/stale_results.py``
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def result_commit(path: Path) -> tuple[str, str]:
    """The commit a result was measured at, and where that figure comes from."""
    try:
        commit = (json.loads(path.read_text()).get("provenance") or {}).get("commit")
    except (OSError, ValueError):
        commit = None
    if commit:
        return commit, "provenance"
    return git("log", "-1", "--format=%H", "--", str(path.relative_to(ROOT))), "last change of the file"


def changes_since(commit: str, *paths: str) -> list[str]:
    """Commits after ``commit`` that touched ``paths`` (one line each), newest first."""
    if not commit:
        return []
    try:
        out = git("log", "--format=%h %s", f"{commit}..HEAD", "--", *paths)
    except subprocess.CalledProcessError:           # a commit that is not in this history
        return ["(the recorded commit is not in this history)"]
    return [line for line in out.splitlines() if line]


def main() -> int:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        script = ROOT / "benchmarks" / f"{path.stem}.py"
        measured = [str(p.relative_to(ROOT)) for p in (script, ROOT / "benchmarks" / "_common.py") if p.exists()]
        commit, source = result_commit(path)
        later = changes_since(commit, *measured, "ihas_lightning")
        rows.append((path.name, commit[:10] if commit else "?", source, len(later), later[:1]))
    width = max(len(r[0]) for r in rows) if rows else 0
    for name, commit, source, count, newest in rows:
        state = f"STALE: {count} later commits to its code (newest: {newest[0]})" if count else "current"
        print(f"{name:<{width}}  measured at {commit} ({source})  {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

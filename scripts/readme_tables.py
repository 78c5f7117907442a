"""Check that README.md's benchmark tables and provenance lines say what the result files say.

In README.md's ``## Benchmarks`` section every Markdown table is preceded by a marker comment naming the result
it reproduces, ``<!-- table: benchmarks/results/X.md -->``. Each README row must then be a row of one table of
that file, cell for cell, on the README's columns (a README table may show a subset of the rows and of the
columns; cells compare with whitespace collapsed and ``**`` emphasis dropped). Every result the section links
(``benchmarks/results/X.md`` with an ``X.json`` beside it) must have its provenance sentence, made by
:func:`provenance_sentence` from the JSON, somewhere in the section (line breaks are free). The result files are
the truth: when they disagree, change the README. The pages of :data:`DOCUMENTS` (results too detailed for the
README, such as what was tried for a requirement) are checked whole, the same way.

Usage: ``python scripts/readme_tables.py`` prints the problems (exit 1) or "ok", and the provenance sentences.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["DOCUMENTS", "MARKER", "Table", "check_all", "check_document", "check_readme", "markdown_tables",
           "provenance_sentence", "section", "table_problems"]

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(r"<!--\s*table:\s*(\S+)\s*-->")
RESULT_LINK = re.compile(r"\]\((?:\.\./)?benchmarks/results/([\w.-]+)\.md\)")
DOCUMENTS = ("docs/supernet_ranking.md",)
"""Pages besides README.md that report benchmark results, checked whole (their links may start with ``../``)."""


@dataclass(frozen=True)
class Table:
    """A Markdown table: its header cells, its rows, and the 1-based line of its header in its file."""

    line: int
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    marker: str | None = None        # the result file named by the marker comment right above it, if any


def _cell(text: str) -> str:
    return " ".join(text.replace("**", "").split())


def _cells(line: str) -> tuple[str, ...]:
    return tuple(_cell(c) for c in line.strip().strip("|").split("|"))


def section(text: str, heading: str) -> tuple[int, str]:
    """The lines of ``text`` from ``heading`` (a whole line) up to the next heading of the same level, and the
    1-based number of the heading's line."""
    lines = text.splitlines()
    level = heading.split(" ", 1)[0] + " "
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(level)), len(lines))
    return start + 1, "\n".join(lines[start:end])


def markdown_tables(text: str, first_line: int = 1) -> list[Table]:
    """Every table of ``text`` (a header, a ``|---|`` line, rows), with the marker comment above it (the
    nearest non-blank line before the header) if there is one."""
    lines = text.splitlines()
    tables, i = [], 0
    while i < len(lines):
        if (lines[i].lstrip().startswith("|") and i + 1 < len(lines)
                and "-" in lines[i + 1] and re.fullmatch(r"[\s|:-]+", lines[i + 1])):
            j = i + 2
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                j += 1
            above = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            found = MARKER.fullmatch(above.strip())
            tables.append(Table(first_line + i, _cells(lines[i]), tuple(_cells(r) for r in lines[i + 2:j]),
                                found.group(1) if found else None))
            i = j
        else:
            i += 1
    return tables


def table_problems(readme: Table, result: list[Table], result_name: str) -> list[str]:
    """Why ``readme`` is not a subset (rows and columns) of one of the ``result`` tables; empty when it is."""
    where = f"README.md line {readme.line} (table of {result_name})"
    if len(set(readme.headers)) != len(readme.headers):
        return [f"{where}: repeated column names {readme.headers}"]
    candidates = [t for t in result if set(readme.headers) <= set(t.headers)]
    if not candidates:
        return [f"{where}: no table in {result_name} has all the columns {list(readme.headers)}; its tables have "
                + "; ".join(str(list(t.headers)) for t in result)]
    best: list[str] | None = None
    for table in candidates:
        columns = [table.headers.index(h) for h in readme.headers]
        theirs = {tuple(row[c] if c < len(row) else "" for c in columns) for row in table.rows}
        problems = [f"{where}, row at line {readme.line + 2 + n}: {' | '.join(row)} is not a row of "
                    f"{result_name} (line {table.line}){_nearest(row, theirs)}"
                    for n, row in enumerate(readme.rows) if row not in theirs]
        if best is None or len(problems) < len(best):
            best = problems
    return best or []


def _nearest(row: tuple[str, ...], theirs: set[tuple[str, ...]]) -> str:
    """The result row sharing the most cells with ``row``, so a failure names the cells that differ."""
    if not theirs:
        return ""
    other = max(sorted(theirs), key=lambda r: sum(a == b for a, b in zip(row, r)))
    diffs = [f"{a!r} vs {b!r}" for a, b in zip(row, other) if a != b]
    return "; closest result row differs in README vs result: " + ", ".join(diffs)


def provenance_sentence(name: str, payload: dict) -> str:
    """What README.md says about where ``benchmarks/results/{name}.json`` comes from: its commit and command
    (``provenance``, or the older ``git_commit``/``command`` keys), "not recorded" for what the file lacks."""
    record = payload.get("provenance") or {}
    commit = record.get("commit") or payload.get("git_commit")
    command = record.get("command") or payload.get("command")
    dirty = " (package with uncommitted changes)" if commit and record.get("dirty") else ""
    at = f"measured at commit `{commit[:7]}`{dirty}" if commit else ""
    how = f"`{command.strip()}`" if command else ""
    if at and how:
        said = f"{at} with {how}"
    elif at:
        said = f"{at}; command not recorded"
    elif how:
        said = f"measured with {how}; commit not recorded"
    else:
        said = "commit and command not recorded"
    return f"`{name}.json`: {said}."


def check_readme(root: Path = ROOT, heading: str = "## Benchmarks") -> tuple[list[str], list[str]]:
    """The problems found in ``root/README.md``'s ``heading`` section, and the provenance sentences it needs."""
    return check_document(root, "README.md", heading)


def check_document(root: Path, name: str, heading: str | None = None) -> tuple[list[str], list[str]]:
    """The problems found in ``root/name`` (its ``heading`` section, or the whole page), and the provenance
    sentences it needs."""
    page = (root / name).read_text()
    first, text = section(page, heading) if heading else (1, page)
    problems: list[str] = []
    for table in markdown_tables(text, first):
        if table.marker is None:
            problems.append(f"{name} line {table.line}: a table without a '<!-- table: "
                            "benchmarks/results/X.md -->' marker right above it")
            continue
        path = root / table.marker
        if not path.is_file():
            problems.append(f"{name} line {table.line}: its marker names {table.marker}, which does not exist")
            continue
        problems += [p.replace("README.md", name, 1)
                     for p in table_problems(table, markdown_tables(path.read_text()), table.marker)]
    flat = " ".join(text.split())
    sentences = []
    for result_name in dict.fromkeys(RESULT_LINK.findall(text)):
        result = root / "benchmarks" / "results" / f"{result_name}.json"
        if not result.is_file():
            continue
        sentence = provenance_sentence(result_name, json.loads(result.read_text()))
        sentences.append(sentence)
        if sentence not in flat:
            where = f"{name} {heading}" if heading else name
            problems.append(f"{where} links benchmarks/results/{result_name}.md but does not say (line breaks "
                            f"free): {sentence}")
    return problems, sentences


def check_all(root: Path = ROOT) -> tuple[list[str], list[str]]:
    """README.md's ``## Benchmarks`` section and every page of :data:`DOCUMENTS`."""
    problems, sentences = check_readme(root)
    for name in DOCUMENTS:
        more, said = check_document(root, name)
        problems, sentences = problems + more, sentences + said
    return problems, sentences


def main() -> int:
    problems, sentences = check_all()
    print("\n".join(problems) if problems else "ok")
    print("\nProvenance sentences:\n" + "\n".join(sentences))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

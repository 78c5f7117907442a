"""README.md's benchmark tables and provenance lines say what benchmarks/results/ says (issue 17, item 7), and
scripts/stale_results.py finds the results older than their code."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module                  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


readme_tables = _script("readme_tables")
stale_results = _script("stale_results")


def test_readme_benchmark_tables_and_provenance_match_the_result_files() -> None:
    problems, sentences = readme_tables.check_readme(ROOT)
    assert not problems, ("README.md disagrees with benchmarks/results/ (the result files are the truth; "
                          "`python scripts/readme_tables.py` lists this too):\n" + "\n".join(problems))
    # Every result the section links has its sentence: 9 at this commit, 3 of them with a recorded commit.
    assert len(sentences) >= 9
    assert sum("measured at commit" in s for s in sentences) >= 3


def test_the_detailed_result_pages_say_what_the_result_files_say() -> None:
    problems, _ = readme_tables.check_all(ROOT)
    assert not problems, "\n".join(problems)
    assert "docs/supernet_ranking.md" in readme_tables.DOCUMENTS
    _, said = readme_tables.check_document(ROOT, "docs/supernet_ranking.md")
    assert len(said) >= 5                    # the variants' results it links, each with its sentence


def test_a_page_whose_link_starts_with_dot_dot_needs_its_sentence_too(tmp_path: Path) -> None:
    root = _mini_repo(tmp_path)
    (root / "docs").mkdir()
    (root / "docs" / "page.md").write_text("# p\n\nSee [`speed.md`](../benchmarks/results/speed.md).\n")
    problems, _ = readme_tables.check_document(root, "docs/page.md")
    assert len(problems) == 1 and problems[0].startswith("docs/page.md links benchmarks/results/speed.md")
    sentence = readme_tables.provenance_sentence("speed", RESULT_JSON)
    (root / "docs" / "page.md").write_text(f"# p\n\nSee [`speed.md`](../benchmarks/results/speed.md).\n{sentence}\n")
    assert readme_tables.check_document(root, "docs/page.md") == ([], [sentence])


RESULT_MD = """# Speed

| model | search (samples/s) | plain (samples/s) | ratio | >= 0.7 |
|---|---|---|---|---|
| DeepFM | 12,882 | 17,126 | 0.75 | yes |
| DCN | 10,813 | 13,679 | 0.79 | yes |
"""
RESULT_JSON = {"provenance": {"commit": "093b9a4454", "dirty": False, "command": "python benchmarks/speed.py"}}


def _mini_repo(tmp_path: Path) -> Path:
    """A README whose Benchmarks section shows one result file's table, with the file: to be spoiled one way per
    test (the real README's figures change with every rerun)."""
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (results / "speed.md").write_text(RESULT_MD)
    (results / "speed.json").write_text(json.dumps(RESULT_JSON))
    sentence = readme_tables.provenance_sentence("speed", RESULT_JSON)
    table = "\n".join(RESULT_MD.splitlines()[2:])
    (tmp_path / "README.md").write_text(
        "# x\n\n## Benchmarks\n\nIntro.\n\n<!-- table: benchmarks/results/speed.md -->\n" + table
        + "\n\nFull result: [`benchmarks/results/speed.md`](benchmarks/results/speed.md).\n" + sentence
        + "\n\n## After\n")
    assert readme_tables.check_readme(tmp_path)[0] == []
    return tmp_path


def test_a_changed_number_is_reported_with_its_line_and_file(tmp_path: Path) -> None:
    root = _mini_repo(tmp_path)
    readme = (root / "README.md").read_text()
    row = "| DCN | 10,813 | 13,679 | 0.79 | yes |"
    (root / "README.md").write_text(readme.replace(row, "| DCN | 10,813 | 13,679 | 0.80 | yes |"))
    line = readme[:readme.index(row)].count("\n") + 1
    problems, _ = readme_tables.check_readme(root)
    assert len(problems) == 1
    assert problems[0].startswith(f"README.md line {line - 3} (table of benchmarks/results/speed.md), "
                                  f"row at line {line}: DCN | 10,813 | 13,679 | 0.80 | yes is not a row of")
    assert "'0.80' vs '0.79'" in problems[0]


def test_a_result_file_that_changes_fails_the_readme(tmp_path: Path) -> None:
    root = _mini_repo(tmp_path)
    result = root / "benchmarks" / "results" / "speed.md"
    result.write_text(result.read_text().replace("| DeepFM | 12,882 |", "| DeepFM | 12,883 |"))
    problems, _ = readme_tables.check_readme(root)
    assert len(problems) == 1 and "speed.md" in problems[0] and "'12,882' vs '12,883'" in problems[0]


def test_a_table_without_marker_and_a_missing_provenance_line_are_reported(tmp_path: Path) -> None:
    root = _mini_repo(tmp_path)
    readme = (root / "README.md").read_text()
    marker = "<!-- table: benchmarks/results/speed.md -->\n"
    sentence = readme_tables.provenance_sentence("speed", RESULT_JSON)
    (root / "README.md").write_text(readme.replace(marker, "").replace(sentence, ""))
    problems, _ = readme_tables.check_readme(root)
    assert len(problems) == 2
    assert "a table without a '<!-- table: benchmarks/results/X.md -->' marker" in problems[0]
    assert problems[1].endswith(sentence) and "links benchmarks/results/speed.md" in problems[1]


def test_tables_may_show_a_subset_of_rows_and_columns_in_any_order() -> None:
    result = readme_tables.markdown_tables("# r\n\n| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n| 4 |  5 | 6 |\n")
    assert result[0].headers == ("a", "b", "c") and result[0].rows == (("1", "2", "3"), ("4", "5", "6"))
    readme = readme_tables.markdown_tables("<!-- table: r.md -->\n| c | a |\n|---|---|\n| **6** | 4 |\n", 10)[0]
    assert readme.marker == "r.md" and readme.line == 11
    assert readme_tables.table_problems(readme, result, "r.md") == []
    wrong = readme_tables.markdown_tables("| c | a |\n|---|---|\n| 6 | 1 |\n| 3 | 1 |\n", 10)[0]
    assert readme_tables.table_problems(wrong, result, "r.md") == [
        "README.md line 10 (table of r.md), row at line 12: 6 | 1 is not a row of r.md (line 3); closest result "
        "row differs in README vs result: '6' vs '3'"]
    unknown = readme_tables.markdown_tables("| a | z |\n|---|---|\n| 1 | 2 |\n")[0]
    assert "no table in r.md has all the columns ['a', 'z']" in readme_tables.table_problems(unknown, result, "r.md")[0]


@pytest.mark.parametrize(("payload", "sentence"), [
    ({"provenance": {"commit": "093b9a44545b", "dirty": False, "command": "python b.py --x 1"}},
     "`x.json`: measured at commit `093b9a4` with `python b.py --x 1`."),
    ({"provenance": {"commit": "093b9a44545b", "dirty": True, "command": "python b.py"}},
     "`x.json`: measured at commit `093b9a4` (package with uncommitted changes) with `python b.py`."),
    ({"git_commit": "800e0cdd5a37", "command": "python b.py "}, "`x.json`: measured at commit `800e0cd` with "
     "`python b.py`."),
    ({"command": "python b.py"}, "`x.json`: measured with `python b.py`; commit not recorded."),
    ({"git_commit": "800e0cdd5a37"}, "`x.json`: measured at commit `800e0cd`; command not recorded."),
    ({"rows": 3}, "`x.json`: commit and command not recorded."),
])
def test_provenance_sentence(payload: dict, sentence: str) -> None:
    assert readme_tables.provenance_sentence("x", payload) == sentence


def _commit(root: Path, message: str) -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
    git("add", "-A")
    git("commit", "-q", "-m", message)
    return git("rev-parse", "HEAD")


def test_stale_results_on_a_scratch_repository(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    results = tmp_path / "benchmarks" / "results"
    results.mkdir(parents=True)
    (tmp_path / "benchmarks" / "speed.py").write_text("print(1)\n")
    (tmp_path / "benchmarks" / "size.py").write_text("print(2)\n")
    (tmp_path / "README.md").write_text("x\n")
    first = _commit(tmp_path, "scripts")
    (results / "speed.json").write_text(json.dumps({"provenance": {"commit": first}}))
    (results / "lost.json").write_text(json.dumps({"git_commit": "f" * 40}))
    _commit(tmp_path, "results")
    (tmp_path / "benchmarks" / "speed.py").write_text("print(3)\n")
    _commit(tmp_path, "faster speed benchmark")
    (tmp_path / "README.md").write_text("y\n")                  # not code any result measures
    _commit(tmp_path, "docs")
    (results / "size.json").write_text("{}")                    # no commit recorded: its file's last change
    last = _commit(tmp_path, "size result")

    report = {row.name: row for row in stale_results.stale_report(tmp_path)}
    assert report["speed.json"].commit == first and report["speed.json"].source == "provenance"
    assert [line.split(" ", 1)[1] for line in report["speed.json"].later] == ["faster speed benchmark"]
    assert report["size.json"] == stale_results.Staleness("size.json", last, "last change of the file", [])
    assert report["lost.json"].source == "git_commit"
    assert report["lost.json"].later == [stale_results.NOT_IN_HISTORY]

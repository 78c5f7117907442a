"""The package's public surface: each symbol has one home, no private name crosses a module boundary, the
search-time modules import no cycle, and the top level exports the headline classes."""

from __future__ import annotations

import ast
from pathlib import Path

import ihas_lightning
from ihas_lightning import clustering, gates, supernet

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ihas_lightning"
SOURCES = [p for d in ("ihas_lightning", "tests", "integration_tests", "benchmarks", "examples", "scripts")
           for p in sorted((ROOT / d).rglob("*.py"))]


def _module_all(path: Path) -> list[str]:
    """The literal ``__all__`` of a module, [] when it has none."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            return list(ast.literal_eval(node.value))
    return []


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def test_no_private_name_is_imported_from_another_module() -> None:
    offenders = [f"{path.relative_to(ROOT)}:{node.lineno} imports {alias.name}"
                 for path in SOURCES for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) for alias in node.names if _is_private(alias.name)]
    assert offenders == []


def test_each_public_name_is_exported_by_one_module_only() -> None:
    homes: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "__init__.py":                                  # packages re-export, modules define
            for name in _module_all(path):
                homes.setdefault(name, []).append(str(path.relative_to(PACKAGE)))
    shared = {name: where for name, where in homes.items() if len(where) > 1}
    assert shared.pop("register")[0].startswith("cli")                 # each subcommand's hook, by protocol
    assert shared == {}
    assert "BudgetController" in gates.__all__ and "expected_param_share" not in gates.__all__


def test_regularizers_are_pure_functions_of_tensors() -> None:
    tree = ast.parse((PACKAGE / "regularizers.py").read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not any(m and m.startswith("ihas_lightning") for m in imported)
    assert all(isinstance(node, ast.ImportFrom) and node.level == 0 or not isinstance(node, ast.ImportFrom)
               for node in ast.walk(tree))                              # no relative import either
    assert not any(isinstance(node, ast.ClassDef) for node in tree.body)


def test_package_init_files_only_re_export() -> None:
    for path in [PACKAGE / "__init__.py", PACKAGE / "clustering" / "__init__.py"]:
        body = ast.parse(path.read_text()).body
        assert not any(isinstance(node, (ast.FunctionDef, ast.ClassDef)) for node in body), path


def test_top_level_exports_the_clustering_and_supernet_classes() -> None:
    names = [n for n in ihas_lightning.__all__ if not n.startswith("__")]
    assert names == sorted(names)
    assert ihas_lightning.ClusterConfig is clustering.ClusterConfig
    assert ihas_lightning.ClusterResult is clustering.ClusterResult
    for name in ("SupernetConfig", "SupernetMasks", "SubArchitecture"):
        assert getattr(ihas_lightning, name) is getattr(supernet, name)

"""The package's shape: dependencies in one direction, and model families known only to their adapters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from psaguard.backbones import registered_backbones

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "guard"
# The command line (guard/cli/) imports its subcommands when they run, to start fast; it is the top, not a cycle.
ENTRY_POINTS = CORE / "cli"


def _is_entry_point(path: Path) -> bool:
    return path.is_relative_to(ENTRY_POINTS)


def _modules(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.rglob("*.py"))


def _imports_in_functions(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for inner in ast.walk(node):
                if isinstance(inner, ast.ImportFrom) and (inner.module or "").startswith("psaguard"):
                    found.append(f"{inner.module} (line {inner.lineno})")
    return found


@pytest.mark.parametrize("path", [p for p in _modules(CORE) if not _is_entry_point(p)], ids=lambda p: p.name)
def test_no_core_module_imports_psaguard_inside_a_function(path: Path):
    assert _imports_in_functions(ast.parse(path.read_text(encoding="utf-8"))) == []


def test_nothing_below_the_facade_imports_it():
    importers = []
    for path in _modules(CORE):
        if path.name in {"guard.py", "__init__.py"} or _is_entry_point(path):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "psaguard.guard":
                importers.append(str(path.relative_to(ROOT)))
    assert importers == []


def test_family_names_appear_only_in_their_adapters_and_tiny_builders():
    names = {name for adapter in registered_backbones() for name in (adapter.family, *adapter.model_types)}
    outside = [
        path
        for path in _modules(CORE, ROOT / "adapters", ROOT / "training")
        if not {"backbones", "testing"} & set(path.parts)
    ]
    hits = [
        f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}"
        for path in outside
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]
    assert hits == []


def test_the_design_docs_module_map_names_every_module_of_the_core():
    mapped = (ROOT / "docs" / "design.md").read_text(encoding="utf-8").split("### The request path")[0]
    entries = [p for p in CORE.iterdir() if p.name not in {"__init__.py", "py.typed"} and not p.name.startswith(".")]
    names = [p.name + ("/" if p.is_dir() else "") for p in entries if p.suffix == ".py" or p.is_dir()]
    missing = [name for name in names if name != "__pycache__/" and name not in mapped]
    assert missing == [], f"docs/design.md does not map {missing}"


def test_the_core_imports_no_client_layer():
    """The server and the LangChain adapters sit above the facade: nothing in ``guard/`` imports them."""
    importers = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path in _modules(CORE)
        if not _is_entry_point(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and (node.module or "").startswith(("psaguard.serving", "psaguard.adapters"))
    ]
    assert importers == []

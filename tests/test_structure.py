"""The package's shape: no import cycle, no module over 450 lines, no function over 80."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "recall_bench"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def load_time_imports(name: str, path: Path) -> set[str]:
    """The package modules `name` imports when it is loaded: module-level imports (those under
    `if TYPE_CHECKING:` and inside functions run later, or never); `from a import b` names
    the module a.b when there is one."""
    tree = ast.parse(path.read_text())
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for n in ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node]:
            if isinstance(n, ast.Import):
                found |= {alias.name for alias in n.names}
            elif isinstance(n, ast.ImportFrom):
                package = name.split(".")[: None if path.name == "__init__.py" else -1]
                base = ".".join(
                    ([*package[: len(package) - n.level + 1]] if n.level else [])
                    + ([n.module] if n.module else [])
                )
                found |= {
                    f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in n.names
                }
    return found & MODULES.keys()


def test_the_package_has_no_import_cycle():
    graph = {name: load_time_imports(name, path) for name, path in MODULES.items()}
    # the parser sees both import forms: `from package import module` and `from module import x`
    assert "recall_bench.leaderboard.migrate" in graph["recall_bench.leaderboard.schema"]
    assert "recall_bench.leaderboard.build" in graph["recall_bench.leaderboard"]
    try:
        list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as e:
        pytest.fail(f"import cycle: {' -> '.join(e.args[1])}")


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_stay_short(name):
    source = MODULES[name].read_text()
    assert len(source.splitlines()) <= 450, f"{name}: split it (over 450 lines)"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= 80, f"{name}.{node.name}: {length} lines (at most 80)"

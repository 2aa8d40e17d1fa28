"""The consensus core is pure: it imports nothing that touches clocks, threads, sockets,
files, randomness or the actor and messaging libraries."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.paths import REPO

CORE = REPO / "core"
ALLOWED = {"__future__", "collections", "collections.abc", "dataclasses", "enum", "typing"}


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_core_imports_only_pure_modules() -> None:
    files = sorted(CORE.glob("*.py"))
    assert files, "core/ not found"
    for path in files:
        impure = _imports(path) - ALLOWED
        assert not impure, f"{path.name} imports {sorted(impure)}"

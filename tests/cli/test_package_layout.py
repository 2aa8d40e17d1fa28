"""The shape of the code, checked: every package imports on its own, no module imports
itself back through others, imports across folders are absolute (``zraft.x``, never
``from ..x``), and a module over 500 lines says in its docstring why it is one module."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.paths import REPO

ROOT = REPO
# Import package -> its folder (setup.cfg's package_dir).
FOLDERS = {
    "zraft": ROOT / "src" / "zraft",
    "zraft.core": ROOT / "core",
    "zraft.storage": ROOT / "storage",
    "zraft.actors": ROOT / "actors",
    "zraft.backends": ROOT / "backends",
    "zraft.session": ROOT / "session",
    "zraft.transport": ROOT / "transport",
    "zraft.sim": ROOT / "sim",
    "zraft.casbin": ROOT / "casbin_plugin",
}
LONG_MODULE_LINES = 500
REASON = "Why one module:"


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def top_level_imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The zraft modules ``name`` imports when it is imported (not inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(c for c in candidates if c in known and c != name)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.timeout(60)
def test_no_module_imports_itself_back_through_others() -> None:
    known = modules()
    graph = {name: top_level_imports(name, path, known) for name, path in known.items()}
    assert sum(len(deps) for deps in graph.values()) > 100  # the parser sees the imports
    assert cycles(graph) == []


@pytest.mark.timeout(60)
def test_imports_across_folders_are_absolute() -> None:
    leaving = []
    for folder in FOLDERS.values():
        for path in folder.rglob("*.py"):
            depth = len(path.relative_to(folder).parts)  # 1 for a module at the top
            for node in ast.walk(ast.parse(path.read_text())):
                # ``from ..x`` climbs level - 1 packages: past the folder, it means another
                if isinstance(node, ast.ImportFrom) and node.level > depth:
                    leaving.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert leaving == [], "relative imports that leave their folder (write zraft.x)"


@pytest.mark.timeout(120)
def test_every_package_imports_on_its_own() -> None:
    for package in FOLDERS:
        done = subprocess.run(
            [sys.executable, "-c", f"import {package}"], capture_output=True, text=True
        )
        assert done.returncode == 0, f"import {package}:\n{done.stderr[-2000:]}"


def test_a_long_module_says_why_it_is_one() -> None:
    unexplained = []
    for name, path in modules().items():
        text = path.read_text()
        if text.count("\n") > LONG_MODULE_LINES:
            docstring = ast.get_docstring(ast.parse(text)) or ""
            if REASON not in docstring:
                unexplained.append(f"{name} ({text.count(chr(10))} lines)")
    assert unexplained == [], f"over {LONG_MODULE_LINES} lines without {REASON!r}"

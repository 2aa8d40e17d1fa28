"""No module of ``storage/`` reads an environment variable (issue 18): fault injection and
other test tooling wrap the stores from outside (zraft.chaos.storage_faults).

The scan parses the source with ``ast``; it is shown to find planted reads of every form
it looks for, so an empty finding on ``storage/`` means something.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import zraft.storage

# Names of the os module through which the environment is read (or, for putenv and
# unsetenv, written: storage has no business there either).
_ENV_NAMES = frozenset({"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"})


def environment_reads(path: Path) -> list[str]:
    """Where ``path`` touches the process environment, as ``file:line: what``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    os_names = {"os"}  # names bound to the os module (``import os as o`` adds o)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names.update(a.asname or a.name for a in node.names if a.name == "os")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in ("os", "posix", "nt"):
            for alias in node.names:
                if alias.name in _ENV_NAMES or alias.name == "*":
                    found.append(f"{path}:{node.lineno}: from {node.module} import {alias.name}")
        elif (
            isinstance(node, ast.Attribute)
            and node.attr in _ENV_NAMES
            and isinstance(node.value, ast.Name)
            and node.value.id in os_names
        ):
            found.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("__import__", "getattr")
            and any(
                isinstance(arg, ast.Constant) and arg.value in _ENV_NAMES for arg in node.args
            )
        ):
            found.append(f"{path}:{node.lineno}: {node.func.id}(... {_ENV_NAMES} ...)")
    return found


def scan(directory: Path) -> tuple[int, list[str]]:
    """(modules scanned, environment reads found) under ``directory``."""
    modules = sorted(directory.rglob("*.py"))
    return len(modules), [hit for module in modules for hit in environment_reads(module)]


@pytest.mark.timeout(30)
def test_no_storage_module_reads_the_environment() -> None:
    (storage_dir,) = (Path(p) for p in zraft.storage.__path__)
    scanned, found = scan(storage_dir)
    assert scanned >= 10, f"only {scanned} modules under {storage_dir}"
    assert found == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "planted",
    [
        'import os\nBUDGET = os.environ.get("ZRAFT_FAULT_FSYNC_FAIL_AFTER")\n',
        'import os\nBUDGET = os.getenv("X")\n',
        'import os\nHAS = "X" in os.environ\n',
        'import os as system\nBUDGET = system.environ["X"]\n',
        'from os import environ\nBUDGET = environ["X"]\n',
        'from os import getenv as read\nBUDGET = read("X")\n',
        'from os import *\nBUDGET = getenv("X")\n',
        'import os\nBUDGET = getattr(os, "environ")["X"]\n',
    ],
)
def test_the_scan_finds_a_planted_environment_read(tmp_path: Path, planted: str) -> None:
    Path(tmp_path, "clean.py").write_text("import os\nFD = os.open('x', os.O_RDONLY)\n")
    Path(tmp_path, "planted.py").write_text(planted)
    scanned, found = scan(tmp_path)
    assert scanned == 2
    assert len(found) >= 1 and all("planted.py" in hit for hit in found)

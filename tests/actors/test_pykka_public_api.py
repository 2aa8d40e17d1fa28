"""zraft uses pykka through its public API only: no ``pykka._*`` module or attribute is
imported or touched, and no subclass of a pykka class overrides or calls pykka's private
methods (``_actor_loop``, ``_handle_receive``, ``_create_actor_inbox``...). Those change
without notice between pykka releases; the pinned range in setup.cfg holds only for the
public API.

The scanner is checked on planted bad snippets first, so it cannot pass by finding nothing.
"""

from __future__ import annotations

import ast
import configparser
import importlib.metadata
from dataclasses import dataclass

import pykka
import pytest

from tests.support.paths import REPO

ROOT = REPO

# pykka's private names on the classes zraft subclasses or holds: defining one of these in a
# subclass overrides pykka's internals, and reading one relies on them.
PYKKA_PRIVATE = frozenset(
    name
    for cls in (pykka.Actor, pykka.ThreadingActor, pykka.ActorRef, pykka.ThreadingFuture)
    for name in dir(cls)
    if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
)


@dataclass(frozen=True)
class Finding:
    where: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.where}:{self.line}: {self.what}"


def _is_private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


def _dotted(node: ast.expr) -> str | None:
    """``a.b.c`` for a chain of names, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return ".".join(reversed(parts))


class _Module:
    """What one module binds from pykka, and its classes' bases."""

    def __init__(self, where: str, tree: ast.Module) -> None:
        self.where = where
        self.tree = tree
        self.pykka_modules: set[str] = set()  # local names bound to pykka or a submodule
        self.pykka_names: set[str] = set()  # local names bound to things from pykka
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "pykka" or alias.name.startswith("pykka."):
                        self.pykka_modules.add((alias.asname or alias.name).split(".")[0])
            elif (
                isinstance(node, ast.ImportFrom)
                and node.level == 0
                and (node.module == "pykka" or (node.module or "").startswith("pykka."))
            ):
                self.pykka_names.update(a.asname or a.name for a in node.names)

    def base_names(self, cls: ast.ClassDef) -> list[str]:
        return [name for base in cls.bases if (name := _dotted(base)) is not None]

    def from_pykka(self, dotted: str) -> bool:
        head = dotted.split(".")[0]
        return head in self.pykka_modules or head in self.pykka_names


def scan(sources: dict[str, str]) -> list[Finding]:
    """Every use of pykka's private API in ``sources`` (name -> Python source)."""
    modules = [_Module(where, ast.parse(text, filename=where)) for where, text in sources.items()]
    findings: list[Finding] = []
    # Classes that subclass pykka's, directly or through others in these sources (by name).
    classes = [(m, node) for m in modules for node in ast.walk(m.tree)
               if isinstance(node, ast.ClassDef)]  # fmt: skip
    pykka_classes: set[str] = set()
    grew = True
    while grew:
        grew = False
        for module, cls in classes:
            if cls.name in pykka_classes:
                continue
            bases = module.base_names(cls)
            if any(module.from_pykka(b) or b.split(".")[-1] in pykka_classes for b in bases):
                pykka_classes.add(cls.name)
                grew = True
    for module in modules:
        findings.extend(_imports_and_attributes(module))
        for node in ast.walk(module.tree):
            if isinstance(node, ast.ClassDef) and node.name in pykka_classes:
                findings.extend(_private_overrides(module.where, node))
    return findings


def _imports_and_attributes(module: _Module) -> list[Finding]:
    found = []
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pykka.") and _is_private(alias.name[len("pykka."):]):
                    found.append(Finding(module.where, node.lineno, f"import {alias.name}"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "pykka" or node.module.startswith("pykka."):
                private = _is_private(node.module[len("pykka"):].lstrip("."))
                names = [a.name for a in node.names if private or _is_private(a.name)]
                if names:
                    what = f"from {node.module} import {', '.join(names)}"
                    found.append(Finding(module.where, node.lineno, what))
        elif isinstance(node, ast.Attribute):
            dotted = _dotted(node)
            if dotted is not None and module.from_pykka(dotted) and _is_private(dotted):
                found.append(Finding(module.where, node.lineno, f"uses {dotted}"))
    return found


def _private_overrides(where: str, cls: ast.ClassDef) -> list[Finding]:
    found = []
    for node in cls.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in PYKKA_PRIVATE:
            what = f"{cls.name} overrides pykka's private {node.name}"
            found.append(Finding(where, node.lineno, what))
    for node in ast.walk(cls):
        if isinstance(node, ast.Attribute) and node.attr in PYKKA_PRIVATE:
            what = f"{cls.name} uses pykka's private {node.attr}"
            found.append(Finding(where, node.lineno, what))
    return found


def package_sources() -> dict[str, str]:
    """Every module of the installed package, by the folders setup.cfg maps it from."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    folders = {line.split("=")[1].strip()
               for line in config["options"]["package_dir"].strip().splitlines()}  # fmt: skip
    sources = {}
    for folder in sorted(folders):
        for path in sorted((ROOT / folder).rglob("*.py")):
            sources[str(path.relative_to(ROOT))] = path.read_text()
    return sources


def test_the_package_uses_pykka_through_its_public_api_only() -> None:
    sources = package_sources()
    assert "actors/peer_actor.py" in sources and len(sources) > 40, sorted(sources)
    findings = scan(sources)
    assert not findings, "\n".join(map(str, findings))


def test_the_package_does_subclass_pykka_so_the_override_check_has_work() -> None:
    """The override check looks at pykka's subclasses: there must be some to look at."""
    sources = package_sources()
    peer = sources["actors/peer_actor.py"] + "\n    def _actor_loop(self): ...\n"
    findings = scan({**sources, "actors/peer_actor.py": peer})
    assert [f.what for f in findings] == ["PeerActor overrides pykka's private _actor_loop"]


GOOD = """
import pykka
from pykka import ThreadingActor, ActorDeadError

class Fine(pykka.ThreadingActor):
    def _own_helper(self):
        return self.actor_inbox.empty(), self.actor_ref, self._state

    def on_receive(self, message):
        self.actor_ref.tell(message)
        return self._own_helper()

class AlsoFine(ThreadingActor):
    def on_start(self):
        raise ActorDeadError("x")

class Unrelated:
    def _actor_loop(self):  # not a pykka class: its own business
        pass
"""


def test_the_scanner_accepts_public_use() -> None:
    assert scan({"good.py": GOOD}) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from pykka._envelope import Envelope\n", "from pykka._envelope import Envelope"),
        ("import pykka._actor\n", "import pykka._actor"),
        ("import pykka._actor as a\n", "import pykka._actor"),
        ("from pykka import _envelope\n", "from pykka import _envelope"),
        ("from pykka.debug import _frames\n", "from pykka.debug import _frames"),
        ("import pykka\nE = pykka._envelope.Envelope\n", "uses pykka._envelope"),
        ("import pykka as pk\nE = pk._envelope\n", "uses pk._envelope"),
        (
            "import pykka\nclass A(pykka.ThreadingActor):\n    def _actor_loop(self): ...\n",
            "A overrides pykka's private _actor_loop",
        ),
        (
            "from pykka import ThreadingActor as T\n"
            "class A(T):\n    @staticmethod\n    def _create_actor_inbox(): ...\n",
            "A overrides pykka's private _create_actor_inbox",
        ),
        (
            "import pykka\nclass A(pykka.ThreadingActor): pass\n"
            "class B(A):\n    def _handle_receive(self, m): ...\n",
            "B overrides pykka's private _handle_receive",
        ),
        (
            "import pykka\nclass A(pykka.ThreadingActor):\n"
            "    def on_receive(self, m):\n        self._handle_failure(None, None, None)\n",
            "A uses pykka's private _handle_failure",
        ),
    ],
)
def test_the_scanner_catches_a_planted_private_use(source: str, expected: str) -> None:
    findings = scan({"bad.py": source})
    assert expected in [f.what for f in findings], findings


def test_the_scanner_follows_subclasses_across_modules() -> None:
    base = "import pykka\nclass Base(pykka.ThreadingActor): pass\n"
    child = "from base import Base\nclass Child(Base):\n    def _actor_loop_running(self): ...\n"
    findings = scan({"base.py": base, "child.py": child})
    assert [(f.where, f.what) for f in findings] == [
        ("child.py", "Child overrides pykka's private _actor_loop_running")
    ]


def test_pykka_is_pinned_to_a_major_version() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    requires = config["options"]["install_requires"].split()
    assert "pykka>=4.0,<5" in requires, requires
    installed = importlib.metadata.version("pykka")
    assert installed.split(".")[0] == "4", installed  # the one tested is in the range

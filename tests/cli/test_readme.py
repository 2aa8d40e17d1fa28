"""README's two commands stay true: CI runs exactly the test command README gives."""

from __future__ import annotations

import re

from tests.support.paths import REPO

ROOT = REPO


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)
    return [block.strip() for block in blocks]


def test_readme_opens_with_demo_and_test_commands() -> None:
    demo, tests = _readme_commands()[:2]
    assert "zraft demo" in demo and "pip install" in demo
    assert "pytest" in tests and "'.[test]'" in tests


def test_ci_runs_the_readme_test_command() -> None:
    tests = _readme_commands()[1]
    assert tests in (ROOT / ".ci" / "run").read_text().splitlines()

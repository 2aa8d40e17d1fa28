"""Data-driven scenario tests: each tests/core/scenarios/*.txt file is a reviewed trace.

The interpreter and the file format are described in ``scenario_env.py``. Set
``ZRAFT_REWRITE=1`` to rewrite the files with what the code produces now, then review the diff.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

from tests.support.scenario_env import render_scenario, run_scenario

SCENARIOS = Path(__file__).parent / "scenarios"
FILES = sorted(SCENARIOS.glob("*.txt"))


def test_scenarios_exist() -> None:
    assert FILES, f"no scenario files in {SCENARIOS}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", FILES, ids=[f.stem for f in FILES])
def test_scenario(path: Path) -> None:
    text = path.read_text()
    blocks, outputs = run_scenario(text)
    produced = render_scenario(blocks, outputs)
    if produced == text:
        return
    if os.environ.get("ZRAFT_REWRITE") == "1":
        path.write_text(produced)
        return
    diff = difflib.unified_diff(
        text.splitlines(keepends=True),
        produced.splitlines(keepends=True),
        fromfile=f"{path.name} (expected)",
        tofile=f"{path.name} (produced)",
    )
    pytest.fail("scenario output differs (ZRAFT_REWRITE=1 rewrites):\n" + "".join(diff))

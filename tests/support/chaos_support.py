"""Shared pieces of the fault-suite tests: no peer process may outlive a run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line mentions ``text`` (a run directory): leftovers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if text.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def chaos_out(tmp_path: Path) -> Iterator[Path]:
    """Where a run writes; afterwards, no process may still mention it."""
    yield tmp_path / "runs"
    leftovers = processes_mentioning(str(tmp_path))
    assert not leftovers, f"peer processes left running: {leftovers}"

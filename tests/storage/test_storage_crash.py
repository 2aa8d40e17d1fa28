"""Crash test: SIGKILL a writer at random moments and check nothing acknowledged is lost.

A writer subprocess appends batches (sometimes rewriting a suffix, sometimes compacting) and
prints "persisted N" after each append returns. The test kills it at seeded random moments,
reopens the log and checks that every entry reported persisted is present and intact,
that nothing beyond what was written appears, and that appending continues.
Entries are a deterministic function of their index, so content can be checked exactly.

A SIGKILL loses no page-cache data, so this exercises the ordering of renames, unlinks,
truncations and compactions; torn writes on power loss are covered by the fault tests.
About 100 kills by default; ZRAFT_SOAK=1 runs 1000.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import zraft.storage
from zraft.storage import SegmentedLog

SOAK = os.environ.get("ZRAFT_SOAK", "") not in ("", "0")
KILLS = 1000 if SOAK else 100
SEGMENT_SIZE = 16 * 1024

# Shared by the writer subprocess and the checker: the entry stored at each index.
ENTRY_SOURCE = """
import hashlib
from zraft.core.types import Configuration, Entry, EntryKind

def make_entry(index):
    term = 1 + index // 500
    if index % 97 == 0:
        return Entry(index, term, EntryKind.CONFIG, Configuration.of(["a", "b", f"n{index % 7}"]))
    if index % 89 == 0:
        return Entry(index, term, EntryKind.NOOP, b"")
    digest = hashlib.sha256(index.to_bytes(8, "little")).digest()
    return Entry(index, term, EntryKind.NORMAL, digest * (index % 9))
"""

WRITER_SOURCE = (
    """
import random, sys
sys.path.insert(0, sys.argv[1])
"""
    + ENTRY_SOURCE
    + """
from zraft.storage import SegmentedLog

log = SegmentedLog(sys.argv[2], max_segment_size=int(sys.argv[4]), cache_entries=64)
rng = random.Random(int(sys.argv[3]))
print("ready", log.last_index, flush=True)
while True:
    lo = log.last_index + 1
    if rng.random() < 0.05 and log.last_index - 300 > log.first_index:
        lo = log.last_index - rng.randint(0, 300)  # rewrite a suffix (same content)
    hi = lo + rng.choice([1, 1, 3, 10, 40, 150])
    print("writing", lo, hi - 1, flush=True)
    log.append([make_entry(i) for i in range(lo, hi)])
    print("persisted", hi - 1, flush=True)
    if rng.random() < 0.03 and log.last_index > 3000:
        upto = log.last_index - rng.randint(0, 1500)
        print("compacting", upto, flush=True)
        log.compact(upto, make_entry(upto).term)
"""
)


def _entry_module() -> dict[str, object]:
    namespace: dict[str, object] = {}
    exec(ENTRY_SOURCE, namespace)  # the same definition the writer uses
    return namespace


class Expectation:
    """What the writer's output promises about the log after it dies."""

    def __init__(self) -> None:
        self.floor = 0  # every index up to here was acknowledged and not rewritten since
        self.ceiling = 0  # no index beyond the last one a writer tried to write
        self.compactions: set[int] = {0}

    def feed(self, output: str) -> None:
        for line in output.splitlines():
            words = line.split()
            if len(words) < 2:
                continue  # a line cut by the kill
            if words[0] == "writing" and len(words) == 3:
                lo, hi = int(words[1]), int(words[2])
                self.floor = min(self.floor, lo - 1)  # a rewrite truncates first
                self.ceiling = max(self.ceiling, hi)
            elif words[0] == "persisted":
                self.floor = int(words[1])
            elif words[0] == "compacting":
                self.compactions.add(int(words[1]))


def check(directory: Path, expect: Expectation, make_entry) -> SegmentedLog:  # type: ignore[no-untyped-def]
    log = SegmentedLog(directory, max_segment_size=SEGMENT_SIZE, cache_entries=64)
    assert log.last_index >= expect.floor, "an acknowledged entry was lost"
    assert log.last_index <= expect.ceiling, "entries that were never written appeared"
    assert log.base_index in expect.compactions
    assert log.term(log.base_index) == (make_entry(log.base_index).term if log.base_index else 0)
    got = log.entries(log.first_index, log.last_index + 1)
    assert len(got) == log.last_index - log.first_index + 1
    for entry in got:
        assert entry == make_entry(entry.index), f"entry {entry.index} differs"
    return log


def wait_for_ready(out_path: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if out_path.exists() and b"ready" in out_path.read_bytes():
            return
        if proc.poll() is not None:
            raise AssertionError(f"writer died: {out_path.read_text()}")
        time.sleep(0.002)
    raise AssertionError("writer never became ready")


@pytest.mark.timeout(1800 if SOAK else 120)
def test_sigkill_never_loses_acknowledged_entries(tmp_path: Path) -> None:
    make_entry = _entry_module()["make_entry"]
    # the directory holding the zraft package, for the writer's sys.path
    package_root = str(Path(zraft.storage.__file__).parent.parent.parent)
    directory = tmp_path / "log"
    rng = random.Random(20240611)
    expect = Expectation()
    kills_in_loop = 0
    for attempt in range(KILLS):
        out_path = tmp_path / f"out{attempt % 2}"
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    WRITER_SOURCE,
                    package_root,
                    str(directory),
                    str(attempt),
                    str(SEGMENT_SIZE),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=tmp_path,
            )
        try:
            if rng.random() < 0.1:
                time.sleep(rng.uniform(0.0, 0.15))  # sometimes during start-up and recovery
            else:
                wait_for_ready(out_path, proc)
                time.sleep(rng.uniform(0.0, 0.06))
                kills_in_loop += 1
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        output = out_path.read_text()
        assert "Traceback" not in output, output
        expect.feed(output)
        check(directory, expect, make_entry).close()

    assert expect.floor > 500, "the writers made too little progress for a meaningful test"
    assert kills_in_loop > KILLS // 2
    log = check(directory, expect, make_entry)
    try:  # appending continues after the last crash
        start = log.last_index + 1
        log.append([make_entry(i) for i in range(start, start + 50)])
        assert log.entries(start, start + 50) == [make_entry(i) for i in range(start, start + 50)]
    finally:
        log.close()

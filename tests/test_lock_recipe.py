"""The lock recipe under owner kills, owner pauses and a leader kill, checked from the
history its holders print: holds never overlap in log order, and the fenced resource only
ever sees tokens in order. ``ZRAFT_LOCK_SECONDS`` runs it longer (default 20)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster_support import local_cluster
from zraft.backends import kv
from zraft.session import LightSession

TIMEOUT = 1.5
SECONDS = float(os.environ.get("ZRAFT_LOCK_SECONDS", "20"))


@dataclass
class History:
    acquired: dict[int, str] = field(default_factory=dict)  # token -> worker
    released: dict[int, int] = field(default_factory=dict)  # token -> index of the release
    ops: dict[int, str] = field(default_factory=dict)  # token -> worker, fenced op done
    fenced: list[int] = field(default_factory=list)


def check(history: History, resource: list[list[object]]) -> list[str]:
    """Everything wrong with a history (empty: mutual exclusion and fencing held)."""
    problems = []
    tokens = sorted(history.acquired)
    for earlier, later in zip(tokens, tokens[1:], strict=False):
        end = history.released.get(earlier)
        if end is not None and end >= later:
            problems.append(
                f"{history.acquired[later]} took the lock at {later} while "
                f"{history.acquired[earlier]} held it from {earlier} to {end}"
            )
    seen = [entry[0] for entry in resource]
    if seen != sorted(seen):
        problems.append(f"the resource saw tokens out of order: {seen}")
    for token, worker in history.ops.items():
        if [token, worker] not in resource:
            problems.append(f"acknowledged op of {worker} with token {token} is missing")
    for token, worker in resource:
        if history.acquired.get(token) != worker:  # type: ignore[call-overload]
            problems.append(f"resource entry {token} by {worker} without that acquisition")
    return problems


def test_the_checker_catches_overlapping_holds_and_unfenced_writes() -> None:
    good = History({10: "a", 20: "b"}, {10: 15}, {10: "a", 20: "b"})
    assert check(good, [[10, "a"], [20, "b"]]) == []
    overlapping = History({10: "a", 12: "b"}, {10: 15})
    assert "while a held it" in check(overlapping, [])[0]
    assert "out of order" in check(good, [[20, "b"], [10, "a"]])[0]
    assert "missing" in check(good, [[10, "a"]])[0]


class Worker:
    def __init__(self, peers: list[str], name: str, history: History, lock: threading.Lock):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.lock_worker", ",".join(peers), str(TIMEOUT), name],
            stdout=subprocess.PIPE,
            text=True,
        )
        self._history, self._lock = history, lock
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            word, *numbers = line.split()
            values = [int(n) for n in numbers]
            with self._lock:
                if word == "acquired":
                    self._history.acquired[values[0]] = self.name
                elif word == "released":
                    self._history.released[values[0]] = values[1]
                elif word == "op":
                    self._history.ops[values[0]] = self.name
                elif word == "fenced":
                    self._history.fenced.append(values[0])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=10)
        self._reader.join(timeout=10)


def _holder(peers: list[str], workers: list[Worker]) -> Worker | None:
    """The worker holding the lock now: faults aimed at it exercise expiry and fencing."""
    with LightSession(peers) as reader:
        answer = reader.query(kv.get("locks/test"), timeout=5)
    name = answer["value"]["holder"] if answer["found"] else None
    return next((w for w in workers if w.name == name), None)


@pytest.mark.timeout(120 + 2 * SECONDS)
def test_the_lock_stays_exclusive_under_owner_kills_pauses_and_a_leader_kill(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    history, guard = History(), threading.Lock()
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        workers = [Worker(cluster.peers, f"w{i}", history, guard) for i in range(3)]
        spawned = len(workers)
        faults = []
        try:
            start = time.monotonic()
            leader_killed = False
            while time.monotonic() - start < SECONDS:
                time.sleep(rng.uniform(1.0, 2.5))
                victim = _holder(cluster.peers, workers) or rng.choice(workers)
                roll = rng.random()
                if not leader_killed and time.monotonic() - start > SECONDS / 2:
                    leader = cluster.wait_for_leader()
                    cluster.kill(leader)
                    faults.append(f"kill leader {leader}")
                    time.sleep(1.0)
                    cluster.start_peer(leader)
                    leader_killed = True
                elif roll < 0.5:
                    victim.stop()
                    faults.append(f"kill -9 {victim.name}")
                    workers.remove(victim)
                    workers.append(Worker(cluster.peers, f"w{spawned}", history, guard))
                    spawned += 1
                else:
                    victim.process.send_signal(signal.SIGSTOP)
                    faults.append(f"pause {victim.name}")
                    time.sleep(TIMEOUT + 1.0)  # past its session timeout: it loses the lock
                    victim.process.send_signal(signal.SIGCONT)
            time.sleep(2 * TIMEOUT)
        finally:
            for worker in workers:
                worker.stop()
        with LightSession(cluster.peers) as reader:
            answer = reader.query(kv.get("resource"), timeout=10)
        resource = answer["value"] if answer["found"] else []
    with guard:
        problems = check(history, resource)
        print(
            f"{len(history.acquired)} acquisitions, {len(history.released)} releases, "
            f"{len(history.ops)} fenced ops, {len(history.fenced)} refused as stale; "
            f"faults: {faults}"
        )
        assert not problems, "\n".join(problems)
        assert len(history.acquired) >= 20  # it made progress through the faults
        assert history.ops  # and the resource was used

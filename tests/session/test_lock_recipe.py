"""The lock recipe under holder kills, holder pauses and a leader kill, checked against
the committed log: replaying it shows, entry by entry, who held the lock key, so every
acquisition a holder reported must be the creation of the key (free until then) for that
holder, and every release it reported the removal of its own hold. The fenced resource
must only ever have seen tokens in order. ``ZRAFT_LOCK_SECONDS`` runs it longer (default 20).
"""

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
from typing import Any

import pytest

from tests.support.cluster_support import applied_everywhere, local_cluster
from zraft.actors.state_machine import ReplicatedState
from zraft.backends import kv
from zraft.backends.kv import KeyValueBackend
from zraft.core import Configuration
from zraft.session import LightSession
from zraft.storage import SegmentedLog

TIMEOUT = 1.5
SECONDS = float(os.environ.get("ZRAFT_LOCK_SECONDS", "20"))
LOCK_KEY = "locks/test"


@dataclass
class History:
    acquired: dict[int, str] = field(default_factory=dict)  # token -> worker
    released: dict[int, int] = field(default_factory=dict)  # token -> index of the release
    ops: dict[int, str] = field(default_factory=dict)  # token -> worker, fenced op done
    fenced: list[int] = field(default_factory=list)


@dataclass
class Holds:
    """The lock key's life, from the log: creations (index -> holder), removals, and
    overwrites of a held key (which a correct lock never does)."""

    created: dict[int, str] = field(default_factory=dict)
    removed: set[int] = field(default_factory=set)
    overwritten: list[int] = field(default_factory=list)


def replay(entries: list[Any]) -> Holds:
    state = ReplicatedState(KeyValueBackend(), Configuration.of([]))
    holds = Holds()

    def current() -> Any:
        answer = state.backend.query(kv.get(LOCK_KEY)).data
        return answer["value"] if answer["found"] else None

    before = None
    for entry in entries:
        state.apply([entry])
        after = current()
        if before is None and after is not None:
            holds.created[entry.index] = after["holder"]
        elif before is not None and after is None:
            holds.removed.add(entry.index)
        elif before != after:
            holds.overwritten.append(entry.index)
        before = after
    return holds


def check(history: History, holds: Holds, resource: list[list[object]]) -> list[str]:
    """Everything wrong with a run (empty: mutual exclusion and fencing held)."""
    problems = [f"the held lock was overwritten at {i}" for i in holds.overwritten]
    for token, worker in sorted(history.acquired.items()):
        if holds.created.get(token) != worker:
            problems.append(
                f"{worker} reported taking the lock at {token}, but the log shows "
                f"{holds.created.get(token, 'no free lock taken')} there"
            )
    for token, end in sorted(history.released.items()):
        later = [t for t in holds.created if token < t < end]
        if end not in holds.removed or later:
            problems.append(f"the hold {token}..{end} was not one hold (taken at {later})")
    seen = [entry[0] for entry in resource]
    if seen != sorted(seen):
        problems.append(f"the resource saw tokens out of order: {seen}")
    for token, worker in history.ops.items():
        if [token, worker] not in resource:
            problems.append(f"acknowledged op of {worker} with token {token} is missing")
    return problems


def test_the_checker_catches_a_lock_taken_while_held() -> None:
    history = History({10: "a", 20: "b"}, {10: 15}, {10: "a", 20: "b"})
    holds = Holds({10: "a", 20: "b"}, {15})
    assert check(history, holds, [[10, "a"], [20, "b"]]) == []
    # b reports the lock at 12, but the log shows the key was held by a (no creation).
    taken_while_held = History({10: "a", 12: "b"}, {10: 15})
    assert "no free lock taken" in check(taken_while_held, Holds({10: "a"}, {15}), [])[0]
    assert "overwritten" in check(history, Holds({10: "a", 20: "b"}, {15}, [12]), [])[0]
    assert "out of order" in check(history, holds, [[20, "b"], [10, "a"]])[0]
    assert "missing" in check(history, holds, [[10, "a"]])[0]


def test_replay_sees_creations_removals_and_overwrites() -> None:
    from zraft.actors.commands import Command, CommandKind
    from zraft.core import Entry, EntryKind

    def write(index: int, command: dict[str, Any]) -> Entry:
        data = Command(CommandKind.WRITE, "c", index, 0, command).encode()
        return Entry(index, 1, EntryKind.NORMAL, data)

    holds = replay(
        [
            write(1, kv.cas(LOCK_KEY, None, {"holder": "a"})),
            write(2, kv.delete(LOCK_KEY)),
            write(3, kv.put(LOCK_KEY, {"holder": "b"})),
            write(4, kv.put(LOCK_KEY, {"holder": "c"})),  # a broken lock's overwrite
        ]
    )
    assert (holds.created, holds.removed, holds.overwritten) == ({1: "a", 3: "b"}, {2}, [4])


class Worker:
    def __init__(self, peers: list[str], name: str, history: History, lock: threading.Lock):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.lock_worker", ",".join(peers), str(TIMEOUT),
             name],  # fmt: skip
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
        answer = reader.query(kv.get(LOCK_KEY), timeout=5)
    name = answer["value"]["holder"] if answer["found"] else None
    return next((w for w in workers if w.name == name), None)


def _committed_entries(cluster: Any) -> list[Any]:
    """Every entry up to a last write that all peers applied, read from one peer's log
    (snapshots are off for this test, so the log is whole)."""
    with LightSession(cluster.peers) as writer:
        end = writer.write_indexed(kv.put("end", 1), timeout=10).index
    deadline = time.monotonic() + 20
    while not applied_everywhere(cluster, cluster.peers, end):
        assert time.monotonic() < deadline, "peers never caught up"
        time.sleep(0.1)
    peer = cluster.peers[0]
    cluster.kill(peer)  # it holds the log's lock file
    log = SegmentedLog(cluster.data_dir(peer) / "log")
    try:
        assert log.first_index == 1, "the log was compacted: the history is incomplete"
        return log.entries(1, end + 1)
    finally:
        log.close()


@pytest.mark.timeout(120 + 2 * SECONDS)
def test_the_lock_stays_exclusive_under_owner_kills_pauses_and_a_leader_kill(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    history, guard = History(), threading.Lock()
    with local_cluster(tmp_path, 3, "--max-log-count", "100000000") as cluster:
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
        holds = replay(_committed_entries(cluster))
    with guard:
        problems = check(history, holds, resource)
        print(
            f"{len(history.acquired)} acquisitions, {len(history.released)} releases, "
            f"{len(history.ops)} fenced ops, {len(history.fenced)} refused as stale; "
            f"faults: {faults}"
        )
        assert not problems, "\n".join(problems)
        assert len(history.acquired) >= 20  # it made progress through the faults
        assert history.ops  # and the resource was used

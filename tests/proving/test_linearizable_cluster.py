"""Concurrent clients against a real cluster under kills, pauses and restarts: the
recorded history must be linearizable (checked per key by zraft.linearizability)."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.support.cluster_support import local_cluster
from zraft.backends import kv
from zraft.linearizability import History, check
from zraft.session import ClientError, LightSession, Rejected

KEYS = [f"k{i}" for i in range(4)]
RUN_SECONDS = 8.0


def _client(peers: list[str], history: History, name: int, stop: threading.Event) -> None:
    rng = random.Random(name)
    with LightSession(peers, election_timeout=0.5) as session:
        while not stop.is_set():
            key = rng.choice(KEYS)
            roll = rng.random()
            value = rng.randint(0, 4)
            if roll < 0.4:
                handle = history.invoke(name, "read", key)
            elif roll < 0.7:
                handle = history.invoke(name, "write", key, value=value)
            else:
                expected = rng.choice([None, 0, 1, 2, 3, 4])
                handle = history.invoke(name, "cas", key, value=value, expected=expected)
            try:
                if roll < 0.4:
                    result = session.query(kv.get(key), timeout=3)
                    history.ok(handle, result["value"] if result["found"] else None)
                elif roll < 0.7:
                    session.write(kv.put(key, value), timeout=3)
                    history.ok(handle)
                else:
                    result = session.write(kv.cas(key, expected, value), timeout=3)
                    history.ok(handle, result["swapped"])
            except Rejected:
                history.fail(handle)
            except ClientError:
                history.unknown(handle)  # timed out: it may or may not have happened


@pytest.mark.timeout(300)
def test_histories_under_kills_pauses_and_restarts_are_linearizable(tmp_path: Path) -> None:
    history = History(path=tmp_path / "history.jsonl")
    with local_cluster(tmp_path / "data", 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        stop = threading.Event()
        clients = [
            threading.Thread(target=_client, args=(cluster.peers, history, n, stop))
            for n in range(4)
        ]
        for thread in clients:
            thread.start()
        rng = random.Random(5)
        deadline = time.monotonic() + RUN_SECONDS
        faults = 0
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.5, 1.2))
            leader = cluster.leader() or rng.choice(cluster.peers)
            if rng.random() < 0.5:
                cluster.kill(leader)
                time.sleep(rng.uniform(0.2, 0.8))
                cluster.start_peer(leader)
            else:
                cluster.signal(leader, signal.SIGSTOP)
                time.sleep(rng.uniform(0.6, 1.2))
                cluster.signal(leader, signal.SIGCONT)
            faults += 1
        stop.set()
        for thread in clients:
            thread.join(timeout=30)
        history.close()
    operations = history.operations()
    done = [op for op in operations if op.status == "ok"]
    result = check(history, timeout=120)
    print(f"{len(operations)} operations ({len(done)} ok), {faults} faults: {result.ok}")
    assert len(done) > 50 and faults >= 4
    assert result.ok is True, result.describe()

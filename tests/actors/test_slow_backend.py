"""A backend that is quick until it is not: committed entries are applied on the session
actor's own thread, so a slow apply holds up nothing but applying: the peer's loop answers
at once and the cluster keeps its leader."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.support.cluster_support import local_cluster
from zraft.backends import kv
from zraft.session import LightSession

BACKEND = ("--backend", "tests.support.slow_backend:SlowKeyValue")


@pytest.mark.timeout(180)
def test_a_slow_apply_neither_costs_the_leader_nor_stalls_the_loop(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, *BACKEND) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        term = cluster.status(leader)["term"]  # type: ignore[index]
        with LightSession(cluster.peers, timeout=30) as session:
            for i in range(50):  # quick writes first
                session.write(kv.put(f"k{i}", i))

            # 3 s on the state machine actor's thread: the loop still answers at once.
            started = time.monotonic()
            with LightSession(cluster.peers, timeout=30) as writer:
                done = threading.Event()

                def slow_write() -> None:
                    writer.write(kv.put("slow/3", 1))
                    done.set()

                thread = threading.Thread(target=slow_write, daemon=True)
                thread.start()
                time.sleep(0.5)  # the slow write is being applied now
                answered = time.monotonic()
                status = cluster.status(leader, timeout=1.0)
                assert status is not None and time.monotonic() - answered < 1.0
                assert not done.is_set()  # still applying: the answer came from the loop
                thread.join(30)
                assert done.is_set()
            assert time.monotonic() - started >= 3
        after = cluster.status(leader)
        assert after is not None and after["role"] == "leader" and after["term"] == term, after

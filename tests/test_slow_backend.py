"""A backend that is quick until it is not: the peer applies quick batches on its loop's
thread, but a slow apply must not cost the cluster its leader, and after one slow turn the
slow work goes to the session actor's own thread, where it holds up nothing but applying."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.cluster_support import local_cluster
from zraft.backends import kv
from zraft.session import LightSession

BACKEND = ("--backend", "tests.slow_backend:SlowKeyValue")


@pytest.mark.timeout(180)
def test_a_slow_apply_neither_costs_the_leader_nor_stalls_the_loop(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, *BACKEND) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        term = cluster.status(leader)["term"]  # type: ignore[index]
        with LightSession(cluster.peers, timeout=30) as session:
            for i in range(50):  # quick writes: the apply cost gets measured, batches go inline
                session.write(kv.put(f"k{i}", i))
            inline_before = cluster.status(leader)["metrics"]["apply_batches_inline"]  # type: ignore[index]
            assert inline_before > 0

            # 0.3 s on the loop's thread, once: more than 50 ms, so inlining pauses.
            session.write(kv.put("slow/0.3", 1))
            metrics = cluster.status(leader)["metrics"]  # type: ignore[index]
            assert metrics["apply_inline_pauses"] >= 1, metrics

            # Now 3 s on the session actor's thread: the loop still answers at once.
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

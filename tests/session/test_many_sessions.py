"""Many idle long-lived sessions: none expires while its owner lives; what it costs."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import SOAK
from tests.support.cluster_support import local_cluster
from zraft.backends import kv
from zraft.session import LightSession, Session

SESSIONS = 1000
IDLE_SECONDS = 60.0 if SOAK else 10.0
TIMEOUT = 2.0


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.timeout(600 if SOAK else 240)
def test_a_thousand_idle_sessions_stay_alive(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        sessions = []
        try:
            for i in range(SESSIONS):
                session = Session(cluster.peers, session_timeout=TIMEOUT)
                session.write(kv.put(f"present/{i}", i), temporary=True)
                sessions.append(session)
            pids = [cluster.processes[p].pid for p in cluster.peers]
            before = [_cpu(pid) for pid in pids]
            time.sleep(IDLE_SECONDS)
            spent = [_cpu(pid) - b for pid, b in zip(pids, before, strict=True)]
            assert not any(s.expired for s in sessions)
            with LightSession(cluster.peers) as reader:
                listing = reader.query(kv.list_prefix("present/"), timeout=10)
            assert len(listing["items"]) == SESSIONS, "a live session's key expired"
            cores = sum(spent) / IDLE_SECONDS
            print(
                f"{SESSIONS} idle sessions for {IDLE_SECONDS:.0f}s: the 3 peers used "
                f"{cores:.3f} cores together, {cores / SESSIONS * 1e6:.0f} us of CPU per "
                "session per second"
            )
        finally:
            for session in sessions:
                session.close()

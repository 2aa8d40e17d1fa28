"""Long-lived sessions against real processes: ephemeral data lives exactly as long as its
owner, failover never expires a live session, a paused owner finds its session gone."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cluster_support import ELECTION_TIMEOUT_MS, local_cluster
from zraft.backends import kv
from zraft.session import LightSession, Session, SessionExpired

TIMEOUT = 1.5  # the session's, seconds
E = ELECTION_TIMEOUT_MS / 1000


def _owner(peers: list[str], key: str) -> subprocess.Popen[str]:
    owner = subprocess.Popen(
        [sys.executable, "-m", "tests.support.session_owner", ",".join(peers), str(TIMEOUT), key],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
    return owner


def _found(reader: LightSession, key: str) -> bool:
    return bool(reader.query(kv.get(key), timeout=5)["found"])


@pytest.mark.timeout(120)
def test_ephemeral_key_vanishes_after_its_owner_is_killed_and_not_before(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        owner = _owner(cluster.peers, "presence")
        try:
            with LightSession(cluster.peers) as reader:
                time.sleep(2 * TIMEOUT)  # idle but alive: kept by its pings
                assert _found(reader, "presence")
                owner.kill()
                killed = time.monotonic()
                while _found(reader, "presence"):
                    assert time.monotonic() - killed < TIMEOUT + E + 1.0, "never expired"
                    time.sleep(0.02)
                gone = time.monotonic() - killed
        finally:
            owner.kill()
            owner.wait(timeout=10)
        print(f"temporary key gone {gone:.2f}s after kill -9 (timeout {TIMEOUT}s)")
        # Its last ping was at most timeout/2 before the kill; the leader waits the full
        # timeout after it (one tick of rounding), and replicating the expiry takes a moment.
        assert TIMEOUT / 2 - 0.1 <= gone <= TIMEOUT + E


@pytest.mark.timeout(120)
def test_a_live_session_survives_a_leader_kill(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        with (
            Session(cluster.peers, session_timeout=TIMEOUT) as session,
            LightSession(cluster.peers) as reader,
        ):
            session.write(kv.put("mine", 1), temporary=True)
            cluster.kill(leader)
            cluster.wait_for_leader(among=[p for p in cluster.peers if p != leader])
            time.sleep(2 * TIMEOUT)  # idle through the failover
            assert _found(reader, "mine")
            session.write(kv.put("mine-too", 2), temporary=True)
        with LightSession([p for p in cluster.peers if p != leader]) as reader:
            assert not _found(reader, "mine") and not _found(reader, "mine-too")  # closed


@pytest.mark.timeout(120)
def test_a_paused_owner_finds_its_session_expired(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        owner = _owner(cluster.peers, "paused")
        assert owner.stdin is not None and owner.stdout is not None
        try:
            owner.send_signal(signal.SIGSTOP)
            time.sleep(TIMEOUT + E + 1.0)
            with LightSession(cluster.peers) as reader:
                assert not _found(reader, "paused")
            owner.send_signal(signal.SIGCONT)
            owner.stdin.write("write\n")
            owner.stdin.flush()
            assert owner.stdout.readline().strip() == "expired"
        finally:
            owner.kill()
            owner.wait(timeout=10)


@pytest.mark.timeout(60)
def test_an_expired_session_refuses_every_write(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        session = Session(cluster.peers, session_timeout=1.0)
        try:
            session.write(kv.put("t", 1), temporary=True)
            session._closed.set()  # its keep-alive stops: the owner goes silent
            session._keepalive.join()
            time.sleep(1.0 + E + 0.5)
            with pytest.raises(SessionExpired):
                session.write(kv.put("plain", 1))
        finally:
            session.close()

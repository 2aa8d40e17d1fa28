"""The two ways to run against real peer processes: side-car clients and an embedded peer;
ephemeral grants through a long-lived session."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import casbin
import pytest
from sqlalchemy_adapter import Adapter as SQLAdapter

from zraft.casbin.cluster import BACKEND, connect, embedded
from zraft.casbin.sync import WatchWaker
from zraft.local import LocalCluster
from zraft.session import Session
from zraft.settings import Settings

MODELS = Path(__file__).parent / "casbin_models"
RBAC = str(MODELS / "rbac_model.conf")


@pytest.mark.timeout(60)
def test_side_car_clients_read_their_writes_and_follow_each_other(tmp_path: Path) -> None:
    with LocalCluster(3, tmp_path, extra_args=["--backend", BACKEND]) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        enforcers = [casbin.SyncedEnforcer(RBAC), casbin.Enforcer(RBAC),
                     casbin.DistributedEnforcer(RBAC)]
        nodes = [connect(e, cluster.peers) for e in enforcers]
        try:
            a, b, c = enforcers
            assert a.add_policy("admin", "data1", "read") is True
            assert a.add_policy("admin", "data1", "read") is False
            assert b.add_grouping_policy("alice", "admin") is True
            assert b.enforce("alice", "data1", "read")  # its own write, at once
            # c made no call; it follows within its polling interval
            nodes[2].sync.wait_for(nodes[1].sync.applied_seq, 5)
            assert c.enforce("alice", "data1", "read")
            assert c.remove_grouping_policy("alice", "admin") is True
            for node in nodes:
                assert node.sync.wait_for(nodes[2].sync.applied_seq, 5)
            assert not any(e.enforce("alice", "data1", "read") for e in enforcers)
        finally:
            for node in nodes:
                node.close()


@pytest.mark.timeout(60)
def test_an_embedded_peer_serves_its_own_enforcer(tmp_path: Path) -> None:
    with LocalCluster(3, tmp_path / "peers", extra_args=["--backend", BACKEND]) as cluster:
        own, *others = cluster.peers
        cluster.start(others)
        settings = Settings.load(peer_id=own, peers=cluster.peers, data_dir=tmp_path / "own",
                                 backend=BACKEND)
        url = f"sqlite:///{tmp_path / 'policy.db'}"
        e = casbin.Enforcer(RBAC)
        node = embedded(e, settings, adapter=SQLAdapter(url), persist=True)
        side = casbin.Enforcer(RBAC)
        client = connect(side, cluster.peers)
        try:
            assert e.add_policy("bob", "data2", "write")
            assert client.sync.wait_for(node.sync.applied_seq, 5)
            assert side.enforce("bob", "data2", "write")
            assert node.runtime is not None and not node.runtime.failed.is_set()
            status = cluster.status(own)
            assert status is not None and status["applied"] > 0
            # The instance hosting the leader writes to the database.
            if not node.is_leader_here():
                leader = cluster.wait_for_leader(among=others)
                assert cluster.request(leader, "transfer", own).ok
                cluster.wait_for(node.is_leader_here, 10, "the embedded peer to lead")
            assert side.add_policy("carol", "data1", "read")
            assert node.sync.wait_for(client.sync.applied_seq, 5)
            assert node.persister is not None
            cluster.wait_for(lambda: node.persister.reconciles > 0, 10, "a reconcile")
            assert node.persister.flush()
            check = casbin.Enforcer(RBAC, SQLAdapter(url))
            assert sorted(check.get_policy()) == [["bob", "data2", "write"],
                                                  ["carol", "data1", "read"]]
        finally:
            client.close()
            node.close()


@pytest.mark.timeout(60)
def test_an_ephemeral_grant_vanishes_everywhere_when_its_session_ends(tmp_path: Path) -> None:
    with LocalCluster(3, tmp_path, extra_args=["--backend", BACKEND]) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        a, b = casbin.Enforcer(RBAC), casbin.Enforcer(RBAC)
        granting, watching = connect(a, cluster.peers), connect(b, cluster.peers)
        try:
            assert granting.add_temporary_policy("guest", "data1", "read")
            assert a.enforce("guest", "data1", "read")
            assert watching.sync.wait_for(granting.sync.applied_seq, 5)
            assert b.enforce("guest", "data1", "read")
            granting.end_session()
            seq = granting.sync.applied_seq
            assert watching.sync.wait_for(seq + 1, 10)
            assert not b.enforce("guest", "data1", "read")
            assert granting.sync.wait_for(seq + 1, 10)
            assert not a.enforce("guest", "data1", "read")
        finally:
            granting.close()
            watching.close()


@pytest.mark.timeout(60)
def test_zraft_demo_casbin_shows_agreement_and_a_vanishing_grant(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from zraft.cli import main

    assert main(["--log-level", "WARNING", "demo", "casbin"]) == 0
    out = capsys.readouterr().out
    assert "allow allow allow" in out and "the grant is gone from all three" in out
    assert "the three policies are identical: True" in out


@pytest.mark.timeout(60)
def test_a_watch_driven_waker_follows_changes_without_polling(tmp_path: Path) -> None:
    with LocalCluster(3, tmp_path, extra_args=["--backend", BACKEND]) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        watching_session = Session(cluster.peers, session_timeout=10.0)
        a, b = casbin.Enforcer(RBAC), casbin.Enforcer(RBAC)
        writer = connect(a, cluster.peers, use_watches=True)
        # Idle reads only when a watch fires (the fallback poll is far beyond the test).
        follower = connect(b, cluster.peers, waker=WatchWaker(watching_session, fallback=3600))
        try:
            for i in range(5):
                assert a.add_policy(f"user{i}", "data1", "read")
                seq = writer.sync.applied_seq
                deadline = time.monotonic() + 5
                while follower.sync.applied_seq < seq and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert follower.sync.applied_seq >= seq
                assert b.enforce(f"user{i}", "data1", "read")
        finally:
            writer.close()
            follower.close()
            watching_session.close()


@pytest.mark.timeout(120)
def test_connect_with_an_adapter_waits_for_peers_started_after_it(tmp_path: Path) -> None:
    """Issue 17: the seed write waited no longer than one request (AllPeersFailed within a
    second); like the rest of connect it now waits up to start_timeout."""
    url = f"sqlite:///{tmp_path / 'policy.db'}"
    casbin.Enforcer(RBAC, SQLAdapter(url)).add_policy("admin", "data1", "read")
    with LocalCluster(3, tmp_path / "peers", extra_args=["--backend", BACKEND]) as cluster:
        e = casbin.Enforcer(RBAC)
        outcome: dict[str, Any] = {}

        def start() -> None:
            try:
                outcome["node"] = connect(e, cluster.peers, adapter=SQLAdapter(url),
                                          start_timeout=90)
            except Exception as error:  # reported below
                outcome["error"] = error

        thread = threading.Thread(target=start, daemon=True)
        thread.start()
        thread.join(timeout=2)  # no peer is up yet: connect must still be waiting
        assert thread.is_alive(), outcome
        cluster.start()
        thread.join(timeout=100)
        assert "node" in outcome, outcome
        node = outcome["node"]
        try:
            assert e.enforce("admin", "data1", "read")  # seeded from the adapter
            assert e.add_grouping_policy("alice", "admin") is True
            assert e.enforce("alice", "data1", "read")
        finally:
            node.close()

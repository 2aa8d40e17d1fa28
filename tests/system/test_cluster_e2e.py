"""A real cluster: peer processes on 127.0.0.1 talking ZeroMQ, with kills and restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.support.cluster_support import ELECTION_TIMEOUT_MS, applied_everywhere, local_cluster
from zraft.backends import kv
from zraft.session import LightSession


@pytest.mark.timeout(120)
@pytest.mark.parametrize("size", [3, 5])
def test_cluster_elects_and_replicates_to_every_peer(tmp_path: Path, size: int) -> None:
    with local_cluster(tmp_path, size) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        for i in range(20):
            cluster.write(kv.put(f"k{i}", i))
        commit = cluster.status(leader)["commit"]  # type: ignore[index]
        cluster.wait_for(
            lambda: applied_everywhere(cluster, cluster.peers, commit), 20, "every peer to apply"
        )
        for peer in cluster.peers:
            assert cluster.query(peer, kv.get("k19"), local=True) == {"found": True, "value": 19}
        terms = {cluster.status(p)["term"] for p in cluster.peers}  # type: ignore[index]
        assert len(terms) == 1


@pytest.mark.timeout(120)
def test_leader_kill_elects_a_new_leader_quickly_and_loses_nothing(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        acknowledged = []
        for i in range(50):
            cluster.write(kv.put(f"k{i}", i))
            acknowledged.append(i)
        cluster.kill(leader)
        killed_at = time.time()
        survivors = [p for p in cluster.peers if p != leader]
        new_leader = cluster.wait_for_leader(among=survivors, timeout=10)
        took_over = cluster.status(new_leader)["leader_since"]  # type: ignore[index]
        failover_ms = (took_over - killed_at) * 1000
        print(f"failover: new leader {new_leader} {failover_ms:.0f} ms after kill -9")
        assert failover_ms <= 2 * ELECTION_TIMEOUT_MS
        for i in acknowledged:
            assert cluster.query(new_leader, kv.get(f"k{i}")) == {"found": True, "value": i}
        cluster.write(kv.put("after", 1))


@pytest.mark.timeout(120)
def test_stopped_follower_restarts_and_catches_up_from_the_log(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        follower = next(p for p in cluster.peers if p != leader)
        cluster.write(kv.put("before", 1))
        cluster.kill(follower)
        for i in range(100):
            cluster.write(kv.put(f"k{i}", i))
        cluster.start_peer(follower)
        commit = cluster.status(leader)["commit"]  # type: ignore[index]
        cluster.wait_for(lambda: applied_everywhere(cluster, [follower], commit), 20, "catch-up")
        status = cluster.status(follower)
        assert status is not None
        assert status["metrics"]["snapshot_snapshots_received"] == 0  # the log path
        assert cluster.query(follower, kv.get("k99"), local=True) == {"found": True, "value": 99}


@pytest.mark.timeout(180)
def test_wiped_follower_catches_up_by_snapshot_over_sendfile(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, "--max-log-count", "50") as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        follower = next(p for p in cluster.peers if p != leader)
        for i in range(150):
            cluster.write(kv.put(f"k{i}", i))
        cluster.kill(follower)
        cluster.wipe(follower)
        for i in range(150, 200):
            cluster.write(kv.put(f"k{i}", i))
        leader_status = cluster.status(leader)
        assert leader_status is not None and leader_status["snapshot_index"] >= 150
        # A wiped member lost its votes and log: it comes back as a new member (removed,
        # then added again empty), never under --peers (tests/system/test_operator_mistakes.py).
        others = [p for p in cluster.peers if p != follower]
        with LightSession(others, cluster_id=cluster.cluster_id) as admin:
            admin.remove(follower, timeout=20)
            cluster.start_peer(follower, members=[])
            admin.add_learner(follower, timeout=20)
            commit = admin.status()["commit"]
            cluster.wait_for(
                lambda: applied_everywhere(cluster, [follower], commit), 30, "catch-up"
            )
            admin.promote(follower, timeout=20)
        status = cluster.status(follower)
        assert status is not None
        assert status["metrics"]["snapshot_snapshots_received"] >= 1
        assert status["metrics"]["apply_snapshots_installed"] >= 1
        sender = cluster.status(cluster.leader())  # type: ignore[arg-type]
        assert sender is not None and sender["metrics"]["snapshot_snapshots_sent"] >= 1
        for key in ("k0", "k120", "k199"):
            value = cluster.query(follower, kv.get(key), local=True)
            assert value == {"found": True, "value": int(key[1:])}

"""Clients against real peer processes: create, failover, exactly-once, membership."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_support import local_cluster
from zraft.backends import kv
from zraft.chaos import ProxiedLinks
from zraft.core import Configuration
from zraft.local import LocalCluster, free_ports
from zraft.session import (
    AllPeersFailed,
    BadBackend,
    ClusterExists,
    LightSession,
    NotStable,
    PeersChanged,
    UnreachablePeer,
    ZraftError,
    create,
)
from zraft.transport import ClientChannel, ClientRequest, TransportTimeout

APPEND_LOG = "tests.support.append_backend:AppendLog"

E = 0.5  # election timeout, seconds


class RecordingSession(LightSession):
    """Remembers every request it sent: (time, peer, op)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[float, str, str]] = []

    def _send(self, peer: str, op: str, *args: Any, **kwargs: Any) -> Any:
        self.sent.append((time.monotonic(), peer, op))
        return super()._send(peer, op, *args, **kwargs)


@pytest.mark.timeout(120)
def test_create_and_its_errors(tmp_path: Path) -> None:
    peers = [f"127.0.0.1:{p}" for p in free_ports(3)]
    with pytest.raises(BadBackend):
        create(peers, "no.such.module:Backend", root=tmp_path / "a")
    with create(peers, root=tmp_path / "b") as cluster:
        cluster.session.write(kv.put("k", 1))
        assert cluster.session.members().voters == frozenset(peers)
        assert cluster.session.query(kv.get("k")) == {"found": True, "value": 1}
    with pytest.raises(ClusterExists):
        create(peers, root=tmp_path / "b")
    (lonely,) = free_ports(1)
    with pytest.raises(UnreachablePeer):
        create([f"127.0.0.1:{lonely}"], timeout=1.0)


@pytest.mark.timeout(60)
def test_a_session_from_one_peer_reads_the_configuration(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        follower = next(p for p in cluster.peers if p != leader)
        with LightSession(follower) as session:
            assert sorted(session.peers) == sorted(cluster.peers)
            session.write(kv.put("k", 1))
            assert session.leader == leader


@pytest.mark.timeout(60)
def test_a_transfer_asked_of_a_follower_follows_the_redirect(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        first, target = [p for p in cluster.peers if p != leader]
        with LightSession([first, target, leader]) as session:  # believes `first` leads
            assert session.transfer_leadership(target, timeout=10) == target
        assert cluster.wait_for_leader() == target


@pytest.mark.timeout(120)
def test_a_session_listing_two_of_three_peers_one_of_them_down_still_writes(
    tmp_path: Path,
) -> None:
    """The founding a session pins is settled by the members the answers name, not only
    by the peers it lists: one listed peer down, the unlisted third one vouches."""
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        a, b, c = cluster.peers
        cluster.stop_peer(c)
        with LightSession([b, c], timeout=10) as session:
            session.write(kv.put("k", 1))
            assert session.cluster_uuid
        with LightSession([a, c], timeout=10) as session:
            assert session.query(kv.get("k")) == {"found": True, "value": 1}


@pytest.mark.timeout(120)
def test_members_come_from_the_leader_and_settled_waits_out_a_change(tmp_path: Path) -> None:
    # A long election timeout: with its followers paused, the leader leads on for seconds
    # (check-quorum), long enough to watch a change it cannot commit.
    with LocalCluster(3, tmp_path, election_timeout=3000) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader(timeout=30)
        b, c = [p for p in cluster.peers if p != leader]
        refused = cluster.wait_for(  # once b has heard from the leader, it names it
            lambda: (reply := cluster.request(b, "members")).leader and reply, 10, "a redirect"
        )
        assert (refused.ok, refused.error, refused.leader) == (False, "not_leader", leader)
        (port,) = free_ports(1)
        newcomer = f"127.0.0.1:{port}"  # a learner need not be up for a change to commit
        with (
            RecordingSession([b, c, leader], election_timeout=3.0) as session,  # b "leads"
            LightSession([leader], election_timeout=3.0) as changer,
        ):
            assert session.members(settled=True).voters == frozenset(cluster.peers)
            assert session.sent[-1][1:] == (leader, "members"), "a follower's copy was used"
            for peer in (b, c):
                cluster.signal(peer, signal.SIGSTOP)
            try:
                with pytest.raises(ZraftError):
                    changer.add_learner(newcomer, timeout=0.5)  # appended, not committed
                pending = session.members()
                assert pending.joint and pending.learners == {newcomer}
                with pytest.raises(NotStable):
                    session.members(timeout=0.3, settled=True)
            finally:
                for peer in (b, c):
                    cluster.signal(peer, signal.SIGCONT)
            settled = session.members(timeout=30, settled=True)
            assert not settled.joint and settled.learners == {newcomer}
            assert settled.voters == frozenset(cluster.peers)


@pytest.mark.timeout(120)
def test_a_membership_change_retried_while_it_is_under_way_waits_for_it(tmp_path: Path) -> None:
    """A change whose first attempt timed out (its joint configuration appended, not yet
    committed) is sent again, as a session's retries do: the leader must take the retry for
    the same change and answer when it settles, not refuse it because the voters in force
    are no longer the ``old`` it names."""
    with LocalCluster(3, tmp_path, election_timeout=3000) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader(timeout=30)
        followers = [p for p in cluster.peers if p != leader]
        (port,) = free_ports(1)
        payload = {
            "voters": sorted(cluster.peers),
            "learners": [f"127.0.0.1:{port}"],
            "old": sorted(cluster.peers),
        }
        outcome: list[Any] = []
        with ClientChannel(cluster.cluster_id, "changer") as channel:
            for peer in followers:
                cluster.signal(peer, signal.SIGSTOP)
            try:
                with pytest.raises(TransportTimeout):  # appended, cannot commit
                    channel.request(leader, ClientRequest(1, "set_members", payload), 0.5)
                retry = threading.Thread(
                    target=lambda: outcome.append(
                        channel.request(leader, ClientRequest(2, "set_members", payload), 20)
                    )
                )
                retry.start()
                time.sleep(0.5)  # the retry reached the leader while the change is joint
            finally:
                for peer in followers:
                    cluster.signal(peer, signal.SIGCONT)
            retry.join(30)
        (reply,) = outcome
        assert reply.ok, reply
        assert Configuration.from_wire(reply.result).learners == {payload["learners"][0]}


@contextmanager
def proxied_cluster(root: Path, size: int) -> Iterator[tuple[LocalCluster, ProxiedLinks]]:
    with local_cluster(root, size) as cluster:
        links = ProxiedLinks(cluster.peers)
        try:
            for peer in cluster.peers:
                cluster.peer_args[peer] = links.routes_for(peer)
            cluster.start()
            yield cluster, links
        finally:
            links.close()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("fault", ["kill", "pause", "partition"])
def test_clients_move_to_the_new_leader_and_leave_the_old_one(tmp_path: Path, fault: str) -> None:
    with proxied_cluster(tmp_path, 3) as (cluster, links):
        old = cluster.wait_for_leader()
        session = RecordingSession(cluster.peers, election_timeout=E)
        acked: list[tuple[float, int]] = []
        stop = threading.Event()

        errors: list[BaseException] = []

        def writer() -> None:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    session.write(kv.put(f"k{i}", i), timeout=10)
                except BaseException as error:  # checked below
                    errors.append(error)
                    return
                acked.append((time.monotonic(), i))

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(1.0)
        fault_at = time.monotonic()
        if fault == "kill":
            cluster.kill(old)
        elif fault == "pause":
            cluster.signal(old, signal.SIGSTOP)
        else:
            links.isolate(old)
        time.sleep(4.0)
        healed_at = time.monotonic()
        stop.set()
        thread.join(timeout=20)
        if fault == "pause":
            cluster.signal(old, signal.SIGCONT)
        links.heal()
        assert not thread.is_alive() and not errors, errors

        after = [t for t, _ in acked if t > fault_at]
        assert after, "no write succeeded after the fault"
        gaps = [b - a for (a, _), (b, _) in zip(acked, acked[1:], strict=False)]
        print(f"{fault}: {len(acked)} writes, longest pause {max(gaps):.2f}s")
        assert max(gaps) < 6 * E, "clients took too long to find the new leader"
        # Once the old leader has had its chance (one attempt timeout plus an election),
        # the session must not keep sending to it.
        settle = fault_at + max(E, 0.2) + 3 * E
        late = [t for t, peer, _ in session.sent if peer == old and settle < t < healed_at]
        assert not late, f"{len(late)} requests went to the old leader after it was left"
        new = cluster.wait_for_leader(among=[p for p in cluster.peers if p != old])
        for _, i in acked[-5:]:
            assert session.query(kv.get(f"k{i}")) == {"found": True, "value": i}
        assert session.leader != old or new == old
        session.close()


@pytest.mark.timeout(60)
def test_all_peers_down_fails_within_fail_timeout(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with LightSession(cluster.peers, election_timeout=E) as session:
            session.write(kv.put("k", 1))
            for peer in cluster.peers:
                cluster.kill(peer)
            started = time.monotonic()
            with pytest.raises(AllPeersFailed):
                session.write(kv.put("k", 2), timeout=30)
            elapsed = time.monotonic() - started
            print(f"all failed after {elapsed:.2f}s (fail_timeout {session.fail_timeout}s)")
            assert elapsed <= session.fail_timeout


@pytest.mark.timeout(240)
def test_writes_are_applied_exactly_once_under_leader_kills(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, "--backend", APPEND_LOG) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        stop = threading.Event()
        acknowledged: list[str] = []
        errors: list[BaseException] = []

        def client(name: str) -> None:
            with LightSession(cluster.peers, election_timeout=E) as session:
                i = 0
                while not stop.is_set():
                    i += 1
                    item = f"{name}-{i}"
                    try:
                        session.write({"append": item}, timeout=15)
                    except BaseException as error:  # recorded, the test fails below
                        errors.append(error)
                        return
                    acknowledged.append(item)

        threads = [threading.Thread(target=client, args=(f"c{n}",)) for n in range(3)]
        for thread in threads:
            thread.start()
        for _ in range(3):
            time.sleep(1.5)
            leader = cluster.leader()
            if leader is not None:
                cluster.kill(leader)
                time.sleep(0.3)
                cluster.start_peer(leader)
        time.sleep(1.0)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert not errors, errors
        with LightSession(cluster.peers, election_timeout=E) as session:
            applied = session.query(None, timeout=15)
        duplicates = {item for item in applied if applied.count(item) > 1}
        assert not duplicates, f"applied twice: {sorted(duplicates)[:10]}"
        missing = set(acknowledged) - set(applied)
        assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
        print(f"{len(acknowledged)} acknowledged appends, {len(applied)} applied, no duplicate")


@pytest.mark.timeout(300)
def test_membership_changes_while_writing_end_with_none_of_the_original_peers(
    tmp_path: Path,
) -> None:
    with local_cluster(tmp_path, 7) as cluster:
        a, b, c, d, e, f, g = cluster.peers
        for peer in (a, b, c):
            cluster.start_peer(peer, members=[a, b, c])
        for peer in (d, e, f, g):
            cluster.start_peer(peer, members=[])  # empty: they wait to be added
        cluster.wait_for_leader(among=[a, b, c])
        session = LightSession([a, b, c], election_timeout=E)
        stop = threading.Event()
        acked: list[int] = []
        errors: list[BaseException] = []

        def writer() -> None:
            with LightSession([a, b, c, d, e, f], election_timeout=E) as own:
                i = 0
                while not stop.is_set():
                    i += 1
                    try:
                        own.write(kv.put(f"w{i}", i), timeout=15)
                    except BaseException as error:  # checked below
                        errors.append(error)
                        return
                    acked.append(i)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        time.sleep(0.5)
        config = session.set_new_conf([a, b, c, d, e], [a, b, c], timeout=20)
        assert config.voters == frozenset({a, b, c, d, e})
        with pytest.raises(PeersChanged):
            session.set_new_conf([a, b, c], [a, b, c], timeout=5)
        time.sleep(0.5)
        config = session.set_new_conf([d, e, f], [a, b, c, d, e], timeout=20)
        assert config.voters == frozenset({d, e, f})
        # Removed peers stop themselves once the new configuration is committed.
        cluster.wait_for(
            lambda: not any(cluster.alive(p) for p in (a, b, c)), 20, "removed peers to stop"
        )
        # A learner joins, catches up, then is promoted.
        session.add_learner(g, timeout=20)
        target = session.status()["commit"]
        cluster.wait_for(
            lambda: (cluster.status(g) or {}).get("applied", 0) >= target, 30, "learner catch-up"
        )
        config = session.promote(g, timeout=20)
        assert config.voters == frozenset({d, e, f, g}) and not config.learners
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive() and not errors, errors
        assert len(acked) > 20
        for i in (acked[0], acked[len(acked) // 2], acked[-1]):
            assert session.query(kv.get(f"w{i}")) == {"found": True, "value": i}
        session.close()

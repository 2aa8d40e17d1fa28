"""What an operator gets wrong, on real peer processes: the cluster never has two leaders in
a term, never loses or rewrites an acknowledged write, and each mistake is refused or
warned about in one line.

Each test is one mistake. A ``LeaderWatch`` polls every live peer's status throughout and
fails the test if two peers ever claim leadership of the same term.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_support import local_cluster
from zraft.backends import kv
from zraft.local import ClusterError, LocalCluster, free_ports
from zraft.session import AsyncLightSession, LightSession, OtherFounding, ZraftError, create
from zraft.transport import TransportTimeout

PEER_EXIT_S = 15.0  # a refused start exits within this (it never reaches an election)


class LeaderWatch:
    """Every leader of each term any peer reported while the watch ran, per founding (a
    peer that founded a cluster of its own leads that one, not ours)."""

    def __init__(self, cluster: LocalCluster) -> None:
        self.cluster = cluster
        self.leaders: dict[tuple[str, int], set[str]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from zraft.transport import ClientChannel, ClientRequest, TransportError

        with ClientChannel(self.cluster.cluster_id, "leader-watch") as channel:
            while not self._stop.is_set():
                for peer in list(self.cluster.processes):
                    with contextlib.suppress(TransportError):
                        reply = channel.request(peer, ClientRequest(1, "status"), 0.3)
                        status = reply.result if reply.ok else None
                        if status and status["role"] == "leader":
                            term = (status["cluster_uuid"], status["term"])
                            self.leaders.setdefault(term, set()).add(peer)
                self._stop.wait(0.05)

    def split_terms(self) -> dict[tuple[str, int], set[str]]:
        return {term: peers for term, peers in self.leaders.items() if len(peers) > 1}

    def __enter__(self) -> LeaderWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


@contextlib.contextmanager
def watched_cluster(tmp_path: Path, size: int) -> Iterator[tuple[LocalCluster, LeaderWatch]]:
    with local_cluster(tmp_path, size) as cluster, LeaderWatch(cluster) as watch:
        yield cluster, watch
        assert not watch.split_terms(), f"two leaders in one term: {watch.split_terms()}"


def start_with_x(cluster: LocalCluster) -> None:
    """Every peer started, a leader elected, and ``x = v1`` acknowledged."""
    cluster.start()
    cluster.wait_for_leader()
    with session(cluster) as s:
        s.write(kv.put("x", "v1"))


def session(cluster: LocalCluster, peers: list[str] | None = None) -> LightSession:
    return LightSession(peers or cluster.peers, cluster_id=cluster.cluster_id, timeout=10)


def peer_log(cluster: LocalCluster, peer: str) -> str:
    return (cluster.data_dir(peer) / "peer.log").read_text(errors="replace")


def exits_refused(cluster: LocalCluster, peer: str) -> str:
    """The refused start's exit: non-zero, soon; returns its output."""
    process = cluster.processes.pop(peer)
    try:
        code = process.wait(timeout=PEER_EXIT_S)
    except subprocess.TimeoutExpired:  # it did not refuse: fail, but leave nothing running
        process.kill()
        process.wait(timeout=10)
        raise
    assert code != 0
    return peer_log(cluster, peer)


def one_line(output: str, needle: str) -> str:
    lines = [line for line in output.splitlines() if needle in line]
    assert len(lines) == 1, f"{needle!r} in {len(lines)} lines:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    return lines[0]


def refusals(cluster: LocalCluster, peer: str, reason: str) -> int:
    """How many frames ``peer`` refused for ``reason``, once it refused any (or fail)."""
    key = f"transport_rejected_{reason}"
    return int(
        cluster.wait_for(
            lambda: (cluster.status(peer) or {}).get("metrics", {}).get(key, 0),
            10,
            f"{peer} to refuse frames ({reason})",
        )
    )


def settled_query(cluster: LocalCluster, peer: str, key: str) -> object:
    """A linearizable read through ``peer``, once it knows a leader."""

    def answer() -> object:
        try:
            return cluster.query(peer, kv.get(key), timeout=5)
        except (ClusterError, TransportTimeout):  # no leader known yet, or a read lost with it
            return None

    return cluster.wait_for(answer, 20, f"{peer} to answer")


def agreed_value(cluster: LocalCluster, key: str) -> object:
    with session(cluster) as s:
        return s.query(kv.get(key))


@pytest.mark.timeout(180)
def test_restart_with_a_different_peers_list_cannot_split_the_cluster(tmp_path: Path) -> None:
    """The reproduction: A restarted alone with ``--peers A`` must not lead alone."""
    with watched_cluster(tmp_path, 3) as (cluster, _):
        a, b, c = cluster.peers
        start_with_x(cluster)
        for peer in (a, b, c):
            cluster.stop_peer(peer)

        cluster.start_peer(a, members=[a])
        with session(cluster, [a]) as alone, pytest.raises(ZraftError):
            alone.write(kv.put("x", "only-on-A"), timeout=3)
        needle = "differs from the cluster's configuration"
        cluster.wait_for(lambda: needle in peer_log(cluster, a), 20, "the warning")
        warning = one_line(peer_log(cluster, a), needle)
        assert f"({a})" in warning and b in warning and c in warning

        cluster.start_peer(b)
        cluster.start_peer(c)
        cluster.wait_for_leader()
        with session(cluster) as s:
            s.write(kv.put("x", "on-B-and-C"))
        for peer in cluster.peers:  # every peer's linearizable answer is the same
            assert settled_query(cluster, peer, "x") == {"found": True, "value": "on-B-and-C"}


@pytest.mark.timeout(180)
def test_restart_with_no_peers_keeps_the_configuration_of_the_log(tmp_path: Path) -> None:
    with watched_cluster(tmp_path, 3) as (cluster, _):
        start_with_x(cluster)
        for peer in cluster.peers:
            cluster.stop_peer(peer)
        for peer in cluster.peers:
            cluster.start_peer(peer, members=[])
        cluster.wait_for_leader()
        assert agreed_value(cluster, "x") == {"found": True, "value": "v1"}
        with session(cluster) as s:
            s.write(kv.put("x", "v2"))
        status = cluster.status(cluster.leader())  # type: ignore[arg-type]
        assert status is not None
        assert sorted(status["config"]["voters"]) == sorted(cluster.peers)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mistake", ["cluster-id", "peer-id"])
def test_a_directory_of_another_cluster_or_peer_is_refused(tmp_path: Path, mistake: str) -> None:
    with watched_cluster(tmp_path, 3) as (cluster, _):
        a, b, _c = cluster.peers
        start_with_x(cluster)
        cluster.stop_peer(a)
        if mistake == "cluster-id":
            cluster.peer_args[a] = ["--cluster-id", "another"]
            cluster.start_peer(a)
            line = one_line(exits_refused(cluster, a), "belongs to cluster")
            assert "'zraft'" in line and "'another'" in line
        else:  # b's settings pointed at a's directory
            cluster.peer_args[b] = ["--data-dir", str(cluster.data_dir(a))]
            cluster.stop_peer(b)
            cluster.start_peer(b)
            line = one_line(exits_refused(cluster, b), "belongs to peer")
            assert a in line and b in line
        cluster.peer_args.clear()
        for peer in cluster.peers:
            if peer not in cluster.processes:
                cluster.start_peer(peer)
        cluster.wait_for_leader()
        assert agreed_value(cluster, "x") == {"found": True, "value": "v1"}


@pytest.mark.timeout(180)
def test_a_wiped_peer_restarted_under_its_old_id_is_refused(tmp_path: Path) -> None:
    """It lost its votes and log: counting it again could elect a leader without an
    acknowledged write. It may come back only as a new member (remove, then add)."""
    with watched_cluster(tmp_path, 3) as (cluster, _):
        cluster.start()
        leader = cluster.wait_for_leader()
        wiped = next(p for p in cluster.peers if p != leader)
        with session(cluster) as s:
            for i in range(20):
                s.write(kv.put(f"k{i}", i))
        cluster.kill(wiped)
        cluster.wipe(wiped)
        cluster.start_peer(wiped)
        line = one_line(exits_refused(cluster, wiped), "will not found a cluster")
        assert "wiped or replaced" in line

        # Started as a joiner instead (no --peers), it is refused on the wire by the
        # members that knew its old directory, and counted.
        cluster.wipe(wiped)
        cluster.start_peer(wiped, members=[])
        with session(cluster, [p for p in cluster.peers if p != wiped]) as s:
            s.write(kv.put("after", 1))
            refusals(cluster, leader, "replaced-peer")
            assert "its data directory was replaced" in peer_log(cluster, leader)
            # The right way back: remove it, then start it empty and add it as a new member.
            cluster.kill(wiped)
            s.remove(wiped, timeout=20)
            cluster.wipe(wiped)
            cluster.start_peer(wiped, members=[])
            s.add_learner(wiped, timeout=20)
            s.promote(wiped, timeout=30)
            s.write(kv.put("back", 1))
        assert settled_query(cluster, wiped, "k19") == {"found": True, "value": 19}


def identity_of(cluster: LocalCluster, peer: str) -> dict[str, Any]:
    identity: dict[str, Any] = json.loads((cluster.data_dir(peer) / "identity.json").read_text())
    return identity


def uuid_of(cluster: LocalCluster, peer: str) -> str:
    """The founding uuid ``peer``'s directory records ('' before it has one, or a file)."""
    try:
        return str(identity_of(cluster, peer)["cluster_uuid"])
    except (OSError, ValueError):
        return ""


def waits_to_found(cluster: LocalCluster, peer: str, *silent: str) -> None:
    """``peer`` is up, has founded nothing, and says it waits for ``silent``."""

    def waiting_line() -> str | None:
        lines = [line for line in peer_log(cluster, peer).splitlines() if "waiting for" in line]
        return lines[-1] if lines else None

    line = cluster.wait_for(waiting_line, 20, f"{peer} to wait for {silent}")
    assert all(other in line for other in silent), line
    assert cluster.alive(peer)
    assert not identity_of(cluster, peer)["cluster_uuid"]


@pytest.mark.timeout(240)
def test_a_wiped_founder_never_founds_again_even_with_every_peer_that_knew_it_down(
    tmp_path: Path,
) -> None:
    """With the peers that ran with A down, nothing up could tell A's wiped directory from a
    first start. So founding waits until every founder has answered once, and each records
    the others' directories: a wiped founder then waits, and is refused by the first peer
    that comes back, instead of founding with those that never met it."""
    with watched_cluster(tmp_path, 3) as (cluster, _):
        a, b, c = cluster.peers
        cluster.start_peer(a)
        cluster.start_peer(b)
        waits_to_found(cluster, a, c)
        waits_to_found(cluster, b, c)
        with session(cluster, [a, b]) as early, pytest.raises(ZraftError):
            early.write(kv.put("x", "early"), timeout=3)

        cluster.start_peer(c)
        cluster.wait_for_leader()
        with session(cluster) as s:
            s.write(kv.put("x", "v1"))
        for peer in cluster.peers:  # recorded at the founding, from the founders' answers
            assert set(identity_of(cluster, peer)["known"]) == set(cluster.peers) - {peer}

        for peer in cluster.peers:
            cluster.stop_peer(peer)
        cluster.wipe(a)
        cluster.start_peer(a)
        waits_to_found(cluster, a, b, c)
        cluster.start_peer(c)
        line = one_line(exits_refused(cluster, a), "will not found a cluster")
        assert "wiped or replaced" in line and c in line

        cluster.start_peer(b)
        cluster.wait_for_leader(among=[b, c])
        with session(cluster, [b, c]) as s:
            assert s.query(kv.get("x")) == {"found": True, "value": "v1"}


@pytest.mark.timeout(180)
def test_a_removed_founder_wiped_and_restarted_with_its_old_flags_is_refused(
    tmp_path: Path,
) -> None:
    """Every founder recorded every other at the founding: a founded peer that does not know
    this directory means it was removed (or never a founder), so it may only join."""
    with watched_cluster(tmp_path, 3) as (cluster, _):
        a, b, c = cluster.peers
        start_with_x(cluster)
        with session(cluster) as s:
            if cluster.leader() == c:
                s.transfer_leadership(a, timeout=20)
            s.remove(c, timeout=20)
            s.write(kv.put("x", "v2"))
        cluster.kill(c)
        cluster.wipe(c)
        cluster.start_peer(c)  # its unit file: --peers a, b, c
        line = one_line(exits_refused(cluster, c), "will not found a cluster")
        assert "without this data directory" in line and "members add" in line
        assert agreed_value(cluster, "x") == {"found": True, "value": "v2"}


@pytest.mark.timeout(180)
def test_a_lone_founder_wiped_and_restarted_founds_another_cluster_the_members_refuse(
    tmp_path: Path,
) -> None:
    """Founded by one peer (``--peers A``, as ``create`` does), then grown: nobody can tell
    A's wiped directory from a first start, but the founding uuid covers the founder's
    directory, so A's new founding is another one and the members refuse all of its frames."""
    with watched_cluster(tmp_path, 3) as (cluster, _):
        a, b, c = cluster.peers
        cluster.start_peer(a, members=[a])
        for peer in (b, c):
            cluster.start_peer(peer, members=[])
        cluster.wait_for_leader(among=[a])
        with session(cluster) as s:
            for peer in (b, c):
                s.add_learner(peer, timeout=20)
                s.promote(peer, timeout=30)
            s.write(kv.put("x", "v1"))
        first = identity_of(cluster, b)["cluster_uuid"]
        cluster.kill(a)
        cluster.wipe(a)
        cluster.start_peer(a, members=[a])
        founded = cluster.wait_for(lambda: uuid_of(cluster, a), 20, "a to found")
        assert founded != first
        cluster.wait_for_leader(among=[b, c])
        with session(cluster, [b, c]) as s:
            s.write(kv.put("x", "v2"))
            assert refusals(cluster, a, "other-founding") > 0  # b and c still reach a
            assert s.query(kv.get("x")) == {"found": True, "value": "v2"}


@pytest.mark.timeout(180)
def test_a_session_never_writes_to_a_peer_wiped_and_founded_again_on_its_own(
    tmp_path: Path,
) -> None:
    """Wiped A, restarted with ``--peers A``, leads a cluster of one under the same cluster
    id; the members refuse it, and so must clients: a new session listing A first settles
    on the founding the others answer, one pinned before the wipe is refused by A and skips
    it, and one pinned to A's founding is refused by everyone else. No write reaches A."""
    with watched_cluster(tmp_path, 3) as (cluster, _):
        a, b, c = cluster.peers
        start_with_x(cluster)
        before = session(cluster, [a, b, c])
        before.write(kv.put("before", 1))
        real = before.cluster_uuid
        assert real == uuid_of(cluster, b) == uuid_of(cluster, a)
        cluster.kill(a)
        cluster.wipe(a)
        cluster.start_peer(a, members=[a])
        lone = cluster.wait_for(lambda: uuid_of(cluster, a), 20, "a to found alone")
        assert lone != real
        cluster.wait_for(lambda: (cluster.status(a) or {}).get("role") == "leader", 20,
                         "a to lead its cluster of one")  # fmt: skip
        cluster.wait_for_leader(among=[b, c])
        with session(cluster, [a, b, c]) as fresh:  # a at the head: tried first
            for i in range(10):
                fresh.write(kv.put(f"fresh{i}", i))
            assert fresh.cluster_uuid == real

        async def async_writes() -> str:
            async with AsyncLightSession([a, b, c], cluster_id=cluster.cluster_id) as s:
                await asyncio.gather(*(s.write(kv.put(f"async{i}", i)) for i in range(10)))
                return s.cluster_uuid

        assert asyncio.run(async_writes()) == real
        for i in range(10):
            before.write(kv.put(f"before{i}", i))
        before.close()
        wrong = LightSession([b, c], cluster_id=cluster.cluster_id, cluster_uuid=lone)
        with wrong, pytest.raises(OtherFounding, match="another founding"):
            wrong.write(kv.put("wrong", 1), timeout=5)
        for key in ("fresh0", "fresh9", "async0", "async9", "before9", "wrong"):
            assert cluster.query(a, kv.get(key), local=True)["found"] is False
        assert agreed_value(cluster, "fresh9") == {"found": True, "value": 9}
        assert agreed_value(cluster, "before9") == {"found": True, "value": 9}
        assert agreed_value(cluster, "async9") == {"found": True, "value": 9}
        assert agreed_value(cluster, "wrong")["found"] is False  # type: ignore[index]
        assert (cluster.status(a) or {}).get("metrics", {}).get(
            "transport_client_other_founding", 0
        ) >= 1


@pytest.mark.timeout(120)
def test_a_created_cluster_founder_whose_raft_state_is_lost_is_refused(tmp_path: Path) -> None:
    """``create`` founds through the ``bootstrap`` op; once that founding entry commits, a
    start that finds the Raft state gone (identity kept) refuses, rather than found again
    with the same directory instance (its fellows would count its empty votes)."""
    peers = [f"127.0.0.1:{port}" for port in free_ports(3)]
    a = peers[0]
    with create(peers, root=tmp_path / "c", timeout=40) as made:
        local = made.local
        made.session.write(kv.put("x", "v1"))
        local.wait_for(
            lambda: not identity_of(local, a)["founding_pending"], 10, "the founding to commit"
        )
        local.kill(a)
        for part in ("log", "hard_state", "snapshots"):
            shutil.rmtree(local.data_dir(a) / part, ignore_errors=True)
        local.start_peer(a, members=[])  # as create started it
        line = one_line(exits_refused(local, a), "Raft state")
        assert "is gone" in line


@pytest.mark.timeout(180)
def test_founding_twice_is_refused(tmp_path: Path) -> None:
    """A new peer listing itself among a running cluster's peers, and a wiped peer founding
    alone: neither founding can reach the running cluster."""
    with watched_cluster(tmp_path, 4) as (cluster, _):
        a, b, c, d = cluster.peers
        for peer in (a, b, c):
            cluster.start_peer(peer, members=[a, b, c])
        cluster.wait_for_leader(among=[a, b, c])
        with session(cluster, [a, b, c]) as s:
            s.write(kv.put("x", "v1"))

        cluster.start_peer(d, members=[a, b, c, d])
        line = one_line(exits_refused(cluster, d), "will not found a cluster")
        assert "already runs a founding" in line

        # a, wiped and started alone, founds a cluster of its own; the others refuse it.
        cluster.kill(a)
        cluster.wipe(a)
        cluster.start_peer(a, members=[a])
        cluster.wait_for_leader(among=[a])
        with session(cluster, [b, c]) as s:
            s.write(kv.put("x", "v2"))
            # b and c's leader still reaches a, which refuses every frame of theirs.
            refusals(cluster, a, "other-founding")
            assert "belongs to another founding" in peer_log(cluster, a)
            assert s.query(kv.get("x")) == {"found": True, "value": "v2"}
        assert settled_query(cluster, a, "x") == {"found": False, "value": None}


@pytest.mark.timeout(240)
def test_a_snapshot_dir_of_another_cluster_or_none_at_all_is_refused(tmp_path: Path) -> None:
    """``snapshot_dir`` apart from the log: pointed at another founding's snapshots, or at
    an empty directory while the log was compacted behind a snapshot, the peer would start
    from state that is not its own. Refused in one line each; its own dir then serves."""
    compacting = ("--max-log-count", "20", "--max-segment-size", "2048")  # logs compacted
    with (
        local_cluster(tmp_path / "one", 3, *compacting) as one,
        local_cluster(tmp_path / "two", 1, *compacting) as two,
    ):
        for cluster in (one, two):
            cluster.start()
            cluster.wait_for_leader()
            with session(cluster) as s:
                for i in range(60):
                    s.write(kv.put(f"k{i}", i))
        a, other = one.peers[0], two.peers[0]
        for cluster, peer in ((one, a), (two, other)):
            cluster.wait_for(lambda c=cluster, p=peer: any((c.data_dir(p) / "snapshots").glob("*")),
                             20, f"{peer} to take a snapshot")  # fmt: skip
        one.wait_for(lambda: not any((one.data_dir(a) / "log").glob("00000000000000000001*")),
                     20, f"{a}'s log to be compacted")  # fmt: skip
        one.stop_peer(a)
        one.peer_args[a] = ["--snapshot-dir", str(two.data_dir(other))]
        one.start_peer(a)
        line = one_line(exits_refused(one, a), "another founding")
        assert str(two.data_dir(other)) in line
        one.peer_args[a] = ["--snapshot-dir", str(tmp_path / "empty")]
        one.start_peer(a)
        one_line(exits_refused(one, a), "holds no snapshot")
        one.peer_args[a] = []
        one.start_peer(a)
        assert settled_query(one, a, "k59") == {"found": True, "value": 59}


@pytest.mark.timeout(120)
def test_two_peers_given_the_same_id(tmp_path: Path) -> None:
    """A second process under a running peer's id, with a directory of its own: refused,
    whether it is told to found or to join."""
    with watched_cluster(tmp_path, 3) as (cluster, _):
        a, b, c = cluster.peers
        start_with_x(cluster)
        twin = LocalCluster(0, tmp_path / "twin", cluster_id=cluster.cluster_id)
        twin.peers = list(cluster.peers)
        try:
            twin.start_peer(a)
            assert twin.processes[a].wait(timeout=PEER_EXIT_S) != 0  # else close() kills it
            output = (twin.data_dir(a) / "peer.log").read_text()
            assert "Traceback" not in output
            assert "will not found a cluster" in output or "in use" in output
        finally:
            twin.close()
        assert agreed_value(cluster, "x") == {"found": True, "value": "v1"}
        assert all(cluster.alive(p) for p in (a, b, c))


@pytest.mark.timeout(180)
def test_a_follower_that_missed_a_removal_accepts_the_peer_added_back(tmp_path: Path) -> None:
    """P is removed, wiped and added back while C is down: C, catching up, must forget P's
    old directory when it applies the removal, not refuse the new one forever (it would
    then never follow P as leader)."""
    with watched_cluster(tmp_path, 4) as (cluster, _):
        a, b, c, p = cluster.peers
        cluster.start()
        cluster.wait_for_leader()
        with session(cluster) as s:
            s.write(kv.put("x", 1))
        cluster.wait_for(
            lambda: p in json.loads((cluster.data_dir(c) / "identity.json").read_text())["known"],
            10,
            "c to know p's directory",
        )
        cluster.stop_peer(c)
        with session(cluster, [a, b, p]) as s:
            s.remove(p, timeout=20)
            cluster.kill(p)
            cluster.wipe(p)
            cluster.start_peer(p, members=[])
            s.add_learner(p, timeout=20)
            s.promote(p, timeout=30)
            for i in range(10):
                s.write(kv.put(f"k{i}", i))
        cluster.start_peer(c)
        with session(cluster) as s:
            s.write(kv.put("back", 1))
            s.transfer_leadership(p, timeout=20)
            s.write(kv.put("under-p", 1))
        assert settled_query(cluster, c, "under-p") == {"found": True, "value": 1}
        # c forgot p's old directory when it applied the removal, and knows the new one (a
        # vote of p's that reached c before it caught up was rightly refused meanwhile).
        new_p = identity_of(cluster, p)["instance"]
        cluster.wait_for(
            lambda: identity_of(cluster, c)["known"].get(p) == new_p, 10, "c to know p anew"
        )

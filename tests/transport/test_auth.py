"""Authentication and replay with real peer processes.

* CURVE on: a peer process whose key is not authorized cannot take part (its connections
  fail the handshake), and a peer of another cluster, even with an authorized key, is
  refused frame by frame (``wrong-cluster``); neither disturbs the term or the leader.
  (Clients with unknown keys: ``tests/system/test_cluster_hostile.py``.)
* An authorized client key cannot send peer messages in a peer's name.
* Every frame between peers captured and delivered twice, plus old frames replayed at
  random, and a client's write frame sent again and again: the state is identical on every
  peer and every write is applied exactly once.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any

import pytest
import zmq

from tests.support.cluster_support import local_cluster
from tests.transport.test_transport_support import Inbox, free_address, running, wait_until
from zraft.backends import kv
from zraft.core.messages import Heartbeat, RequestVote
from zraft.local import LocalCluster, free_ports
from zraft.session import LightSession
from zraft.transport import (
    ClientChannel,
    ClientReply,
    ClientRequest,
    CurveSettings,
    TransportTimeout,
    decode_batch,
    encode,
    generate_keys,
    key_name,
)
from zraft.transport.client_channel import client_socket


def _curve_args(secret: Path, public: Path, authorized: Path) -> list[str]:
    return [
        "--curve-secret-key", str(secret),
        "--curve-public-key", str(public),
        "--curve-authorized-keys", str(authorized),
    ]  # fmt: skip


def _term_and_leader(cluster: LocalCluster) -> set[tuple[int, str | None]]:
    """Every member's (term, leader); a member that does not answer within 5 s (a healthy
    one does, even on a loaded machine with a fresh CURVE handshake) adds (-1, its id)."""
    seen = set()
    for peer in cluster.peers:
        status = cluster.status(peer, timeout=5.0)
        seen.add((-1, peer) if status is None else (status["term"], status["leader"]))
    return seen


def _agreed(cluster: LocalCluster) -> set[tuple[int, str | None]] | None:
    seen = _term_and_leader(cluster)
    return seen if len(seen) == 1 and next(iter(seen))[0] >= 0 else None


@pytest.mark.timeout(180)
def test_curve_keeps_out_unknown_peers_and_peers_of_other_clusters(tmp_path: Path) -> None:
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    secrets = tmp_path / "secrets"
    with local_cluster(tmp_path / "data", 3) as cluster:
        keys = {}
        for peer in cluster.peers:
            public, secret = generate_keys(secrets / key_name(peer), key_name(peer))
            shutil.copy(public, authorized / public.name)
            keys[peer] = (secret, public)
        stranger, foreigner = (f"127.0.0.1:{port}" for port in free_ports(2))
        # The stranger knows every peer's public key (so it can try), but its own key is
        # authorized nowhere: it has a view of its own.
        stranger_view = tmp_path / "stranger-view"
        shutil.copytree(authorized, stranger_view)
        s_public, s_secret = generate_keys(secrets / "stranger", key_name(stranger))
        shutil.copy(s_public, stranger_view / s_public.name)
        # The foreigner's key is authorized (a key shared with another cluster, say), but
        # it belongs to the cluster "elsewhere".
        f_public, f_secret = generate_keys(secrets / "foreigner", key_name(foreigner))
        shutil.copy(f_public, authorized / f_public.name)
        client_public, client_secret = generate_keys(secrets / "client", "client")
        shutil.copy(client_public, authorized / client_public.name)

        for peer, (secret, public) in keys.items():
            cluster.peer_args[peer] = _curve_args(secret, public, authorized)
        client_curve = CurveSettings(client_secret, client_public, authorized)
        cluster.client.close()
        cluster.client = ClientChannel(cluster.cluster_id, "client", client_curve)
        cluster.client_curve = client_curve
        cluster.start()
        leader = cluster.wait_for_leader()
        cluster.write(kv.put("before", 1))
        deadline = time.monotonic() + 15
        while (before := _agreed(cluster)) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert before is not None, f"no agreement on term and leader: {_term_and_leader(cluster)}"

        # Both outsiders believe they are voters of this cluster and campaign without
        # PreVote (every election bumps their term), as a misconfigured peer would.
        members = [*cluster.peers]
        cluster.peer_args[stranger] = [
            *_curve_args(s_secret, s_public, stranger_view), "--no-pre-vote",
            "--election-timeout", "200",
        ]  # fmt: skip
        cluster.peer_args[foreigner] = [
            *_curve_args(f_secret, f_public, authorized), "--no-pre-vote",
            "--election-timeout", "200", "--cluster-id", "elsewhere",
        ]  # fmt: skip
        cluster.start_peer(stranger, [*members, stranger])
        cluster.start_peer(foreigner, [*members, foreigner])

        def refused() -> bool:
            totals = {"conn_auth_failed": 0, "rejected_wrong-cluster": 0}
            for peer in members:
                status = cluster.status(peer, timeout=5.0)
                assert status is not None, f"{peer} does not answer"
                for key in totals:
                    totals[key] += status["metrics"].get(f"transport_{key}", 0)
            return all(totals.values())

        assert wait_until(refused, timeout=30, step=0.2)
        time.sleep(2.0)  # several of their election timeouts
        assert cluster.alive(stranger) and cluster.alive(foreigner)
        cluster.write(kv.put("after", 2))
        assert _term_and_leader(cluster) == before  # nobody's votes got in
        assert cluster.status(foreigner) is None  # its own cluster id: our frames are refused
        for peer in members:
            status = cluster.status(peer)
            assert status is not None
            assert sorted(status["config"]["voters"]) == sorted(members)
            assert status["metrics"].get("transport_received", 0) > 0
        assert cluster.query(leader, kv.get("after")) == {"found": True, "value": 2}

        # A client of the other cluster, with an authorized key, gets no answer either.
        with (
            ClientChannel("elsewhere", "client", client_curve) as other,
            pytest.raises(TransportTimeout),
        ):
            other.request(leader, ClientRequest(1, "query", kv.get("after")), 1.5)

        # A wiped peer restarted under its old id asks the others over CURVE before it would
        # found, and is refused: they know its earlier directory.
        wiped = next(p for p in members if p != leader)
        cluster.kill(wiped)
        cluster.wipe(wiped)
        cluster.start_peer(wiped, members)
        # Waited for while still the cluster's: if it does not exit, close() kills it.
        assert cluster.processes[wiped].wait(timeout=20) != 0
        cluster.processes.pop(wiped)
        assert "wiped or replaced" in (cluster.data_dir(wiped) / "peer.log").read_text()


# --------------------------------------------------------------------------- replay


class ReplayingProxy:
    """Stands between every pair of peers (each peer reaches peer D through D's proxy
    port): it delivers every captured frame twice and, after every few frames, also one
    captured earlier on that link, at random."""

    def __init__(self, targets: dict[str, int], seed: int) -> None:
        self._ctx = zmq.Context()
        self._rng = random.Random(seed)
        self._stop = threading.Event()
        self._routers: dict[zmq.Socket[Any], tuple[zmq.Socket[Any], deque[bytes]]] = {}
        self.forwarded = 0
        self.replayed = 0
        for target, port in targets.items():
            router = self._ctx.socket(zmq.ROUTER)
            router.linger = 0
            router.bind(f"tcp://127.0.0.1:{port}")
            dealer = self._ctx.socket(zmq.DEALER)
            dealer.linger = 0
            dealer.connect(f"tcp://{target}")
            self._routers[router] = (dealer, deque(maxlen=300))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        for router in self._routers:
            poller.register(router, zmq.POLLIN)
        while not self._stop.is_set():
            for router, _ in poller.poll(100):
                _, frame = router.recv_multipart()
                dealer, history = self._routers[router]
                history.append(frame)
                copies = [frame, frame]
                if self._rng.random() < 0.2:
                    copies.append(self._rng.choice(history))
                    self.replayed += 1
                for copy in copies:
                    with contextlib.suppress(zmq.Again):  # target down: dropped, as zmq would
                        dealer.send(copy, zmq.NOBLOCK)
                self.forwarded += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        for router, (dealer, _) in self._routers.items():
            router.close(linger=0)
            dealer.close(linger=0)
        self._ctx.term()


@pytest.mark.timeout(240)
def test_replayed_and_duplicated_frames_change_nothing(tmp_path: Path) -> None:
    backend = ("--backend", "tests.support.append_backend:AppendLog")
    with local_cluster(tmp_path, 3, *backend, "--max-log-count", "25") as cluster:
        ports = dict(zip(cluster.peers, free_ports(3), strict=True))
        routes = ",".join(f"{peer}=127.0.0.1:{port}" for peer, port in ports.items())
        for peer in cluster.peers:
            cluster.peer_args[peer] = ["--routes", routes]
        proxy = ReplayingProxy(ports, seed=11)
        try:
            cluster.start()
            leader = cluster.wait_for_leader()

            # A client's write, captured and sent again and again on one connection.
            request = ClientRequest(1, "write", {"append": "replayed"}, "replayer", 1, 0, 0)
            frame = encode(request, cluster_id=cluster.cluster_id, sender="replayer")
            answers = _send_repeatedly(leader, frame, cluster.cluster_id, copies=5)

            with LightSession(cluster.peers, cluster_id=cluster.cluster_id, timeout=20) as s:
                written = [f"w{i}" for i in range(60)]
                for item in written[:30]:
                    s.write({"append": item})
                answers += _send_repeatedly(leader, frame, cluster.cluster_id, copies=3)
                for item in written[30:]:
                    s.write({"append": item})
            assert {a.ok for a in answers} == {True}
            assert len({repr(a.result) for a in answers}) == 1  # the same answer each time
            assert proxy.forwarded > 100 and proxy.replayed > 10

            status = cluster.status(leader)
            assert status is not None
            last = status["commit"]
            assert wait_until(
                lambda: all(
                    (st := cluster.status(p)) is not None and st["applied"] >= last
                    for p in cluster.peers
                ),
                timeout=30,
            )
            states = {p: cluster.query(p, None, local=True) for p in cluster.peers}
        finally:
            proxy.close()
    first = states[cluster.peers[0]]
    assert all(state == first for state in states.values()), states
    assert sorted(first) == sorted(["replayed", *written])  # each exactly once


def _send_repeatedly(peer: str, frame: bytes, cluster_id: str, copies: int) -> list[ClientReply]:
    """Send one captured frame ``copies`` times, each on a new connection as a replaying
    attacker would (copies on one connection while the first is in flight are dropped by
    the transport: tests/actors/test_overload.py), and collect every answer."""
    ctx = zmq.Context()
    socks = []
    try:
        answers: list[ClientReply] = []
        for _ in range(copies):
            sock = ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(f"tcp://{peer}")
            socks.append(sock)
            sock.send(frame)
        for sock in socks:
            assert sock.poll(20_000), "no answer to a replayed write"
            decoded = decode_batch(sock.recv(), cluster_id=cluster_id, max_frame_bytes=1 << 26)
            answers.extend(m for m in decoded.messages if isinstance(m, ClientReply))
        assert len(answers) == copies, answers
        return answers
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


# --------------------------------------------------------------------------- impersonation


@pytest.mark.timeout(60)
def test_an_authorized_client_key_cannot_speak_for_a_peer(tmp_path: Path) -> None:
    """CURVE says who may connect; a frame naming peer a as its sender must also come
    from a's own key, or any authorized client could forge votes and appends."""
    authorized = tmp_path / "authorized"
    authorized.mkdir()
    a, b = free_address(), free_address()

    def identity(name: str) -> CurveSettings:
        public, secret = generate_keys(tmp_path / "private" / name, name)
        shutil.copy(public, authorized / public.name)
        return CurveSettings(secret, public, authorized)

    curve_a, curve_b = identity(key_name(a)), identity(key_name(b))
    mallory = identity("mallory")  # an authorized client
    inbox_a, inbox_b = Inbox(), Inbox()
    with (
        running(b, [a, b], inbox_b, curve=curve_b) as tb,
        running(a, [a, b], inbox_a, curve=curve_a) as ta,
    ):

        def reached(n: int) -> bool:
            ta.send([Heartbeat(1, a, b, 0, n)])
            return Heartbeat(1, a, b, 0, n) in inbox_b.snapshot()

        assert wait_until(lambda: reached(1), step=0.05)  # a's own key: delivered

        ctx = zmq.Context()
        sock = client_socket(ctx, b, mallory, 1 << 20)
        try:
            forged = [Heartbeat(99, a, b, 0, 2), RequestVote(99, a, b, 10**6, 99, False, False)]
            for message in forged:
                sock.send(encode(message, cluster_id="test-cluster", sender=a))
            sock.send(encode(ClientRequest(5, "echo"), cluster_id="test-cluster", sender="m"))
            assert wait_until(lambda: [r.request_id for _, r in inbox_b.requests] == [5])
            assert wait_until(lambda: tb.stats().get("rejected_unauthenticated-peer", 0) == 2)
        finally:
            sock.close(linger=0)
            ctx.term()
        assert wait_until(lambda: reached(3), step=0.05)
        assert not any(m.term == 99 for m in inbox_b.snapshot())

"""A real cluster under hostile input, and with CURVE authentication on."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from tests.support.cluster_support import local_cluster
from zraft.backends import kv
from zraft.core import Heartbeat
from zraft.transport import (
    ClientChannel,
    ClientRequest,
    CurveSettings,
    TransportTimeout,
    encode,
    generate_keys,
    key_name,
)

ROGUE_SECONDS = 4.0


def _rogue(peers: list[str], stop: threading.Event, seed: int) -> dict[str, int]:
    """Hammer every peer with garbage over ZeroMQ and raw TCP until ``stop``."""
    rng = random.Random(seed)
    sent = {"random": 0, "version": 0, "cluster": 0, "huge": 0, "tcp": 0}
    context = zmq.Context()
    dealers = []
    for peer in peers:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 100)
        dealer.connect(f"tcp://{peer}")
        dealers.append(dealer)
    huge = b"\x00" * (100 * 1024 * 1024)
    heartbeat = Heartbeat(99, "rogue:1", peers[0], 0)
    try:
        while not stop.is_set():
            dealer = rng.choice(dealers)
            kind = rng.choice(list(sent))
            try:
                if kind == "random":
                    dealer.send(os.urandom(rng.randint(0, 4096)), zmq.NOBLOCK)
                elif kind == "version":
                    frame = msgpack.packb([99, "zraft", "rogue:1", 1, [1, 2, 3]])
                    dealer.send(frame, zmq.NOBLOCK)
                elif kind == "cluster":
                    frame = encode(heartbeat, cluster_id="someone-else", sender="rogue:1")
                    dealer.send(frame, zmq.NOBLOCK)
                elif kind == "huge":
                    if sent["huge"] < 3:
                        dealer.send(huge, zmq.NOBLOCK)
                    else:
                        continue
                else:
                    host, port = rng.choice(peers).rsplit(":", 1)
                    with socket.create_connection((host, int(port)), timeout=1) as raw:
                        raw.sendall(os.urandom(rng.randint(1, 2048)))
                sent[kind] += 1
            except (zmq.Again, OSError):
                pass
            time.sleep(0.002)
    finally:
        for dealer in dealers:
            dealer.close(linger=0)
        context.term()
    return sent


@pytest.mark.timeout(180)
def test_cluster_keeps_committing_under_hostile_traffic(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        stop = threading.Event()
        result: dict[str, dict[str, int]] = {}
        rogue = threading.Thread(
            target=lambda: result.update(sent=_rogue(cluster.peers, stop, 7)), daemon=True
        )
        rogue.start()
        started = time.monotonic()
        writes = 0
        while time.monotonic() - started < ROGUE_SECONDS:
            cluster.write(kv.put(f"k{writes}", writes))
            writes += 1
        stop.set()
        rogue.join(timeout=30)
        assert writes > 10
        sent = result["sent"]
        print(f"rogue frames sent: {sent}; acknowledged writes meanwhile: {writes}")
        assert all(sent[kind] > 0 for kind in sent)
        for peer in cluster.peers:
            assert cluster.alive(peer), f"{peer} died"
            status = cluster.status(peer)
            assert status is not None
            assert status["metrics"]["transport_rejected"] > 0
        cluster.write(kv.put("after", True))
        leader = cluster.wait_for_leader()
        assert cluster.query(leader, kv.get("after")) == {"found": True, "value": True}


@pytest.mark.timeout(120)
def test_curve_refuses_clients_without_an_authorized_key(tmp_path: Path) -> None:
    keys = tmp_path / "authorized"
    secrets = tmp_path / "secrets"
    with local_cluster(tmp_path / "data", 3) as cluster:
        for peer in cluster.peers:
            public, secret = generate_keys(secrets, key_name(peer))
            (keys / public.name).parent.mkdir(parents=True, exist_ok=True)
            (keys / public.name).write_bytes(public.read_bytes())
            cluster.peer_args[peer] = [
                "--curve-secret-key",
                str(secret),
                "--curve-public-key",
                str(public),
                "--curve-authorized-keys",
                str(keys),
            ]
        good_public, good_secret = generate_keys(secrets, "good-client")
        (keys / good_public.name).write_bytes(good_public.read_bytes())
        bad_public, bad_secret = generate_keys(tmp_path / "stranger", "bad-client")
        good = CurveSettings(good_secret, good_public, keys)
        bad = CurveSettings(bad_secret, bad_public, keys)  # knows the servers, not authorized

        cluster.client.close()
        cluster.client = ClientChannel(cluster.cluster_id, "good-client", good)
        cluster.client_curve = good
        cluster.start()
        leader = cluster.wait_for_leader()
        cluster.write(kv.put("secret", 42))
        assert cluster.query(leader, kv.get("secret")) == {"found": True, "value": 42}

        with ClientChannel(cluster.cluster_id, "bad-client", bad) as stranger:
            for op, payload in (("write", kv.put("secret", 0)), ("query", kv.get("secret"))):
                with pytest.raises(TransportTimeout):
                    stranger.request(leader, ClientRequest(1, op, payload, "bad", 1), 1.5)
        plain = ClientChannel(cluster.cluster_id, "plain-client")
        with plain, pytest.raises(TransportTimeout):
            plain.request(leader, ClientRequest(2, "query", kv.get("secret")), 1.5)
        assert cluster.query(leader, kv.get("secret")) == {"found": True, "value": 42}

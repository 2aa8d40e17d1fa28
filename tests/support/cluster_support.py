"""Shared pieces for tests that run real peer processes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zraft.local import LocalCluster, free_ports
from zraft.settings import Settings
from zraft.transport import ClientChannel, ClientReply, ClientRequest

ELECTION_TIMEOUT_MS = 500


@contextmanager
def local_cluster(root: Path, size: int, *extra: str, **kwargs: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        size, root, election_timeout=ELECTION_TIMEOUT_MS, extra_args=list(extra), **kwargs
    )
    try:
        yield cluster
    finally:
        cluster.close()  # kills every process it started, whatever the test did


def start_with_newcomers(cluster: LocalCluster, voters: int) -> str:
    """Found the cluster on its first ``voters`` peers and start the rest empty, waiting to
    be added; returns the leader."""
    founders, newcomers = cluster.peers[:voters], cluster.peers[voters:]
    for peer in founders:
        cluster.start_peer(peer, members=founders)
    for peer in newcomers:
        cluster.start_peer(peer, members=[])
    return cluster.wait_for_leader(among=founders)


def applied_everywhere(cluster: LocalCluster, peers: list[str], index: int) -> bool:
    for peer in peers:
        status = cluster.status(peer, timeout=0.5)
        if status is None or status["applied"] < index:
            return False
    return True


def single_peer_settings(data_dir: Path, backend: str) -> Settings:
    """A one-peer cluster on a free port, for a ``PeerRuntime`` in the test's own process."""
    (port,) = free_ports(1)
    peer = f"127.0.0.1:{port}"
    return Settings.load(
        peer_id=peer, peers=[peer], data_dir=data_dir, backend=backend, election_timeout=200
    )


def ask_leader(channel: ClientChannel, peer: str, request: ClientRequest) -> ClientReply:
    """The first answer from ``peer`` as leader (retrying while it has none, or is not
    leading yet: a peer just started)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            reply = channel.request(peer, request, 0.5)
        except Exception:  # noqa: BLE001 - starting up: no leader, no answer yet
            reply = None
        if reply is not None and reply.error != "not_leader":
            return reply
        assert time.monotonic() < deadline, f"no answer to {request.op}: {reply}"
        time.sleep(0.05)

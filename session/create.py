"""``create``: found a new cluster, like zraft's ``zraft_client:create(Peers, BackEnd)``.

Peers either run already (started with ``zraft serve --peer-id ID`` and no ``--peers``, so
they wait, empty) or, with ``root``, are started here as local processes. As in the original, the
first peer is bootstrapped alone (its first log entry is the configuration {itself}), so it
elects itself at once; then a joint-consensus change adds the others.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zraft.backends.base import BackendLoadError, load_backend
from zraft.local import LocalCluster
from zraft.transport import ClientChannel, ClientRequest, TransportTimeout

from .errors import BadBackend, ClusterExists, UnreachablePeer
from .light import LightSession

DEFAULT_BACKEND = "zraft.backends.kv:KeyValueBackend"


@dataclass
class CreatedCluster:
    session: LightSession
    local: LocalCluster | None  # the processes started here, if any

    def close(self) -> None:
        """Close the session and stop any peer processes this call started."""
        self.session.close()
        if self.local is not None:
            self.local.close()

    def __enter__(self) -> CreatedCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create(
    peers: Sequence[str],
    backend: str = DEFAULT_BACKEND,
    *,
    root: str | Path | None = None,
    cluster_id: str = "zraft",
    election_timeout: float = 0.5,
    timeout: float = 15.0,
    extra_args: Sequence[str] = (),
) -> CreatedCluster:
    """Create a cluster of ``peers`` running ``backend``; returns a session to it.

    Raises ``BadBackend``, ``ClusterExists`` (a peer already holds state) or
    ``UnreachablePeer``. With ``root``, starts one local process per peer, each with its
    data in ``root``; the peers must then be local addresses.
    """
    peers = list(dict.fromkeys(peers))
    if not peers:
        raise ValueError("a cluster needs at least one peer")
    try:
        load_backend(backend)
    except BackendLoadError as error:
        raise BadBackend(str(error)) from None
    local = None
    if root is not None:
        local = _start_local(peers, backend, Path(root), cluster_id, election_timeout, extra_args)
    try:
        founding = _found(peers, cluster_id, timeout)
        # Only the first peer is founded until the others join: its founding is the one.
        session = LightSession(
            peers, cluster_id=cluster_id, election_timeout=election_timeout, cluster_uuid=founding
        )
        _wait_for_leader(session, peers[:1], timeout)
        if len(peers) > 1:
            session.set_new_conf(peers, peers[:1], timeout=timeout)
        return CreatedCluster(session, local)
    except BaseException:
        if local is not None:
            local.close()
        raise


def _start_local(
    peers: list[str],
    backend: str,
    root: Path,
    cluster_id: str,
    election_timeout: float,
    extra_args: Sequence[str],
) -> LocalCluster:
    for peer in peers:
        host = peer.rsplit(":", 1)[0]
        if not (host.startswith("127.") or host == "localhost"):
            raise ValueError(f"{peer}: only local addresses can be started here")
    cluster = LocalCluster(
        0,
        root,
        cluster_id=cluster_id,
        election_timeout=int(election_timeout * 1000),
        extra_args=["--backend", backend, *extra_args],
    )
    cluster.peers = list(peers)
    for peer in peers:
        data = cluster.data_dir(peer)
        if data.exists() and any(data.iterdir()):
            cluster.close()
            raise ClusterExists(peer)
    for peer in peers:
        cluster.start_peer(peer, members=[])  # no bootstrap configuration: they wait
    return cluster


def _found(peers: list[str], cluster_id: str, timeout: float) -> str:
    """Found the cluster on the first peer; its founding (cluster uuid)."""
    with ClientChannel(cluster_id, "zraft-create") as channel:
        for peer in peers:
            status = _status(channel, peer, timeout)
            if status["term"] > 0 or status["config"]["voters"] or status["last_index"] > 0:
                raise ClusterExists(peer)
        request = ClientRequest(1, "bootstrap", {"voters": peers[:1]})
        reply = channel.request(peers[0], request, timeout)
        if not reply.ok:
            if reply.error == "already_present":
                raise ClusterExists(peers[0])
            raise ValueError(f"bootstrap refused: {reply.result}")
        reply = channel.request(peers[0], ClientRequest(2, "identity", {}), timeout)
        uuid = reply.result.get("cluster_uuid") if isinstance(reply.result, dict) else None
        if not reply.ok or not isinstance(uuid, str) or not uuid:
            raise ValueError(f"{peers[0]} founded, but did not say its founding: {reply.result}")
        return uuid


def _status(channel: ClientChannel, peer: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            reply = channel.request(peer, ClientRequest(1, "status"), 0.5)
            return reply.result  # type: ignore[no-any-return]
        except TransportTimeout:
            if time.monotonic() > deadline:
                raise UnreachablePeer(peer) from None


def _wait_for_leader(session: LightSession, peers: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for peer in peers:
            try:
                status = session.status(peer, timeout=0.5)
            except Exception:  # starting up
                continue
            if status["role"] == "leader":
                session.tracker.succeeded(peer)
                return
        time.sleep(0.05)
    raise UnreachablePeer(f"no leader among {peers} within {timeout}s")

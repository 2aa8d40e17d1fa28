"""Local clusters of real peer processes on 127.0.0.1: for the demo, tests and benchmarks.

Each peer is ``python -m zraft serve`` in its own process with its own data directory.
``LocalCluster`` starts, kills (any signal), restarts and wipes peers, and always cleans up
its processes when closed.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from zraft.transport import (
    ClientChannel,
    ClientReply,
    ClientRequest,
    CurveSettings,
    TransportTimeout,
)

log = logging.getLogger(__name__)


# Ports handed out lately by this process. A port is released as soon as it is chosen and
# bound only later, by a peer that may start seconds afterwards; without this memory the
# next call may pick it again (a link proxy once got its own target's port, and forwarded
# to itself until the process ran out of descriptors).
_ISSUED_PORTS: collections.deque[int] = collections.deque(maxlen=4096)
_ISSUED_LOCK = threading.Lock()


def free_ports(count: int, avoid: Iterable[int] = ()) -> list[int]:
    """Ports that were free a moment ago, all distinct, none of ``avoid`` and none that
    this process handed out lately."""
    sockets = []
    with _ISSUED_LOCK:
        taken = set(_ISSUED_PORTS).union(avoid)
        try:
            ports: list[int] = []
            while len(ports) < count:
                sock = socket.socket()
                sockets.append(sock)  # held until the end, so the OS offers another
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
                if port not in taken:
                    taken.add(port)
                    ports.append(port)
            _ISSUED_PORTS.extend(ports)
            return ports
        finally:
            for sock in sockets:
                sock.close()


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    def __init__(
        self,
        size: int,
        root: str | os.PathLike[str],
        *,
        cluster_id: str = "zraft",
        election_timeout: int = 500,
        extra_args: Sequence[str] = (),
        log_level: str = "WARNING",
        client_curve: CurveSettings | None = None,
    ) -> None:
        self.root = Path(root)
        self.cluster_id = cluster_id
        self.election_timeout = election_timeout
        self.extra_args = list(extra_args)
        self.log_level = log_level
        self.peers = [f"127.0.0.1:{port}" for port in free_ports(size)]
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.peer_args: dict[str, list[str]] = {}  # extra flags for one peer (its keys, say)
        # What runs one peer instead of ``zraft serve`` (``python -m`` and its arguments;
        # the fault suite's zraft.chaos.faulty_peer, say); the serve flags follow.
        self.peer_launch: dict[str, list[str]] = {}
        self.client_curve = client_curve
        self.client = ClientChannel(cluster_id, f"local-{os.getpid()}", client_curve)
        self._session: Any = None  # a LightSession, made on the first write
        self._request_ids = itertools.count(1)

    # ------------------------------------------------------------------ processes

    def data_dir(self, peer: str) -> Path:
        return self.root / peer.replace(":", "_")

    def start(self, peers: Sequence[str] | None = None) -> LocalCluster:
        for peer in peers or self.peers:
            self.start_peer(peer)
        return self

    def start_peer(self, peer: str, members: Sequence[str] | None = None) -> None:
        data = self.data_dir(peer)
        data.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            *self.peer_launch.get(peer, ["zraft", "serve"]),
            "--peer-id",
            peer,
            "--peers",
            ",".join(self.peers if members is None else members),
            "--cluster-id",
            self.cluster_id,
            "--data-dir",
            str(data),
            "--election-timeout",
            str(self.election_timeout),
            "--log-level",
            self.log_level,
            *self.extra_args,
            *self.peer_args.get(peer, []),
        ]
        logfile = open(data / "peer.log", "ab")  # noqa: SIM115 (owned by the process)
        self.processes[peer] = subprocess.Popen(
            command, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        logfile.close()

    def signal(self, peer: str, sig: int) -> None:
        process = self.processes.get(peer)
        if process is not None and process.poll() is None:
            os.kill(process.pid, sig)

    def kill(self, peer: str) -> None:
        """kill -9, then reap."""
        process = self.processes.pop(peer, None)
        if process is not None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def stop_peer(self, peer: str) -> None:
        process = self.processes.pop(peer, None)
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)

    def wipe(self, peer: str) -> None:
        shutil.rmtree(self.data_dir(peer), ignore_errors=True)

    def alive(self, peer: str) -> bool:
        process = self.processes.get(peer)
        return process is not None and process.poll() is None

    def close(self) -> None:
        for peer in list(self.processes):
            process = self.processes[peer]
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("peer process %d did not exit", process.pid)
        self.processes.clear()
        if self._session is not None:
            self._session.close()
        self.client.close()

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ talking to peers

    def request(
        self, peer: str, op: str, payload: Any = None, timeout: float = 2.0, **fields: Any
    ) -> ClientReply:
        request = ClientRequest(next(self._request_ids), op, payload, **fields)
        return self.client.request(peer, request, timeout)

    def status(self, peer: str, timeout: float = 1.0) -> dict[str, Any] | None:
        try:
            reply = self.request(peer, "status", timeout=timeout)
        except TransportTimeout:
            return None
        return reply.result if reply.ok else None

    def leader(self, among: Sequence[str] | None = None) -> str | None:
        """The peer that says it leads with the highest term, among live peers."""
        best: tuple[int, str] | None = None
        for peer in among or self.peers:
            if not self.alive(peer):
                continue
            status = self.status(peer, timeout=0.5)
            if status and status["role"] == "leader" and (best is None or status["term"] > best[0]):
                best = (status["term"], peer)
        return best[1] if best else None

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = condition()
            if value:
                return value
            time.sleep(0.05)
        raise ClusterError(f"timed out after {timeout:.1f}s waiting for {what}")

    def wait_for_leader(self, timeout: float = 15.0, among: Sequence[str] | None = None) -> str:
        return self.wait_for(lambda: self.leader(among), timeout, "a leader")

    def write(self, payload: Any, timeout: float = 10.0) -> Any:
        """Write through whoever leads, exactly once per call (a light session's job)."""
        from zraft.session import LightSession, ZraftError  # the session package uses us

        if self._session is None:
            self._session = LightSession(
                self.peers,
                cluster_id=self.cluster_id,
                election_timeout=self.election_timeout / 1000,
                curve=self.client_curve,
            )
        try:
            return self._session.write(payload, timeout=timeout)
        except ZraftError as error:
            raise ClusterError(f"write failed: {type(error).__name__}: {error}") from error

    def query(self, peer: str, payload: Any, local: bool = False, timeout: float = 2.0) -> Any:
        reply = self.request(peer, "query_local" if local else "query", payload, timeout=timeout)
        if not reply.ok:
            raise ClusterError(f"query failed: {reply.error}: {reply.result}")
        return reply.result

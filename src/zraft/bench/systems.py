"""The clusters the benchmark drives: zraft's ``LocalCluster``, a PySyncObj trio and the
bare write pipeline (the ceiling).

Each is 3 local peer processes whose client ports speak zraft's request/reply protocol,
so one client harness drives each. ``close()`` kills every process the system started.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from zraft.local import LocalCluster, free_ports
from zraft.transport import ClientChannel, ClientRequest, TransportTimeout

log = logging.getLogger(__name__)

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of ``pid`` (all its threads), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ")" are fixed.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime


class System(Protocol):
    name: str
    note: str  # how it is configured, for the table
    ops: tuple[str, ...]  # the operations it offers

    def start(self) -> None: ...

    @property
    def peers(self) -> list[str]: ...  # client addresses, believed leader first

    def server_pids(self) -> dict[str, int]: ...  # peer -> pid

    def leader(self) -> str | None: ...

    def metrics(self, peer: str) -> dict[str, Any] | None: ...  # None: not offered

    def close(self) -> None: ...


def sample_cpu(pids: dict[str, int]) -> dict[int, float]:
    out = {}
    for pid in pids.values():
        seconds = process_cpu_seconds(pid)
        if seconds is not None:
            out[pid] = seconds
    return out


class ZraftSystem:
    """3 ``zraft serve`` processes with default settings (fsync on)."""

    name = "zraft"
    note = "fsync on"
    ops = ("write", "read")

    def __init__(
        self,
        root: Path,
        *,
        cluster_id: str = "zraft",
        log_level: str = "WARNING",
        peer_args: Sequence[str] = (),
    ):
        self.cluster = LocalCluster(
            3, root, cluster_id=cluster_id, log_level=log_level, extra_args=list(peer_args)
        )
        self.cluster_id = cluster_id
        self._leader: str | None = None

    def start(self) -> None:
        self.cluster.start()
        self._leader = self.cluster.wait_for_leader(timeout=30.0)

    @property
    def peers(self) -> list[str]:
        lead = self._leader
        return ([lead] if lead else []) + [p for p in self.cluster.peers if p != lead]

    def server_pids(self) -> dict[str, int]:
        return {peer: process.pid for peer, process in self.cluster.processes.items()}

    def leader(self) -> str | None:
        self._leader = self.cluster.leader()
        return self._leader

    def metrics(self, peer: str) -> dict[str, Any] | None:
        status = self.cluster.status(peer, timeout=1.0)
        return None if status is None else dict(status.get("metrics", {}))

    def close(self) -> None:
        self.cluster.close()


class _ProcessTrio:
    """Three server processes started by command line, whose client ports answer
    ``status`` with their role; the first to say "leader" is the leader."""

    name = ""
    note = ""
    kind = ""  # for messages: what the processes are

    def __init__(self, root: Path, *, cluster_id: str = "zraft", log_level: str = "WARNING"):
        self.root = Path(root)
        self.cluster_id = cluster_id
        self.log_level = log_level
        self.front_peers: list[str] = []
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._leader: str | None = None
        self._client = ClientChannel(cluster_id, f"bench-admin-{os.getpid()}")
        self._request_ids = itertools.count(1)

    def _spawn(self, front: str, command: list[str]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        logfile = open(self.root / f"{front.replace(':', '_')}.log", "ab")  # noqa: SIM115
        self.processes[front] = subprocess.Popen(
            command, stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True
        )
        logfile.close()

    def _wait_for_leader(self) -> None:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            for front, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{self.kind} {front} exited with {process.returncode}; see {self.root}"
                    )
            if self.leader() is not None:
                return
            time.sleep(0.1)
        raise RuntimeError(f"no {self.kind} said it leads within 30 s")

    @property
    def peers(self) -> list[str]:
        lead = self._leader
        return ([lead] if lead else []) + [p for p in self.front_peers if p != lead]

    def server_pids(self) -> dict[str, int]:
        return {peer: process.pid for peer, process in self.processes.items()}

    def leader(self) -> str | None:
        for front in self.front_peers:
            request = ClientRequest(next(self._request_ids), "status")
            try:
                reply = self._client.request(front, request, 0.5)
            except TransportTimeout:
                continue
            if reply.ok and reply.result.get("role") == "leader":
                self._leader = front
                return front
        return None

    def metrics(self, peer: str) -> dict[str, Any] | None:
        return None

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
        for front, process in self.processes.items():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                log.error("%s %s (pid %d) did not exit", self.kind, front, process.pid)
        self.processes.clear()
        self._client.close()


class PySyncObjSystem(_ProcessTrio):
    """3 PySyncObj 0.3.17 nodes (``zraft.bench.pysyncobj_node``), default config, no journal."""

    name = "pysyncobj"
    note = "no journal, no fsync"
    kind = "PySyncObj node"
    ops = ("write", "read")

    def __init__(self, root: Path, *, cluster_id: str = "zraft", log_level: str = "WARNING"):
        super().__init__(root, cluster_id=cluster_id, log_level=log_level)
        ports = free_ports(6)
        self.raft_peers = [f"127.0.0.1:{p}" for p in ports[:3]]
        self.front_peers = [f"127.0.0.1:{p}" for p in ports[3:]]

    def start(self) -> None:
        for raft, front in zip(self.raft_peers, self.front_peers, strict=True):
            self._spawn(front, [
                sys.executable, "-m", "zraft.bench.pysyncobj_node",
                "--raft", raft, "--front", front,
                "--raft-peers", ",".join(self.raft_peers),
                "--front-peers", ",".join(self.front_peers),
                "--cluster-id", self.cluster_id, "--log-level", self.log_level,
            ])  # fmt: skip
        self._wait_for_leader()


class CeilingSystem(_ProcessTrio):
    """The bare write pipeline (``zraft.bench.ceiling_node``): batch, msgpack, fdatasync,
    ZeroMQ, a fixed leader, nothing else. Writes only."""

    name = "ceiling"
    note = "bare pipeline, fsync on"
    kind = "ceiling node"
    ops = ("write",)

    def __init__(self, root: Path, *, cluster_id: str = "zraft", log_level: str = "WARNING"):
        super().__init__(root, cluster_id=cluster_id, log_level=log_level)
        self.front_peers = [f"127.0.0.1:{p}" for p in free_ports(3)]

    def start(self) -> None:
        for front in self.front_peers:
            self._spawn(front, [
                sys.executable, "-m", "zraft.bench.ceiling_node",
                "--listen", front, "--peers", ",".join(self.front_peers),
                "--data-dir", str(self.root / front.replace(":", "_")),
                "--cluster-id", self.cluster_id, "--log-level", self.log_level,
            ])  # fmt: skip
        self._wait_for_leader()

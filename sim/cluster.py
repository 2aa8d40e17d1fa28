"""A whole cluster in one process: a seeded network, disks that lose what was not synced,
crashes and restarts. Everything random comes from one seed, so a run replays exactly.

The peers are ``DrivenPeer``s (sim/peer.py): each runs the production driver over the
storage seams. ``peer_factory`` lets a test plug in a peer of its own (the scenario traces
feed bare cores); the network, the clock, the client and the checks are the same.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from zraft.actors.apply_driver import ApplyDriver
from zraft.actors.driver import PeerDriver
from zraft.core import Entry, EntryKind, InstallSnapshot, Message, Node, NodeOptions, Role
from zraft.transport import ClientReply, ClientRequest

from .checker import SafetyChecker
from .client import SimClient
from .peer import ApplyDriverFactory, DrivenPeer, DriverFactory, MemoryDisk, PeerDisk

NodeFactory = Callable[..., Node]
# (peer id, a scratch directory of its own) -> the peer's disk
DiskFactory = Callable[[str, str], PeerDisk]


def memory_disk(peer: str, scratch: str) -> PeerDisk:
    return MemoryDisk(scratch)


class SimulatedPeer(Protocol):
    """What the cluster needs of a peer."""

    id: str

    @property
    def alive(self) -> bool: ...

    @property
    def node(self) -> Node | None: ...

    def start(self) -> None: ...

    def crash(self) -> None: ...

    def close(self) -> None:
        """The end of the run: release what the peer holds (a log's lock, files)."""
        ...

    def process(self) -> None: ...

    def tick(self) -> None: ...

    def catch_up(self) -> None: ...

    def busy(self) -> bool:
        """Work is queued that a thread of the process would get to later."""
        ...

    def deliver(self, msg: Message, attachment: Any) -> None: ...

    def snapshot_reported(self, peer: str, success: bool) -> None: ...

    def request(self, identity: bytes, request: ClientRequest) -> None: ...


# (cluster, peer id, founding voters or None for a peer that joins later) -> the peer
PeerFactory = Callable[["Cluster", str, "frozenset[str] | None"], SimulatedPeer]


@dataclass
class Faults:
    """Probabilities and bounds of the network and disk faults."""

    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 0  # ticks; random delays also reorder messages
    sync_now: float = 1.0  # chance the writes handed to storage are made durable at once
    apply_now: float = 1.0  # chance the state machine works off its inbox at once


class Cluster:
    """A simulated cluster; ``tick`` advances time by one tick. Close it (or use it as a
    context manager) to remove its scratch directory."""

    def __init__(
        self,
        seed: int,
        peers: list[str],
        voters: list[str],
        *,
        options: NodeOptions | None = None,
        faults: Faults | None = None,
        node_factory: NodeFactory = Node,
        driver_factory: DriverFactory = PeerDriver,
        apply_driver_factory: ApplyDriverFactory = ApplyDriver,
        compact_every: int = 0,
        disk_factory: DiskFactory = memory_disk,
        peer_factory: PeerFactory = DrivenPeer,
        tick_seconds: float = 0.05,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = options or NodeOptions()
        self.faults = faults or Faults()
        self.node_factory = node_factory
        self.driver_factory = driver_factory
        self.apply_driver_factory = apply_driver_factory
        self.compact_every = compact_every
        self.disk_factory = disk_factory
        self.tick_seconds = tick_seconds
        self.checker = SafetyChecker()
        self.time = 0
        self.blocked: set[tuple[str, str]] = set()
        self.in_flight: list[tuple[int, int, Message, Any]] = []
        self._sequence = 0
        self._scratch: str | None = None
        self.read_started: dict[Any, int] = {}
        self.reads_served = 0
        self.trace: list[str] | None = None
        self.messages_sent = 0
        self.client = SimClient(self)
        self.clients = [self.client]
        founders = frozenset(voters)
        self.peers: dict[str, Any] = {}
        for peer in peers:
            self.peers[peer] = peer_factory(self, peer, founders if peer in voters else None)

    def scratch(self) -> str:
        """A directory of the cluster's own (snapshots laid out as files live there)."""
        if self._scratch is None:
            # In memory where the system offers it: backends write (and sync) a snapshot's
            # files every few entries here, and nothing needs to outlive the run.
            shm = "/dev/shm"
            where = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
            self._scratch = tempfile.mkdtemp(prefix=f"zraft-sim-{self.seed}-", dir=where)
        return self._scratch

    def close(self) -> None:
        """Stop every peer (their stores are closed) and remove the scratch directory."""
        for peer in self.peers.values():
            peer.close()
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------- network

    def send(self, msg: Message, attachment: Any = None) -> None:
        self.messages_sent += 1
        if (msg.src, msg.dst) in self.blocked or self.rng.random() < self.faults.drop:
            self._dropped(msg)
            return
        copies = 2 if self.rng.random() < self.faults.duplicate else 1
        for _ in range(copies):
            delay = self.rng.randint(0, self.faults.max_delay) if self.faults.max_delay else 0
            self._sequence += 1
            self.in_flight.append((self.time + delay, self._sequence, msg, attachment))

    def lose_unsent(self, peer: str) -> None:
        """A crash loses the messages sent this tick, each with even odds."""
        self.in_flight = [
            item
            for item in self.in_flight
            if item[2].src != peer or item[0] < self.time or self.rng.random() < 0.5
        ]

    def _dropped(self, msg: Message) -> None:
        if isinstance(msg, InstallSnapshot):
            self._report_snapshot(msg, False)

    def _report_snapshot(self, msg: InstallSnapshot, success: bool) -> None:
        sender = self.peers[msg.src]
        if sender.alive:
            sender.snapshot_reported(msg.dst, success)

    def deliver_due(self) -> int:
        due = [m for m in self.in_flight if m[0] <= self.time]
        if not due:
            return 0
        self.in_flight = [m for m in self.in_flight if m[0] > self.time]
        if self.faults.max_delay:
            self.rng.shuffle(due)  # reordering among messages due at the same time
        else:
            due.sort(key=lambda m: m[1])
        for _, _, msg, attachment in due:
            self.deliver(msg, attachment)
        return len(due)

    def deliver(self, msg: Message, attachment: Any = None) -> None:
        peer = self.peers.get(msg.dst)
        if peer is None or not peer.alive or (msg.src, msg.dst) in self.blocked:
            self._dropped(msg)
            return
        if self.trace is not None:
            self.trace.append(f"{msg.src}->{msg.dst} {describe(msg)}")
        peer.deliver(msg, attachment)
        if isinstance(msg, InstallSnapshot):
            self._report_snapshot(msg, True)  # the transfer itself completed

    # ---------------------------------------------------------------- time

    def tick(self) -> None:
        self.time += 1
        for peer in self.peers.values():
            if peer.alive:
                peer.tick()
        self.deliver_due()
        for client in self.clients:
            client.tick()
        for peer in self.peers.values():
            if peer.alive and peer.busy() and self.rng.random() < 0.5:
                peer.catch_up()

    def settle(self, max_rounds: int = 1000) -> None:
        """Deliver and work every queue off until nothing moves (without advancing time)."""
        for _ in range(max_rounds):
            moved = self.deliver_due()
            for peer in self.peers.values():
                if peer.alive and peer.busy():
                    peer.catch_up()
                    moved += 1
            if not moved and not any(m[0] <= self.time for m in self.in_flight):
                return

    # ---------------------------------------------------------------- observations

    def leader(self) -> Any:
        """The live leader with the highest term, if any."""
        best = None
        for peer in self.peers.values():
            node = peer.node
            if node is None or node.role is not Role.LEADER:
                continue
            if best is None or node.term > best.node.term:
                best = peer
        return best

    def target(self) -> str | None:
        """Where a client sends a request: the leader it sees, else any live peer."""
        leader = self.leader()
        if leader is not None:
            return str(leader.id)
        live = sorted(p for p, peer in self.peers.items() if peer.alive)
        return self.rng.choice(live) if live else None

    def new_client(self, client_id: str) -> SimClient:
        client = SimClient(self, client_id)
        self.clients.append(client)
        return client

    def begin_read(self, peer: str, context: Any) -> None:
        self.read_started[context] = self.checker.max_commit
        self.client.read(peer, context)

    def on_replies(
        self, peer: str, replies: Iterable[tuple[bytes, ClientReply]], applied: int
    ) -> None:
        replies = list(replies)
        for client in self.clients:
            client.on_replies(peer, replies, applied)

    def on_read_served(self, peer: str, context: Any, applied: int) -> None:
        started = self.read_started.pop(context, None)
        if started is None:
            return  # a duplicate answer (duplicated network message)
        self.checker.check_read(peer, started, applied)
        self.reads_served += 1

    def on_read_failed(self, peer: str, context: Any) -> None:
        self.read_started.pop(context, None)


def describe(msg: Message) -> str:
    """A compact, stable text form of a message for traces."""
    name = type(msg).__name__
    fields = []
    for spec in dataclasses.fields(msg):
        attr = spec.name
        if attr in ("term", "src", "dst"):
            continue
        value = getattr(msg, attr)
        if attr == "entries":
            value = "[" + " ".join(f"{e.index}/{e.term}{_kind(e)}" for e in value) + "]"
        elif attr == "meta":
            value = f"{value.index}/{value.term} {value.config}"
        fields.append(f"{attr}={value}")
    return " ".join([name, f"term={msg.term}", *fields])


def _kind(entry: Entry) -> str:
    if entry.kind is EntryKind.NOOP:
        return ":noop"
    if entry.kind is EntryKind.CONFIG:
        return f":conf({entry.data})"
    data = entry.data
    if isinstance(data, bytes):
        text = data.decode(errors="replace")
        return f":{text}" if text.isprintable() else f":<{len(data)} bytes>"
    return f":{data!r}"

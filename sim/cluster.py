"""A whole cluster of cores in one process: a seeded network, disks that lose what was not
synced, crashes and restarts. Everything random comes from one seed, so a run replays
exactly."""

from __future__ import annotations

import dataclasses
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zraft.core import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    InstallSnapshot,
    Message,
    Node,
    NodeOptions,
    Ready,
    Role,
    SnapshotMeta,
)
from zraft.storage.memory import MemoryHardState, MemoryLog, MemoryVolume

from .checker import SafetyChecker

NodeFactory = Callable[..., Node]


@dataclass
class Faults:
    """Probabilities and bounds of the network and disk faults."""

    drop: float = 0.0
    duplicate: float = 0.0
    max_delay: int = 0  # ticks; random delays also reorder messages
    sync_now: float = 1.0  # chance a Ready's writes are made durable at once


@dataclass
class Disk:
    """What survives a crash: only what a flush made durable."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: SnapshotMeta = field(default_factory=SnapshotMeta)
    snapshot_data: tuple[Entry, ...] = ()
    entries: list[Entry] = field(default_factory=list)

    def write(self, ready: Ready, snapshot_data: tuple[Entry, ...] | None) -> None:
        if ready.snapshot is not None:
            self.snapshot = ready.snapshot
            self.snapshot_data = snapshot_data or ()
            self.entries = []
        if ready.entries:
            first = ready.entries[0].index
            keep = first - self.snapshot.index - 1
            del self.entries[max(0, keep) :]
            self.entries.extend(ready.entries)
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state

    def compact(self, meta: SnapshotMeta, data: tuple[Entry, ...]) -> None:
        self.snapshot, self.snapshot_data = meta, data
        self.entries = [e for e in self.entries if e.index > meta.index]

    def reopen(self) -> None:
        """Called on restart; a disk backed by real files reloads them here."""


DiskFactory = Callable[[str, SnapshotMeta], Disk]


class TwinDisk(Disk):
    """A disk whose log and hard state are the storage layer's in-memory twins: a restarted
    peer sees exactly what ``MemoryLog`` and ``MemoryHardState`` recover from their volume
    (the snapshot payload, a tuple of entries here, stays in the ``Disk`` fields)."""

    def __init__(self, bootstrap: SnapshotMeta) -> None:
        super().__init__(snapshot=bootstrap)
        self.volume = MemoryVolume()
        self.hard_file = MemoryHardState(self.volume)
        self.log: MemoryLog | None = None

    def reopen(self) -> None:
        self.volume.crash()  # the process that held the log is gone
        self.log = MemoryLog(self.volume)
        self.hard_state, _ = self.hard_file.load()
        self.entries = self.log.entries(self.log.first_index, self.log.last_index + 1)

    def write(self, ready: Ready, snapshot_data: tuple[Entry, ...] | None) -> None:
        assert self.log is not None
        if ready.snapshot is not None:
            self.snapshot, self.snapshot_data = ready.snapshot, snapshot_data or ()
            self.log.reset(ready.snapshot.index, ready.snapshot.term)
        if ready.entries:
            self.log.append(ready.entries)
        if ready.hard_state is not None:
            self.hard_file.save(ready.hard_state)

    def compact(self, meta: SnapshotMeta, data: tuple[Entry, ...]) -> None:
        assert self.log is not None
        self.snapshot, self.snapshot_data = meta, data
        self.log.compact(meta.index, meta.term)  # at or below the stable index: never a reset


def memory_disk(peer: str, bootstrap: SnapshotMeta) -> Disk:
    return TwinDisk(bootstrap)


@dataclass
class _PendingWrite:
    ready: Ready
    snapshot_data: tuple[Entry, ...] | None


class SimPeer:
    """Drives one core the way the real actors will: persist, send, apply, answer reads."""

    def __init__(self, cluster: Cluster, peer_id: str, bootstrap: Configuration) -> None:
        self.cluster = cluster
        self.id = peer_id
        self.disk = cluster.disk_factory(peer_id, SnapshotMeta(0, 0, bootstrap))
        self.node: Node | None = None
        self.applied: list[Entry] = []  # the state machine: every applied entry, in order
        self.pending_writes: deque[_PendingWrite] = deque()
        self.waiting_reads: list[tuple[int, Any]] = []  # (index, context)
        self.restarts = 0
        self.start()

    @property
    def alive(self) -> bool:
        return self.node is not None

    def start(self) -> None:
        rng = random.Random(f"{self.cluster.seed}/{self.id}/{self.restarts}")
        self.disk.reopen()
        self.node = self.cluster.node_factory(
            self.id,
            rng,
            self.cluster.options,
            hard_state=self.disk.hard_state,
            snapshot=self.disk.snapshot,
            entries=list(self.disk.entries),
        )
        self.applied = list(self.disk.snapshot_data)
        self.restarts += 1

    def crash(self) -> None:
        """Lose memory, unsynced writes, and messages still in our send buffers."""
        self.node = None
        self.pending_writes.clear()
        self.waiting_reads.clear()
        self.cluster.lose_unsent(self.id)

    def process(self) -> None:
        """Carry out every Ready the core has, until it is quiet."""
        node = self.node
        while node is not None and node.has_ready():
            ready = node.ready()
            self._handle(node, ready)
            node = self.node

    def _handle(self, node: Node, ready: Ready) -> None:
        cluster = self.cluster
        cluster.checker.observe_appended(node, ready.entries)
        for msg in ready.messages:
            cluster.send(msg)
        snapshot_data = None
        if ready.snapshot is not None:
            snapshot_data = cluster.take_snapshot_payload(self.id, ready.snapshot)
            self.applied = list(snapshot_data)
            for entry in snapshot_data:
                if entry.kind is EntryKind.NORMAL:
                    cluster.on_applied(self.id, entry)
        if ready.must_persist or ready.messages_after_persist:
            self.pending_writes.append(_PendingWrite(ready, snapshot_data))
        for entry in ready.committed:
            if entry.index != len(self.applied) + 1:
                cluster.checker.fail(
                    f"{self.id} asked to apply {entry.index} after {len(self.applied)}"
                )
            self.applied.append(entry)
            cluster.checker.observe_applied(self.id, entry)
            if entry.kind is EntryKind.NORMAL:
                cluster.on_applied(self.id, entry)
        for failure in ready.read_failures:
            cluster.on_read_failed(self.id, failure.context)
        for state in ready.read_states:
            self.waiting_reads.append((state.index, state.context))
        self._answer_reads()
        cluster.checker.observe_node(node)
        if self.pending_writes and cluster.rng.random() < cluster.faults.sync_now:
            self.flush()
        self._maybe_compact(node)

    def _answer_reads(self) -> None:
        if not self.waiting_reads:
            return
        applied = len(self.applied)
        still = []
        for index, context in self.waiting_reads:
            if index <= applied:
                self.cluster.on_read_served(self.id, context, applied)
            else:
                still.append((index, context))
        self.waiting_reads = still

    def flush(self) -> None:
        """Make every pending write durable, in order, then send what waited for it."""
        while self.pending_writes and self.node is not None:
            write = self.pending_writes.popleft()
            ready = write.ready
            self.disk.write(ready, write.snapshot_data)
            for msg in ready.messages_after_persist:
                self.cluster.send(msg)
            if ready.entries:
                last = ready.entries[-1]
                self.node.persisted(last.index, last.term)
            elif ready.snapshot is not None:
                self.node.persisted(ready.snapshot.index, ready.snapshot.term)
        self.process()

    def _maybe_compact(self, node: Node) -> None:
        every = self.cluster.compact_every
        if not every:
            return
        index = min(len(self.applied), node.stable_index)
        if index - node.log.snap_index < every:
            return
        # Keep a few entries behind the snapshot, as a real peer does, so a follower that is
        # only slightly behind still gets entries rather than a snapshot.
        index -= self.cluster.rng.randint(0, every // 2)
        if index > node.log.snap_index and node.compact(index):
            self.disk.compact(node.snapshot_meta, tuple(self.applied[:index]))


class Cluster:
    """A simulated cluster; ``step`` advances time by one tick."""

    def __init__(
        self,
        seed: int,
        peers: list[str],
        voters: list[str],
        *,
        options: NodeOptions | None = None,
        faults: Faults | None = None,
        node_factory: NodeFactory = Node,
        compact_every: int = 0,
        disk_factory: DiskFactory = memory_disk,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.options = options or NodeOptions()
        self.faults = faults or Faults()
        self.node_factory = node_factory
        self.compact_every = compact_every
        self.disk_factory = disk_factory
        self.checker = SafetyChecker()
        self.time = 0
        self.blocked: set[tuple[str, str]] = set()
        self.in_flight: list[tuple[int, int, Message, Any]] = []
        self._sequence = 0
        # Snapshot bytes travel beside the InstallSnapshot message, as they will by sendfile.
        self._payloads: dict[tuple[str, int], tuple[Entry, ...]] = {}
        bootstrap = Configuration.of(voters)
        self.peers = {
            peer: SimPeer(self, peer, bootstrap if peer in voters else Configuration())
            for peer in peers
        }
        self.read_started: dict[Any, int] = {}
        self.reads_served = 0
        self.applied_data: dict[str, set[bytes]] = {p: set() for p in peers}
        self.trace: list[str] | None = None
        self.messages_sent = 0

    # ---------------------------------------------------------------- network

    def send(self, msg: Message) -> None:
        self.messages_sent += 1
        attachment = None
        if isinstance(msg, InstallSnapshot):
            attachment = self._snapshot_of(msg.src, msg.meta)
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
        if sender.node is not None:
            sender.node.report_snapshot(msg.dst, success)
            sender.process()

    def _snapshot_of(self, peer: str, meta: SnapshotMeta) -> tuple[Entry, ...]:
        disk = self.peers[peer].disk
        if disk.snapshot.index != meta.index:
            raise AssertionError(f"{peer} sent snapshot {meta.index}, holds {disk.snapshot.index}")
        return disk.snapshot_data

    def take_snapshot_payload(self, peer: str, meta: SnapshotMeta) -> tuple[Entry, ...]:
        payload = self._payloads.pop((peer, meta.index), None)
        if payload is None:
            raise AssertionError(f"{peer} installs snapshot {meta.index} it never received")
        return payload

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
        if peer is None or peer.node is None or (msg.src, msg.dst) in self.blocked:
            self._dropped(msg)
            return
        if self.trace is not None:
            self.trace.append(f"{msg.src}->{msg.dst} {describe(msg)}")
        if attachment is not None:
            self._payloads[(msg.dst, msg.meta.index)] = attachment  # type: ignore[attr-defined]
        peer.node.step(msg)
        peer.process()
        if isinstance(msg, InstallSnapshot):
            self._report_snapshot(msg, True)  # the transfer itself completed

    # ---------------------------------------------------------------- time

    def tick(self) -> None:
        self.time += 1
        for peer in self.peers.values():
            if peer.node is not None:
                peer.node.tick()
                peer.process()
        self.deliver_due()
        for peer in self.peers.values():
            if peer.pending_writes and self.rng.random() < 0.5:
                peer.flush()

    def settle(self, max_rounds: int = 1000) -> None:
        """Deliver and flush until nothing moves (without advancing time)."""
        for _ in range(max_rounds):
            moved = self.deliver_due()
            for peer in self.peers.values():
                if peer.pending_writes:
                    peer.flush()
                    moved += 1
            if not moved and not any(m[0] <= self.time for m in self.in_flight):
                return

    # ---------------------------------------------------------------- observations

    def leader(self) -> SimPeer | None:
        """The live leader with the highest term, if any."""
        best = None
        for peer in self.peers.values():
            node = peer.node
            if node is None or node.role is not Role.LEADER:
                continue
            if best is None or node.term > best.node.term:  # type: ignore[union-attr]
                best = peer
        return best

    def on_applied(self, peer: str, entry: Entry) -> None:
        self.applied_data[peer].add(entry.data)

    def begin_read(self, peer: str, context: Any) -> None:
        self.read_started[context] = self.checker.max_commit
        node = self.peers[peer].node
        assert node is not None
        node.read_index(context)
        self.peers[peer].process()

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
    return f":{data.decode()}" if isinstance(data, bytes) else f":{data!r}"

"""A peer that feeds a bare consensus core, for the scenario traces (tests/core/scenarios):
their commands are the core's own inputs (campaign, propose, read-index), and their output
prints each Ready's writes, so they need a peer that carries out Readys in plain sight.

It is test tooling only: the simulation's schedules run ``zraft.sim.DrivenPeer``, the
production driver. Its disk keeps what a flush made durable and nothing else; snapshot
payloads are tuples of entries that travel beside ``InstallSnapshot``.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from zraft.core import (
    Configuration,
    Entry,
    HardState,
    InstallSnapshot,
    Message,
    Node,
    Ready,
    SnapshotMeta,
)
from zraft.sim import Cluster
from zraft.transport import ClientRequest


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


@dataclass
class PendingWrite:
    ready: Ready
    snapshot_data: tuple[Entry, ...] | None


class CorePeer:
    """Carries out a bare core's Readys: persist, send, apply, answer reads."""

    def __init__(self, cluster: Cluster, peer_id: str, founders: frozenset[str] | None) -> None:
        self.cluster = cluster
        self.id = peer_id
        bootstrap = Configuration.of(sorted(founders)) if founders else Configuration()
        self.disk = Disk(snapshot=SnapshotMeta(0, 0, bootstrap))
        self.node: Node | None = None
        self.applied: list[Entry] = []  # the state machine: every applied entry, in order
        self.pending_writes: deque[PendingWrite] = deque()
        self.waiting_reads: list[tuple[int, Any]] = []  # (index, context)
        self.payloads: dict[int, tuple[Entry, ...]] = {}  # snapshots received, by index
        self.restarts = 0
        self.start()

    @property
    def alive(self) -> bool:
        return self.node is not None

    def start(self) -> None:
        rng = random.Random(f"{self.cluster.seed}/{self.id}/{self.restarts}")
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

    def close(self) -> None:
        self.node = None

    # ------------------------------------------------------------------ the cluster's calls

    def tick(self) -> None:
        if self.node is not None:
            self.node.tick()
            self.process()

    def busy(self) -> bool:
        return bool(self.pending_writes)

    def catch_up(self) -> None:
        self.flush()

    def deliver(self, msg: Message, attachment: Any) -> None:
        if self.node is None:
            return
        if isinstance(msg, InstallSnapshot) and attachment is not None:
            self.payloads[msg.meta.index] = attachment
        self.node.step(msg)
        self.process()

    def snapshot_reported(self, peer: str, success: bool) -> None:
        if self.node is not None:
            self.node.report_snapshot(peer, success)
            self.process()

    def request(self, identity: bytes, request: ClientRequest) -> None:
        raise NotImplementedError("a bare core takes no client requests")

    # ------------------------------------------------------------------ Readys

    def process(self) -> None:
        """Carry out every Ready the core has, until it is quiet."""
        node = self.node
        while node is not None and node.has_ready():
            self._handle(node, node.ready())
            node = self.node

    def _handle(self, node: Node, ready: Ready) -> None:
        cluster = self.cluster
        cluster.checker.observe_appended(node, ready.entries)
        for msg in ready.messages:
            attachment = self.disk.snapshot_data if isinstance(msg, InstallSnapshot) else None
            cluster.send(msg, attachment)
        snapshot_data = None
        if ready.snapshot is not None:
            snapshot_data = self.payloads.pop(ready.snapshot.index)
            self.applied = list(snapshot_data)
        if ready.must_persist or ready.messages_after_persist:
            self.pending_writes.append(PendingWrite(ready, snapshot_data))
        for entry in ready.committed:
            if entry.index != len(self.applied) + 1:
                cluster.checker.fail(
                    f"{self.id} asked to apply {entry.index} after {len(self.applied)}"
                )
            self.applied.append(entry)
            cluster.checker.observe_applied(self.id, entry)
        for failure in ready.read_failures:
            cluster.on_read_failed(self.id, failure.context)
        for state in ready.read_states:
            self.waiting_reads.append((state.index, state.context))
        self._answer_reads()
        cluster.checker.observe_node(node)
        if self.pending_writes and cluster.rng.random() < cluster.faults.sync_now:
            self.flush()

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

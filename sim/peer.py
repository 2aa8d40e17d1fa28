"""One simulated peer that runs the production driver: ``PeerDriver`` and ``ApplyDriver``
with the real ``ReplicatedState``, the key-value backend, the real ``LogWriter`` and the
storage seams (the in-memory twins by default, real files if the disk says so).

The peer is an event loop like the process: the driver's effects become queued inputs
(durable writes, the state machine's inbox, the peer's own inbox), and the seeded cluster
decides when each queue is worked off, so syncs and applies lag as threads would. Nothing
is carried out here that the process carries out differently: the only code of its own is
the queueing and the snapshot transfer (files copied where the process streams them).
"""

from __future__ import annotations

import contextlib
import os
import random
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from zraft.actors.apply_driver import ApplyDriver
from zraft.actors.driver import PeerDriver
from zraft.actors.founding import has_state, write_founding
from zraft.actors.log_actor import LogWriter
from zraft.actors.messages import (
    AppliedUpTo,
    ClientBatch,
    CompactLog,
    DiscardStaged,
    Identity,
    InstallState,
    PeerBatch,
    PersistItem,
    SendSnapshot,
    SnapshotReport,
    SnapshotStaged,
)
from zraft.actors.recovery import recover
from zraft.actors.state_machine import ReplicatedState
from zraft.actors.state_machine_actor import write_snapshot
from zraft.backends.base import SnapshotWriter
from zraft.backends.kv import KeyValueBackend
from zraft.core import (
    AppendResponse,
    Configuration,
    Entry,
    InstallSnapshot,
    Message,
    Node,
    Role,
    SnapshotMeta,
    VoteResponse,
)
from zraft.storage import (
    HardStateStorage,
    LogStorage,
    MemoryHardState,
    MemoryLog,
    MemorySnapshotStore,
    MemoryVolume,
    SnapshotStorage,
)
from zraft.transport import ClientReply, ClientRequest

if TYPE_CHECKING:
    from .cluster import Cluster

# Snapshot files as they travel beside InstallSnapshot: relative path -> bytes.
SnapshotFiles = dict[str, bytes]
DriverFactory = Callable[..., PeerDriver]
ApplyDriverFactory = Callable[..., ApplyDriver]


class PeerDisk(Protocol):
    """A peer's storage across restarts: stores opened over it see what was durable."""

    def open_log(self) -> LogStorage: ...

    def open_hard_state(self) -> HardStateStorage: ...

    def open_snapshots(self) -> SnapshotStorage: ...

    def crash(self, raft_log: LogStorage | None = None) -> None:
        """The process owning the stores died (between calls)."""
        ...


class MemoryDisk:
    """The storage twins over one ``MemoryVolume``; snapshots are laid out in ``scratch``."""

    def __init__(self, scratch: str) -> None:
        self.volume = MemoryVolume(name=scratch)
        self.scratch = scratch

    def open_log(self) -> LogStorage:
        return MemoryLog(self.volume)

    def open_hard_state(self) -> HardStateStorage:
        return MemoryHardState(self.volume)

    def open_snapshots(self) -> SnapshotStorage:
        return MemorySnapshotStore(self.volume, self.scratch)

    def crash(self, raft_log: LogStorage | None = None) -> None:
        self.volume.crash()


class _Running:
    """What a running peer holds in memory; a crash drops it whole."""

    def __init__(
        self,
        node: Node,
        raft_log: LogStorage,
        snapshots: SnapshotStorage,
        writer: LogWriter,
        driver: PeerDriver,
        applier: ApplyDriver,
    ) -> None:
        self.node = node
        self.raft_log = raft_log
        self.snapshots = snapshots
        self.writer = writer
        self.driver = driver
        self.applier = applier
        self.inbox: deque[Any] = deque()  # the peer driver's inputs
        self.apply_inbox: deque[Any] = deque()  # the apply driver's inputs
        self.unsynced: list[PersistItem] = []  # handed to storage, not yet written
        self.jobs: deque[Callable[[], None]] = deque()  # worker threads' work (snapshots)


class DrivenPeer:
    """Implements the edges of both drivers (``DriverEdges`` and ``ApplyEdges``)."""

    def __init__(self, cluster: Cluster, peer_id: str, founders: Iterable[str] | None) -> None:
        self.cluster = cluster
        self.id = peer_id
        self.founders = None if founders is None else sorted(founders)
        scratch = os.path.join(cluster.scratch(), peer_id.replace(":", "_"))
        self.disk: PeerDisk = cluster.disk_factory(peer_id, scratch)
        self.running: _Running | None = None
        self.restarts = 0
        # Replies made while the state machine applied, released once the checker saw
        # the entries they answer.
        self._replies: list[tuple[Identity, ClientReply]] = []
        self.start()

    # ------------------------------------------------------------------ life

    @property
    def alive(self) -> bool:
        return self.running is not None

    @property
    def node(self) -> Node | None:
        return None if self.running is None else self.running.node

    @property
    def applied_index(self) -> int:
        return 0 if self.running is None else self.running.applier.state.applied_index

    @property
    def state(self) -> ReplicatedState | None:
        return None if self.running is None else self.running.applier.state

    def start(self) -> None:
        cluster = self.cluster
        rng = random.Random(f"{cluster.seed}/{self.id}/{self.restarts}")
        self.restarts += 1
        raft_log = self.disk.open_log()
        hard_state_file = self.disk.open_hard_state()
        snapshots = self.disk.open_snapshots()
        hard_state, _ = hard_state_file.load()
        latest = snapshots.latest()
        if self.founders and not has_state(raft_log, hard_state, latest is not None):
            hard_state = write_founding(raft_log, hard_state_file, self.founders)
        backend = KeyValueBackend()
        backend.init(self.id)
        state = ReplicatedState(backend, Configuration())
        self._observing(state)
        node = recover(
            peer_id=self.id,
            rng=rng,
            options=cluster.options,
            raft_log=raft_log,
            hard_state=hard_state,
            latest=latest,
            state=state,
            node_factory=cluster.node_factory,
        )
        writer = LogWriter(
            raft_log=raft_log,
            hard_state_file=hard_state_file,
            snapshots=snapshots,
            snapshot_lock=contextlib.nullcontext(),
            send=self.send,
            state_machine=_Inbox(self),
            saved=hard_state,
        )
        applier = cluster.apply_driver_factory(
            peer_id=self.id,
            state=state,
            max_log_count=cluster.compact_every or 1 << 60,
            edges=self,
            clock=lambda: cluster.time * cluster.tick_seconds,
        )
        driver = cluster.driver_factory(
            node=node,
            edges=self,
            applied=AppliedUpTo(state.applied_index, state.applied_term, state.session_table()),
            tick_ms=cluster.tick_seconds * 1000,
        )
        self.running = _Running(node, raft_log, snapshots, writer, driver, applier)
        driver.open()

    def crash(self) -> None:
        """Lose memory, writes not yet durable, and messages still in our send buffers."""
        running, self.running = self.running, None
        self._replies.clear()
        if running is not None:
            self.disk.crash(running.raft_log)
        self.cluster.lose_unsent(self.id)

    def close(self) -> None:
        running, self.running = self.running, None
        if running is not None:
            running.raft_log.close()

    # ------------------------------------------------------------------ the loop

    def process(self, *, settle: bool = False) -> None:
        """Work the queues off: the peer's inbox first; the state machine's and the disk's
        when the dice say so (always with ``settle``), so they lag as threads do."""
        rng, faults = self.cluster.rng, self.cluster.faults
        while (running := self.running) is not None:
            if running.inbox:
                inputs = list(running.inbox)
                running.inbox.clear()
                for message in inputs:
                    running.driver.receive(message)
                running.driver.drain()
            elif running.unsynced and (settle or rng.random() < faults.sync_now):
                self.sync()
            elif running.apply_inbox and (settle or rng.random() < faults.apply_now):
                self._apply_all(running)
            elif running.jobs and (settle or rng.random() < faults.apply_now):
                running.jobs.popleft()()
            else:
                break
        self._release_replies()

    def tick(self) -> None:
        running = self.running
        if running is not None:
            running.driver.tick()
            running.driver.drain()
            self.process()

    def busy(self) -> bool:
        running = self.running
        if running is None:
            return False
        return bool(running.unsynced or running.apply_inbox or running.inbox or running.jobs)

    def sync(self) -> None:
        """Write what was handed to storage (one group, as the log writer does), send what
        waited for it, and tell the driver it is durable."""
        running = self.running
        if running is None or not running.unsynced:
            return
        items, running.unsynced = running.unsynced, []
        running.inbox.append(running.writer.write(items))

    def catch_up(self) -> None:
        """Every queue, worked off."""
        self.process(settle=True)

    def _apply_all(self, running: _Running) -> None:
        inputs = list(running.apply_inbox)
        running.apply_inbox.clear()
        for message in inputs:
            running.applier.receive(message)
            self._release_replies()

    def _observing(self, state: ReplicatedState) -> None:
        """Every entry the state machine applies is shown to the checker first, in order,
        wherever the apply driver applies it (a batch, or the entries an install held)."""
        apply = state.apply
        checker = self.cluster.checker

        def observed(entries: list[Entry]) -> Any:
            expected = state.applied_index + 1
            for entry in entries:
                if entry.index != expected:
                    checker.fail(f"{self.id} applies {entry.index} after {expected - 1}")
                expected += 1
                checker.observe_applied(self.id, entry)
            return apply(entries)

        state.apply = observed  # type: ignore[method-assign]

    def _release_replies(self) -> None:
        replies, self._replies = self._replies, []
        if replies:
            self.cluster.on_replies(self.id, replies, self.applied_index)

    # ------------------------------------------------------------------ inputs from the cluster

    def deliver(self, msg: Message, attachment: SnapshotFiles | None) -> None:
        running = self.running
        if running is None:
            return
        if isinstance(msg, InstallSnapshot) and attachment is not None:
            path = running.snapshots.begin_install()
            for rel, data in attachment.items():
                target = os.path.join(path, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with open(target, "wb") as out:
                    out.write(data)
            running.inbox.append(SnapshotStaged(msg.meta.index, path))
        running.inbox.append(PeerBatch((msg,)))
        self.process()

    def request(self, identity: Identity, request: ClientRequest) -> None:
        """A client's request, as the transport hands it over."""
        self.requests([(identity, request)])

    def requests(self, batch: Iterable[tuple[Identity, ClientRequest]]) -> None:
        """Client requests that arrived together (one ``ClientBatch``)."""
        running = self.running
        if running is not None:
            running.driver.receive(ClientBatch(tuple(batch)))
            running.driver.drain()
            self.process()

    def snapshot_reported(self, peer: str, success: bool) -> None:
        running = self.running
        if running is not None:
            running.inbox.append(SnapshotReport(peer, success))
            self.process()

    # ------------------------------------------------------------------ the drivers' edges

    def send(self, messages: Iterable[Message]) -> None:
        """The driver's messages, and the log writer's once their write is durable."""
        for msg in messages:
            self._check_promise(msg)
            self.cluster.send(msg)

    def _check_promise(self, msg: Message) -> None:
        """A vote or an acknowledgement promises that what it grants is durable: checked
        against the stores themselves as it leaves (persist before send)."""
        running = self.running
        if running is None:
            return
        if isinstance(msg, AppendResponse) and msg.success:
            raft_log, log = running.raft_log, running.node.log
            index = msg.index
            if index <= log.snap_index:
                durable_here = raft_log.base_index >= index or raft_log.term(index) is not None
                if not durable_here:
                    self.cluster.checker.fail(
                        f"{self.id} acknowledged snapshot index {index} to {msg.dst} before "
                        f"its log was cut to the snapshot (base {raft_log.base_index})"
                    )
            elif index > raft_log.base_index:
                # What the ack vouches for: the entry the leader it answers holds there.
                expected = log.term(index)
                leader = self.cluster.peers[msg.dst].node if msg.dst in self.cluster.peers else None
                if leader is not None and leader.role is Role.LEADER and leader.term == msg.term:
                    expected = leader.log.term(index) or expected
                durable = raft_log.term(index) if index <= raft_log.last_index else None
                if durable is None or durable != expected:
                    self.cluster.checker.fail(
                        f"{self.id} acknowledged index {index} (term {expected}) to "
                        f"{msg.dst}, but its durable log holds term {durable} there"
                    )
        elif isinstance(msg, VoteResponse) and msg.granted and not msg.pre_vote:
            # Durable: this vote, or a later term (after a restart it cannot vote in that
            # term again; a group of writes saves only its last hard state).
            saved = running.writer.saved
            if saved.term < msg.term or (saved.term == msg.term and saved.vote != msg.dst):
                self.cluster.checker.fail(
                    f"{self.id} granted {msg.dst} its vote in term {msg.term}, but its durable "
                    f"hard state is term {saved.term} vote {saved.vote}"
                )

    def persist(self, item: PersistItem) -> None:
        running = self.running
        assert running is not None
        self.cluster.checker.observe_appended(running.node, list(item.entries))
        running.unsynced.append(item)

    def compact(self, order: CompactLog) -> None:
        assert self.running is not None
        self.running.writer.compact(order)

    def to_state_machine(self, message: Any) -> None:
        assert self.running is not None
        self.running.apply_inbox.append(message)

    def to_snapshots(self, message: Any) -> None:
        running = self.running
        assert running is not None
        if isinstance(message, DiscardStaged):
            for path in message.paths:
                running.snapshots.abort_install(path)
            return
        if not isinstance(message, SendSnapshot):
            raise TypeError(f"the simulation moves snapshots itself, not {message!r}")
        msg = message.message
        latest = running.snapshots.latest()
        if latest is None or latest[0].index != msg.meta.index:
            # A newer one was taken meanwhile: superseded, as the snapshot actor reports it
            # (the core asks again with the snapshot it then knows of).
            running.inbox.append(SnapshotReport(msg.dst, False))
            return
        path = latest[1]
        files = {}
        for rel, _ in running.snapshots.list_files(path):
            with open(os.path.join(path, rel), "rb") as source:
                files[rel] = source.read()
        self.cluster.send(msg, files)

    def reply(self, replies: Iterable[tuple[Identity, ClientReply]]) -> None:
        self._replies.extend(replies)  # released by the loop (see _release_replies)

    def set_peers(self, peers: frozenset[str]) -> None:
        pass  # every simulated peer can reach every other

    def removed(self) -> None:
        pass  # the process stops; simulated peers stay up (the schedule may add them back)

    def flush(self) -> None:
        running = self.running
        if running is not None:
            self.cluster.checker.observe_node(running.node)
        self._release_replies()

    def counters(self) -> dict[str, tuple[tuple[str, Any], ...]]:
        return {}

    def tell_peer(self, message: Any) -> None:
        assert self.running is not None
        self.running.inbox.append(message)

    def write_snapshot(
        self, meta: SnapshotMeta, writer: SnapshotWriter, extra: dict[str, Any]
    ) -> None:
        running = self.running
        assert running is not None
        lock = contextlib.nullcontext()
        if not writer.background:
            running.apply_inbox.append(write_snapshot(running.snapshots, lock, meta, writer, extra))
            return

        def job() -> None:  # the process writes it on a worker thread, while applying goes on
            done = write_snapshot(running.snapshots, lock, meta, writer, extra)
            running.apply_inbox.append(done)

        running.jobs.append(job)


class _Inbox:
    """The log writer's way to the state machine (``InstallState``), as a pykka ref's tell."""

    def __init__(self, peer: DrivenPeer) -> None:
        self.peer = peer

    def tell(self, message: InstallState) -> None:
        self.peer.to_state_machine(message)



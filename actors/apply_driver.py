"""The state side of a peer's driver, sans I/O: applies committed entries to the replicated
state, answers the writes and reads that waited for them, arms and fires watches, and says
when a snapshot is due. It has no thread, clock, socket or file of its own: inputs arrive as
the messages ``PeerDriver`` emits (``receive``), effects leave through ``ApplyEdges``.

The state machine actor is a thin shell around it on its own thread (a long apply, user
code, never holds up the peer's loop); the simulation drives the very same class, so the
order "apply, then answer; a read only once its index is applied" is proven where it runs.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from zraft.backends.base import Failure, SnapshotWriter
from zraft.core import Entry, SnapshotMeta
from zraft.transport import ClientReply

from .counters import Counters
from .messages import (
    AppliedUpTo,
    ApplyBatch,
    AwaitWrites,
    ExpectSnapshot,
    Identity,
    InstallState,
    LeadershipLost,
    PendingRead,
    PendingWrite,
    ReportMetrics,
    ServeReads,
    SnapshotTaken,
    SnapshotWritten,
    WatchPoll,
    WatchTick,
)
from .state_machine import Applied, ReplicatedState
from .watches import PollAnswer, WatchTable

log = logging.getLogger(__name__)

Replies = list[tuple[Identity, ClientReply]]


class ApplyEdges(Protocol):
    """Where the apply driver's effects go."""

    def reply(self, replies: Replies) -> None:
        """Answers to clients (through the transport)."""
        ...

    def tell_peer(self, message: Any) -> None:
        """``AppliedUpTo``, ``SnapshotTaken`` and ``MetricsReport``, to the peer driver."""
        ...

    def write_snapshot(
        self, meta: SnapshotMeta, writer: SnapshotWriter, extra: dict[str, Any]
    ) -> None:
        """Make the snapshot durable (now or on a worker), then hand ``SnapshotWritten`` to
        ``ApplyDriver.receive`` (at once is allowed)."""
        ...


def reply_for(
    request_id: int, outcome: tuple[bool, Any], leader: str | None, index: int = 0
) -> ClientReply:
    ok, value = outcome
    if ok:
        return ClientReply(request_id, True, value, None, leader, index)
    failure = Failure.from_wire(value)
    return ClientReply(request_id, False, failure.reason, error=failure.code, leader=leader)


def snapshot_point(after: int, every: int, rank: int, peers: int) -> int:
    """The applied index at which a peer's next snapshot falls due, given its last at
    ``after``: about ``every`` entries later, at a point of its own among the ``peers``
    (``rank``: its place among them). Peers apply the same entries at about the same time;
    a snapshot, and the compaction after it, holds its peer up for a moment, and if every
    peer did it at the same index the whole cluster would stall together. So peer ``rank``
    snapshots where ``index % every == rank * every // peers``: the first such index more
    than half an interval after ``after``, then every ``every`` entries."""
    if every < 2 or peers < 2:
        return after + every
    phase = rank * every // peers
    earliest = after + every // 2 + 1
    return earliest + (phase - earliest) % every


class ApplyDriver:
    """Owned by one thread at a time (the state machine actor's, or the simulation's)."""

    def __init__(
        self,
        *,
        peer_id: str,
        state: ReplicatedState,
        max_log_count: int,
        edges: ApplyEdges,
        clock: Callable[[], float],
    ) -> None:
        self.peer_id = peer_id
        self.state = state
        self.max_log_count = max_log_count
        self.edges = edges
        self.clock = clock  # for watch polls' deadlines only
        self.next_snapshot_at = self._snapshot_point(state.applied_index)
        self.sessions_sent = state.sessions_changes  # the peer driver starts with a copy
        self.pending_writes: dict[int, PendingWrite] = {}  # the writes' waiters, by index
        self.waiters_term = 0  # the term of the latest waiters handed over
        self.waiting_reads: list[tuple[int, int, PendingRead]] = []  # heap by index
        self._read_sequence = 0
        self.expecting_snapshot: int | None = None
        self.held: list[Entry] = []  # entries that wait for a snapshot install
        self.snapshotting = False
        self.watches = WatchTable(peer_id)
        self.counters = Counters(
            "apply",
            applied_entries=0,
            batches=0,
            snapshots_taken=0,
            snapshots_installed=0,
            watches_fired=0,
            watches_armed=0,
        )
        self._handlers: dict[type, Callable[[Any], None]] = {
            ApplyBatch: self._apply_batch,
            AwaitWrites: self._await_writes,
            ServeReads: lambda m: self._queue_reads(m.reads),
            ExpectSnapshot: self._expect_snapshot,
            InstallState: self._install,
            SnapshotWritten: self._finish_snapshot,
            WatchPoll: self._poll,
            WatchTick: self._watch_tick,
            LeadershipLost: self._leadership_lost,
            ReportMetrics: lambda _: self._report_metrics(),
        }

    def receive(self, message: Any) -> None:
        handler = self._handlers.get(type(message))
        if handler is None:
            raise TypeError(f"the apply driver has no input {type(message).__name__}")
        handler(message)

    # ------------------------------------------------------------------ applying

    def _apply_batch(self, message: ApplyBatch) -> None:
        if message.waiting:
            self._register(message.waiting)
        self._apply(list(message.entries))

    def _await_writes(self, message: AwaitWrites) -> None:
        self._register(message.writes)

    def _register(self, writes: tuple[PendingWrite, ...]) -> None:
        """Hold each write's waiter until its index is applied (in proposal order)."""
        pending = self.pending_writes
        lost: list[PendingWrite] = []
        for write in writes:
            if write.term > self.waiters_term:
                # Our first proposal of a new term: from its index on, our log holds entries
                # of this term only, so earlier terms' proposals there will not apply through
                # us. They may still commit through another peer that holds them and leads
                # later, so the answer is "retry" (maybe applied: the client asks again with
                # its seq, which exactly-once makes safe), never "not_leader" (not applied).
                self.waiters_term = write.term
                stale = [w for w in pending.values() if w.index >= write.index]
                for old in stale:
                    del pending[old.index]
                lost.extend(stale)
            pending[write.index] = write
        if lost:
            self.edges.reply(
                [(w.identity, ClientReply(w.request_id, False, None, error="retry")) for w in lost]
            )

    def _expect_snapshot(self, message: ExpectSnapshot) -> None:
        self.expecting_snapshot = message.index

    def _apply(self, entries: list[Entry]) -> None:
        if self.expecting_snapshot is not None:
            self.held.extend(entries)
            return
        entries = [e for e in entries if e.index > self.state.applied_index]
        if not entries:
            return
        replies: Replies = []
        applied_entries = self.state.apply(entries)
        self._tell_applied()
        for applied in applied_entries:
            pending = self.pending_writes.pop(applied.index, None)
            if pending is None:
                continue
            if pending.term != applied.term:
                # Our proposal lost to another leader's entry at that index.
                reply = ClientReply(pending.request_id, False, None, error="not_leader")
                replies.append((pending.identity, reply))
            elif applied.outcome is not None:
                reply = reply_for(pending.request_id, applied.outcome, None, applied.answered_at)
                replies.append((pending.identity, reply))
        self.counters.add("applied_entries", len(entries))
        self.counters.add("batches")
        if not self.watches.idle:
            replies.extend(self._fire_watches(applied_entries))
        replies.extend(self._due_reads())
        if replies:
            self.edges.reply(replies)
        if self.state.applied_index >= self.next_snapshot_at and not self.snapshotting:
            self._take_snapshot()

    def _snapshot_point(self, after: int) -> int:
        members = self.state.config.members
        rank = sorted(members).index(self.peer_id) if self.peer_id in members else 0
        return snapshot_point(after, self.max_log_count, rank, len(members))

    def _take_snapshot(self) -> None:
        """Snapshot the applied state; the edge writes it (a backend that copied its state
        may be written meanwhile on a worker, so applying goes on)."""
        meta, writer, extra = self.state.snapshot()
        self.snapshotting = True
        self.edges.write_snapshot(meta, writer, extra)

    def _finish_snapshot(self, done: SnapshotWritten) -> None:
        self.snapshotting = False
        backend = self.state.backend
        if done.error is not None:
            backend.snapshot_failed(RuntimeError(done.error))
            return
        backend.snapshot_done()
        self.next_snapshot_at = self._snapshot_point(done.index)
        self.counters.add("snapshots_taken")
        self._report_metrics()  # at once: a snapshot is rare, and someone may be waiting
        self.edges.tell_peer(SnapshotTaken(done.index))

    def _install(self, message: InstallState) -> None:
        self.state.install(message.meta, Path(message.path), message.extra)
        self._tell_applied()
        self.next_snapshot_at = self._snapshot_point(message.meta.index)
        self.expecting_snapshot = None
        self.counters.add("snapshots_installed")
        self._report_metrics()
        held, self.held = self.held, []
        for index in [i for i in self.pending_writes if i <= message.meta.index]:
            write = self.pending_writes.pop(index)
            retry = ClientReply(write.request_id, False, error="retry")
            self.edges.reply([(write.identity, retry)])
        self._apply(held)

    def _tell_applied(self) -> None:
        """Before any reply that depends on it leaves: the peer driver's copy of how far we
        applied (and of the sessions, after a change) is then never behind what a client
        was told (a session just opened, say, which the client pings next)."""
        state = self.state
        sessions = None
        if state.sessions_changes != self.sessions_sent:
            self.sessions_sent = state.sessions_changes
            sessions = state.session_table()
        self.edges.tell_peer(AppliedUpTo(state.applied_index, state.applied_term, sessions))

    def _report_metrics(self) -> None:
        report = self.counters.report()
        if report is not None:
            self.edges.tell_peer(report)

    # ------------------------------------------------------------------ watches

    def _fire_watches(self, applied_entries: list[Applied]) -> Replies:
        """Fire watches in commit order; a session's held poll is answered once, after the
        whole batch (its events stay in order)."""
        touched: set[str] = set()
        answers: list[PollAnswer] = []
        for applied in applied_entries:
            if applied.trigger_keys:
                fired = self.watches.fire(applied.index, applied.trigger_keys)
                touched |= fired
            if applied.ended_session is not None:
                touched.discard(applied.ended_session)
                answers.extend(self.watches.end_session(applied.ended_session))
        answers.extend(self.watches.deliver(sorted(touched)))
        self._count_watches()
        return _poll_replies(answers)

    def _count_watches(self) -> None:
        self.counters.set("watches_fired", self.watches.fired)
        self.counters.set("watches_armed", len(self.watches))

    def _poll(self, poll: WatchPoll) -> None:
        if not self.state.has_session(poll.session):
            reply = ClientReply(poll.request_id, False, "no such session", "session_expired")
            self.edges.reply([(poll.identity, reply)])
            return
        deadline = self.clock() + poll.wait
        self._answer_polls(
            self.watches.poll(
                poll.session, poll.identity, poll.request_id, poll.epoch, poll.after, deadline
            )
        )

    def _watch_tick(self, _: WatchTick) -> None:
        if not self.watches.idle:
            self._answer_polls(self.watches.expire_polls(self.clock()))

    def _leadership_lost(self, _: LeadershipLost) -> None:
        self._refuse_waiting_watch_reads()
        self._answer_polls(self.watches.lose_leadership())
        self._count_watches()

    def _answer_polls(self, answers: list[PollAnswer]) -> None:
        replies = _poll_replies(answers)
        if replies:
            self.edges.reply(replies)

    def _refuse_waiting_watch_reads(self) -> None:
        """Watch reads still waiting for their index would be armed in a table that no
        longer leads: they are answered "not leader" (the client asks the new one)."""
        waiting = [item for item in self.waiting_reads if item[2].watch is not None]
        if not waiting:
            return
        self.waiting_reads = [item for item in self.waiting_reads if item[2].watch is None]
        heapq.heapify(self.waiting_reads)
        self.edges.reply(
            [
                (read.identity, ClientReply(read.request_id, False, None, "not_leader"))
                for _, _, read in waiting
            ]
        )

    def _arm(self, read: PendingRead, data: Any, spec: Any) -> ClientReply:
        assert read.watch is not None
        session, watch_id = read.watch
        if spec is None:
            return ClientReply(
                read.request_id, False, "this query cannot be watched", "not_supported"
            )
        if not self.state.has_session(session):
            return ClientReply(read.request_id, False, "no such session", "session_expired")
        refused = self.watches.arm(session, watch_id, spec)
        if refused is not None:
            return ClientReply(read.request_id, False, refused, "rejected")
        self._count_watches()
        return ClientReply(read.request_id, True, [data, self.watches.epoch])

    # ------------------------------------------------------------------ reading

    def _queue_reads(self, reads: tuple[PendingRead, ...]) -> None:
        for read in reads:
            self._read_sequence += 1
            heapq.heappush(self.waiting_reads, (read.index, self._read_sequence, read))
        replies = self._due_reads()
        if replies:
            self.edges.reply(replies)

    def _due_reads(self) -> Replies:
        out: Replies = []
        applied = self.state.applied_index
        if self.expecting_snapshot is not None:
            return out
        while self.waiting_reads and self.waiting_reads[0][0] <= applied:
            _, _, read = heapq.heappop(self.waiting_reads)
            result = self.state.query(read.query)
            if isinstance(result, Failure):
                reply = ClientReply(read.request_id, False, result.reason, error=result.code)
            elif read.watch is not None:
                reply = self._arm(read, result.data, result.watch)
            else:
                reply = ClientReply(read.request_id, True, result.data)
            out.append((read.identity, reply))
        return out


def _poll_replies(answers: list[PollAnswer]) -> Replies:
    replies = []
    for answer in answers:
        if answer.error is not None:
            reply = ClientReply(answer.request_id, False, answer.error, answer.error)
        else:
            reply = ClientReply(answer.request_id, True, [answer.epoch, answer.events])
        replies.append((answer.identity, reply))
    return replies

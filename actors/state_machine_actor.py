"""The state machine actor: hosts the replicated state (backend + client tables), applies
committed entries, answers clients, and takes snapshots every ``max_log_count`` entries."""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pykka

from zraft.backends.base import Failure
from zraft.core import Entry
from zraft.storage import SnapshotStorage
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

Replier = Callable[[Iterable[tuple[Identity, ClientReply]]], None]


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


class StateMachineActor(pykka.ThreadingActor):
    """Has a thread of its own, so a long apply (user code) never holds up the peer's loop.
    It answers the clients itself, through the transport."""

    def __init__(
        self,
        *,
        peer_id: str,
        state: ReplicatedState,
        snapshots: SnapshotStorage,
        snapshot_lock: Any,
        max_log_count: int,
        reply: Replier,
        peer: pykka.ActorRef[Any] | None,
        on_failure: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.peer_id = peer_id
        self.state = state
        self.snapshots = snapshots
        self.snapshot_lock = snapshot_lock
        self.max_log_count = max_log_count
        self.reply = reply
        self.peer = peer
        self.report_failure = on_failure
        self.next_snapshot_at = self._snapshot_point(state.applied_index)
        self.sessions_sent = state.sessions_changes  # the peer actor starts with a copy
        self.pending_writes: dict[int, PendingWrite] = {}
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

    def on_receive(self, message: Any) -> None:
        if isinstance(message, ApplyBatch):
            for write in message.waiting:
                self.pending_writes[write.index] = write
            self._apply(list(message.entries))
        elif isinstance(message, AwaitWrites):
            for write in message.writes:
                self.pending_writes[write.index] = write
        elif isinstance(message, ServeReads):
            self._queue_reads(message.reads)
        elif isinstance(message, ExpectSnapshot):
            self.expecting_snapshot = message.index
        elif isinstance(message, InstallState):
            self._install(message)
        elif isinstance(message, SnapshotWritten):
            self._finish_snapshot(message)
        elif isinstance(message, WatchPoll):
            self._poll(message)
        elif isinstance(message, WatchTick):
            if not self.watches.idle:
                self._answer_polls(self.watches.expire_polls(time.monotonic()))
        elif isinstance(message, LeadershipLost):
            self._refuse_waiting_watch_reads()
            self._answer_polls(self.watches.lose_leadership())
            self._count_watches()
        elif isinstance(message, ReportMetrics):
            self._report_metrics()
        return None

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.report_failure(f"session actor failed: {exc_value!r}")

    # ------------------------------------------------------------------ applying

    def _apply(self, entries: list[Entry]) -> None:
        if self.expecting_snapshot is not None:
            self.held.extend(entries)
            return
        entries = [e for e in entries if e.index > self.state.applied_index]
        if not entries:
            return
        replies: list[tuple[Identity, ClientReply]] = []
        applied_entries = self.state.apply(entries)
        self._tell_applied()
        for applied in applied_entries:
            pending = self.pending_writes.pop(applied.index, None)
            if pending is None:
                continue
            if pending.term != applied.term:
                # Our proposal lost to another leader's entry at that index.
                replies.append(
                    (
                        pending.identity,
                        ClientReply(pending.request_id, False, None, error="not_leader"),
                    )
                )
            elif applied.outcome is not None:
                replies.append(
                    (
                        pending.identity,
                        reply_for(pending.request_id, applied.outcome, None, applied.answered_at),
                    )
                )
        self.counters.add("applied_entries", len(entries))
        self.counters.add("batches")
        if not self.watches.idle:
            replies.extend(self._fire_watches(applied_entries))
        replies.extend(self._due_reads())
        if replies:
            self.reply(replies)
        if self._snapshot_due() and not self.snapshotting:
            self._take_snapshot()

    def _snapshot_due(self) -> bool:
        return self.state.applied_index >= self.next_snapshot_at

    def _snapshot_point(self, after: int) -> int:
        members = self.state.config.members
        rank = sorted(members).index(self.peer_id) if self.peer_id in members else 0
        return snapshot_point(after, self.max_log_count, rank, len(members))

    def _take_snapshot(self) -> None:
        """Snapshot the applied state; a backend that copied its state writes it meanwhile
        in a worker thread, so applying goes on (the copy was taken synchronously)."""
        meta, writer, extra = self.state.snapshot()
        self.snapshotting = True
        if not writer.background:
            self._finish_snapshot(
                SnapshotWritten(meta.index, self._write_snapshot(meta, writer, extra))
            )
            return
        me = self.actor_ref

        def write() -> None:
            done = SnapshotWritten(meta.index, self._write_snapshot(meta, writer, extra))
            with contextlib.suppress(pykka.ActorDeadError):  # the peer is shutting down
                me.tell(done)

        threading.Thread(target=write, name="zraft-snapshot-writer", daemon=True).start()

    def _write_snapshot(self, meta: Any, writer: Any, extra: dict[str, Any]) -> str | None:
        try:
            with self.snapshot_lock:
                self.snapshots.create(meta, writer, extra)
        except Exception as error:  # reported to the backend; we try again later
            log.error("snapshot at %d failed: %s", meta.index, error)
            return repr(error)
        return None

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
        if self.peer is not None:
            self.peer.tell(SnapshotTaken(done.index))

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
            self.reply([(write.identity, ClientReply(write.request_id, False, error="retry"))])
        self._apply(held)

    def _tell_applied(self) -> None:
        """Before any reply that depends on it leaves: the peer actor's copy of how far we
        applied (and of the sessions, after a change) is then never behind what a client
        was told (a session just opened, say, which the client pings next)."""
        state = self.state
        sessions = None
        if state.sessions_changes != self.sessions_sent:
            self.sessions_sent = state.sessions_changes
            sessions = state.session_table()
        if self.peer is not None:
            self.peer.tell(AppliedUpTo(state.applied_index, state.applied_term, sessions))

    def _report_metrics(self) -> None:
        report = self.counters.report()
        if report is not None and self.peer is not None:
            self.peer.tell(report)

    # ------------------------------------------------------------------ watches

    def _fire_watches(self, applied_entries: list[Applied]) -> list[tuple[Identity, ClientReply]]:
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
            self.reply([(poll.identity, reply)])
            return
        deadline = time.monotonic() + poll.wait
        self._answer_polls(
            self.watches.poll(
                poll.session, poll.identity, poll.request_id, poll.epoch, poll.after, deadline
            )
        )

    def _answer_polls(self, answers: list[PollAnswer]) -> None:
        replies = _poll_replies(answers)
        if replies:
            self.reply(replies)

    def _refuse_waiting_watch_reads(self) -> None:
        """Watch reads still waiting for their index would be armed in a table that no
        longer leads: they are answered "not leader" (the client asks the new one)."""
        waiting = [item for item in self.waiting_reads if item[2].watch is not None]
        if not waiting:
            return
        self.waiting_reads = [item for item in self.waiting_reads if item[2].watch is None]
        heapq.heapify(self.waiting_reads)
        self.reply(
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

    def _queue_reads(self, reads: Iterable[PendingRead]) -> None:
        for read in reads:
            self._read_sequence += 1
            heapq.heappush(self.waiting_reads, (read.index, self._read_sequence, read))
        replies = self._due_reads()
        if replies:
            self.reply(replies)

    def _due_reads(self) -> list[tuple[Identity, ClientReply]]:
        out = []
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


def _poll_replies(answers: list[PollAnswer]) -> list[tuple[Identity, ClientReply]]:
    replies = []
    for answer in answers:
        if answer.error is not None:
            reply = ClientReply(answer.request_id, False, answer.error, answer.error)
        else:
            reply = ClientReply(answer.request_id, True, [answer.epoch, answer.events])
        replies.append((answer.identity, reply))
    return replies

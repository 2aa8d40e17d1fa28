"""Writing the log: makes Readys durable in groups, then releases what waited for them.

``LogWriter`` is a plain object, not an actor: by default the peer actor owns it and calls
it on its own thread, as the bare pipeline of performance.md does: the peer gathers
everything that arrived in one turn of its loop into one Ready, so under load many writes
share one sync (group commit), and an acknowledgement leaves right after its sync, before
anything else the turn does, without waking another thread. With the ``log_thread``
setting a ``LogActor`` owns it instead, on a thread of its own.

Only after the sync are the votes and acknowledgements a Ready carries sent, and the core
told ``Persisted``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pykka

from zraft.core import Entry, HardState, Message
from zraft.storage import HardStateStorage, LogStorage, SnapshotStorage

from .counters import Counters
from .messages import (
    CompactLog,
    InstallState,
    Persisted,
    PersistItem,
    ReportMetrics,
)

log = logging.getLogger(__name__)

# A write this slow is worth a warning: on the peer's thread it also held up heartbeats.
SLOW_PERSIST_S = 0.1
SLOW_WARNING_INTERVAL_S = 10.0


class LogWriter:
    """Owned by one thread at a time: the peer actor's, or a ``LogActor``'s."""

    def __init__(
        self,
        *,
        raft_log: LogStorage,
        hard_state_file: HardStateStorage,
        snapshots: SnapshotStorage,
        snapshot_lock: Any,
        send: Callable[[Iterable[Message]], None],
        flush: Callable[[], None] = lambda: None,
        state_machine: pykka.ActorRef[Any],
        saved: HardState,
        own_thread: bool = False,
    ) -> None:
        self.raft_log = raft_log
        self.hard_state_file = hard_state_file
        self.snapshots = snapshots
        self.snapshot_lock = snapshot_lock
        self.send = send
        self.flush = flush  # on the peer's thread: sends what is queued now
        self.state_machine = state_machine
        self.saved = saved  # the hard state last made durable
        self.counters = Counters("log", fsyncs=0, persisted_readys=0, persist_seconds_total=0.0)
        self.own_thread = own_thread
        self.slow_warned_at = float("-inf")

    def compact(self, message: CompactLog) -> None:
        if self.raft_log.frees_segment(message.index):
            # The base on disk may lag the snapshot (the core skips stored entries that a
            # snapshot covers): moving it costs syncs on this thread, so it moves only when
            # a whole segment can go, not at every snapshot.
            self.raft_log.compact(message.index, message.term)

    def write(self, items: Sequence[PersistItem]) -> Persisted:
        """Make ``items`` durable (one log append for the lot), send the messages that
        waited for them, and say what is durable now (for the peer actor's core)."""
        started = time.perf_counter()
        pending: list[Entry] = []
        hard_state: HardState | None = None
        for item in items:
            if item.snapshot is not None:
                self._append(pending)
                pending = []
                self._install(item)
            for entry in item.entries:
                # A later Ready may replace a suffix of an earlier one still in this group.
                while pending and pending[-1].index >= entry.index:
                    pending.pop()
                pending.append(entry)
            if item.hard_state is not None:
                hard_state = item.hard_state
        self._append(pending)
        if hard_state is not None and self._must_save(hard_state):
            self.hard_state_file.save(hard_state)
            self.saved = hard_state
            self.counters.add("fsyncs")
        took = time.perf_counter() - started
        self.counters.add("persist_seconds_total", took)
        self.counters.add("persisted_readys", len(items))
        if took >= SLOW_PERSIST_S and started - self.slow_warned_at >= SLOW_WARNING_INTERVAL_S:
            self.slow_warned_at = started
            log.warning(
                "writing the log took %.0f ms%s",
                took * 1000,
                "" if self.own_thread else " on the peer's thread (see the log_thread setting)",
            )
        # A message of an earlier term than the group's last hard state is stale: a later
        # item moved this peer to a newer leader, whose entries may have replaced what the
        # message vouches for, so that was never durable. Dropping a message is always safe.
        term = self.saved.term
        after = [m for item in items for m in item.messages if m.term >= term]
        if after:
            self.send(after)
            # Now, not at the end of the peer's turn: the leader is waiting for these
            # acknowledgements, and the peer may yet apply a batch in this turn.
            self.flush()
        return Persisted(self.raft_log.last_index, self.raft_log.last_term)

    def _must_save(self, hard_state: HardState) -> bool:
        # Term and vote must be durable before the messages that depend on them; the commit
        # index is only a hint for restarts, so it rides along when something else changes.
        return (hard_state.term, hard_state.vote) != (self.saved.term, self.saved.vote)

    def _append(self, entries: list[Entry]) -> None:
        if entries:
            self.raft_log.append(entries)
            self.counters.add("fsyncs")

    def _install(self, item: PersistItem) -> None:
        """A snapshot from the leader: make it the latest, then cut the log to it."""
        meta = item.snapshot
        assert meta is not None and item.staged_path is not None
        with self.snapshot_lock:
            meta, path, extra = self.snapshots.finish_install(item.staged_path)
        self.raft_log.restore_to_snapshot(meta.index, meta.term)
        self.state_machine.tell(InstallState(meta, path, extra))
        log.info("installed snapshot at index %d term %d from the leader", meta.index, meta.term)


class LogActor(pykka.ThreadingActor):
    """A ``LogWriter`` on a thread of its own (the ``log_thread`` setting): a slow disk then
    never holds up the peer's loop, at the cost of two thread hand-offs per write."""

    def __init__(self, writer: LogWriter, peer: Any, on_failure: Callable[[str], None]) -> None:
        super().__init__()
        self.writer = writer
        self.peer = peer  # tells the peer actor (and wakes its loop)
        self.report_failure = on_failure
        self.pending: list[PersistItem] = []

    def on_receive(self, message: Any) -> None:
        if isinstance(message, PersistItem):
            self.pending.append(message)
        elif isinstance(message, CompactLog):
            self.writer.compact(message)
        elif isinstance(message, ReportMetrics):
            report = self.writer.counters.report()
            if report is not None:
                self.peer.tell(report)
        # Items told while the last sync ran are written together, once nothing else is
        # queued: one sync for them all.
        if self.pending and self.actor_inbox.empty():
            items, self.pending = self.pending, []
            self.peer.tell(self.writer.write(items))

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.report_failure(f"log actor failed: {exc_value!r}")

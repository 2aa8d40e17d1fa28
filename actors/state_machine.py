"""The replicated state on one peer: the user's backend plus the tables that make client
writes exactly-once. Plain and synchronous; the state machine actor drives it.

Every peer applies the same committed entries in the same order, so everything here must be
deterministic: client tables are evicted by entry order, never by clock.

The client table's rules (docs/reliability.md):
- a (client, seq) is refused only if the client acknowledged its answer (``acked`` it sent is
  at or above seq) and the result is gone: code ``forgotten``, never ``rejected``, which is
  the backend's alone;
- results are forgotten only as the client acknowledges them, never to make room: a write
  still in flight must find its seq unclaimed. Their number is bounded at admission instead
  (``admission_refusal``, on the leader, before a write is proposed): apply never refuses a
  write for a count, so it cannot depend on anything that differs between peers.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from zraft.backends.base import (
    ApplyResult,
    Backend,
    Failure,
    QueryResult,
    SnapshotWriter,
    checked_apply,
    checked_expire,
    checked_query,
)
from zraft.core import Configuration, Entry, EntryKind, SnapshotMeta

from .commands import Command, CommandKind, MalformedCommand

log = logging.getLogger(__name__)

Outcome = tuple[bool, Any]  # (ok, result) or (False, failure wire form)

_WRITE = int(CommandKind.WRITE)
_EXPIRE = int(CommandKind.SESSION_EXPIRE)
_CLOSE = int(CommandKind.SESSION_CLOSE)
_NO_KEYS: frozenset[str] = frozenset()
_new = tuple.__new__
_MAX_SESSION_TIMEOUT_MS = 86_400_000
DEFAULT_MAX_RESULTS_PER_CLIENT = 4_096
FORGOTTEN = "forgotten"  # the error code of a seq the client acknowledged


def admission_refusal(seq: int, acked: int, max_results: int) -> str | None:
    """Why the leader must not propose a write of ``seq`` carrying ``acked`` (None: it may).

    A write is admitted while ``seq - acked <= max_results``. Its apply makes the table hold
    at least that ``acked``, so a client never has more than about ``max_results`` results
    waiting for an acknowledgement, without the table ever dropping one. It depends on the
    request alone, so it is decided before proposing: a refused write is never in the log.
    """
    if seq - acked > max_results:
        return (
            f"overloaded: request {seq} is more than {max_results} ahead of the client's "
            f"acknowledged {acked}; wait for earlier answers"
        )
    return None


@dataclass(slots=True)
class _ClientRecord:
    acked: int = 0  # the client has received every result up to this seq
    # seq -> (outcome, index of the entry that produced it): a retry is answered with both.
    # Forgotten from the front as the client acknowledges: an OrderedDict finds its oldest
    # at once, where a dict scans past the slots of every key deleted before it (~1 µs a
    # write with 2,048 in flight).
    results: OrderedDict[int, tuple[Outcome, int]] = field(default_factory=OrderedDict)


class Applied(NamedTuple):
    """What applying one entry produced; ``outcome`` is None for no-op and config entries.

    A tuple: one is made per applied entry on every peer, and a tuple is made faster than
    a frozen dataclass."""

    index: int
    term: int
    outcome: Outcome | None
    trigger_keys: frozenset[str] = frozenset()
    ended_session: str | None = None  # a session closed or expired by this entry
    # For a retried write, the index of the first copy, whose apply produced ``outcome``
    # (so a retry reports the index of the write it repeats); 0: this entry's own.
    first_index: int = 0

    @property
    def answered_at(self) -> int:
        """The log index that answers the client: where its write took effect."""
        return self.first_index or self.index


def _outcome(result: ApplyResult | Failure) -> Outcome:
    if isinstance(result, Failure):
        return (False, result.to_wire())
    return (True, result.result)


class ReplicatedState:
    """Applies committed entries to a backend, exactly once per (client id, seq)."""

    def __init__(
        self,
        backend: Backend,
        initial_config: Configuration,
        *,
        max_clients: int = 65_536,
    ) -> None:
        self.backend = backend
        self.config = initial_config
        # Told every committed configuration as it is applied (with its index), and every
        # snapshot installed: the identity guard forgets the members they left out.
        self.on_config: Callable[[Configuration, int], None] = _ignore
        self.on_snapshot: Callable[[SnapshotMeta], None] = _ignore
        # Whose state a snapshot is (cluster id, founding), written into it so that a
        # snapshot_dir of another cluster is refused at start (founding.check_snapshots).
        self.snapshot_origin: Callable[[], dict[str, str]] = dict
        self.applied_index = 0
        self.applied_term = 0
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _ClientRecord] = OrderedDict()
        # Long-lived sessions: id -> timeout in ms. The leader's peer actor decides expiry
        # from a copy the state machine actor sends it after a change (counted here).
        self._sessions: dict[str, int] = {}
        self.sessions_changes = 0

    def has_session(self, session: str) -> bool:
        return session in self._sessions

    def session_table(self) -> dict[str, int]:
        return dict(self._sessions)

    # ------------------------------------------------------------------ applying

    def apply(self, entries: list[Entry]) -> list[Applied]:
        out = []
        for entry in entries:
            if entry.index != self.applied_index + 1:
                raise ValueError(
                    f"entry {entry.index} applied after {self.applied_index}: entries skipped"
                )
            out.append(self._apply_one(entry))
            self.applied_index, self.applied_term = entry.index, entry.term
        return out

    def _apply_one(self, entry: Entry) -> Applied:
        # The hot path (a client's write) builds tuples with tuple.__new__ and skips helper
        # calls: this runs once per entry on every peer.
        index, term, kind, data = entry
        if kind is EntryKind.CONFIG:
            self.config = data
            self.on_config(data, index)
            return _new(Applied, (index, term, None, _NO_KEYS, None, 0))
        if kind is EntryKind.NOOP:
            return _new(Applied, (index, term, None, _NO_KEYS, None, 0))
        try:
            command = Command.decode(data)
        except MalformedCommand as error:
            log.warning("entry %d is not a command: %s", index, error)
            failure = Failure("rejected", f"malformed command: {error}")
            return Applied(index, term, _outcome(failure))
        command_kind = command.kind
        if command_kind == _EXPIRE:
            keys = self._end_session(command.body)  # the leader's decision: no client
            ended = command.body if isinstance(command.body, str) else None
            return Applied(index, term, (True, None), keys, ended)
        record = self._record(command) if command.client_id else None
        if record is not None and (command.seq in record.results or command.seq <= record.acked):
            outcome, first_index = self._cached(record, command)
            return Applied(index, term, outcome, first_index=first_index)
        result, keys = self._execute(command)
        outcome = (False, result.to_wire()) if type(result) is Failure else (True, result.result)
        if command_kind == _CLOSE:
            return Applied(index, term, outcome, keys, command.client_id)
        if record is not None:
            self._remember(record, command.seq, outcome, index)
        return _new(Applied, (index, term, outcome, keys, None, 0))

    def _execute(self, command: Command) -> tuple[ApplyResult | Failure, frozenset[str]]:
        kind, session = command.kind, command.client_id
        if kind == _WRITE:
            result = checked_apply(self.backend, command.body)
        elif kind == CommandKind.SESSION_OPEN:
            timeout = command.body
            if type(timeout) is not int or not 0 < timeout <= _MAX_SESSION_TIMEOUT_MS:
                return Failure("rejected", "session timeout must be 1..86400000 ms"), frozenset()
            self._sessions[session] = timeout
            self.sessions_changes += 1
            return ApplyResult({"session": session, "timeout_ms": timeout}), frozenset()
        elif kind == CommandKind.SESSION_WRITE:
            if session not in self._sessions:
                return Failure("session_expired", f"session {session} is not open"), frozenset()
            body = command.body
            if not (isinstance(body, list) and len(body) == 2 and type(body[0]) is bool):
                return Failure("rejected", "a session write is [temporary, command]"), frozenset()
            temporary, backend_command = body
            owner = session if temporary else None
            result = checked_apply(self.backend, backend_command, owner)
        else:  # SESSION_CLOSE
            return ApplyResult({"closed": True}), self._end_session(session)
        keys = result.trigger_keys if isinstance(result, ApplyResult) else _NO_KEYS
        return result, keys

    def _end_session(self, session: Any) -> frozenset[str]:
        """Close or expire: the session's temporary data goes, the same on every peer."""
        if not isinstance(session, str):
            return frozenset()
        known = self._sessions.pop(session, None) is not None
        self.sessions_changes += known
        self._clients.pop(session, None)
        return checked_expire(self.backend, session) if known else frozenset()

    def _record(self, command: Command) -> _ClientRecord:
        record = self._clients.get(command.client_id)
        if record is None:
            record = self._clients[command.client_id] = _ClientRecord()
            while len(self._clients) > self.max_clients:
                evicted, _ = self._clients.popitem(last=False)  # least recently written
                log.info("forgetting results of idle client %s", evicted)
        else:
            self._clients.move_to_end(command.client_id)
        if command.acked > record.acked:
            record.acked = command.acked
            # Results are kept in apply order, which is nearly seq order: forget from the
            # front (a few stragglers wait there until they reach it, bounded anyway).
            results = record.results
            while results:
                oldest = next(iter(results))
                if oldest > command.acked:
                    break
                del results[oldest]
        return record

    def _cached(self, record: _ClientRecord, command: Command) -> tuple[Outcome, int]:
        """The answer to a write whose seq was seen before (see ``_apply_one``)."""
        cached = record.results.get(command.seq)
        if cached is not None:
            return cached  # a retry: the first result, not a new apply
        # The client said it has this answer, so it is not waiting for it: a late duplicate.
        # Not "rejected": the backend never saw it, and the write may have been applied.
        failure = Failure(FORGOTTEN, f"request {command.seq} was already acknowledged")
        return _outcome(failure), 0

    def _remember(self, record: _ClientRecord, seq: int, outcome: Outcome, index: int) -> None:
        # Kept until the client acknowledges it, however many: admission bounds the count.
        record.results[seq] = (outcome, index)

    # ------------------------------------------------------------------ reading

    def query(self, query: Any) -> QueryResult | Failure:
        return checked_query(self.backend, query)

    # ------------------------------------------------------------------ snapshots

    def snapshot(self) -> tuple[SnapshotMeta, SnapshotWriter, dict[str, Any]]:
        """What a snapshot at the applied index holds: metadata, backend writer, our tables."""
        meta = SnapshotMeta(self.applied_index, self.applied_term, self.config)
        sessions = sorted(self.session_table().items())
        extra = {"clients": self._tables(), "sessions": sessions, **self.snapshot_origin()}
        return meta, self.backend.snapshot(), extra

    def _tables(self) -> list[list[Any]]:
        return [
            [
                client,
                record.acked,
                [[seq, ok, value, index] for seq, ((ok, value), index) in record.results.items()],
            ]
            for client, record in self._clients.items()
        ]

    def install(self, meta: SnapshotMeta, directory: Path, extra: dict[str, Any]) -> None:
        """Replace everything with the snapshot in ``directory``."""
        clients = _parse_tables(extra.get("clients", []))
        sessions = _parse_sessions(extra.get("sessions", []))
        self.backend.install(directory)
        self._clients = clients
        self._sessions = sessions
        self.sessions_changes += 1
        self.config = meta.config
        self.applied_index, self.applied_term = meta.index, meta.term
        self.on_snapshot(meta)


def _ignore(*_: Any) -> None:
    pass


def _parse_tables(raw: Any) -> OrderedDict[str, _ClientRecord]:
    if not isinstance(raw, list):
        raise ValueError("snapshot client table is not a list")
    clients: OrderedDict[str, _ClientRecord] = OrderedDict()
    for row in raw:
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], str)):
            raise ValueError(f"bad client row in snapshot: {row!r}")
        client, acked, results = row
        if type(acked) is not int or not isinstance(results, list):
            raise ValueError(f"bad client row in snapshot: {row!r}")
        record = _ClientRecord(acked)
        for item in results:
            # [seq, ok, value, index]; snapshots before the index was kept have no index
            if not (isinstance(item, list) and len(item) in (3, 4) and type(item[0]) is int):
                raise ValueError(f"bad result in snapshot for client {client}")
            index = item[3] if len(item) == 4 else 0
            if type(index) is not int:
                raise ValueError(f"bad result index in snapshot for client {client}")
            record.results[item[0]] = ((bool(item[1]), item[2]), index)
        clients[client] = record
    return clients


def _parse_sessions(raw: Any) -> dict[str, int]:
    if not isinstance(raw, list):
        raise ValueError("snapshot session table is not a list")
    sessions = {}
    for row in raw:
        if not (isinstance(row, list) and len(row) == 2 and isinstance(row[0], str)):
            raise ValueError(f"bad session row in snapshot: {row!r}")
        if type(row[1]) is not int:
            raise ValueError(f"bad session timeout in snapshot: {row!r}")
        sessions[row[0]] = row[1]
    return sessions

"""The backend the fault suite's peers run: the key-value backend plus two things to check.

* ``incr``: ``{"op": "incr", "key": k, "id": i}`` appends the unique id ``i`` to the list
  stored at ``k`` and answers ``{"count": n}``. Not idempotent on purpose: a write applied
  twice shows up as a doubled id, one lost as a missing id.
* a running digest of every command applied (in order), so peers can be compared after a
  run the way hashicorp's fuzzy tests compare state machines: two peers that applied the
  same number of commands must hold the same digest. Query ``{"op": "digest"}`` answers
  ``{"applied": n, "digest": hex}``; the digest travels in snapshots.

Queries also accept ``{"op": "count", "key": k}`` (the length of the list at ``k``).

For the ``lock`` workload (``zraft.chaos.lock_workload``), which cannot replay the log (it
gets compacted, peers get wiped):

* a lock audit: every creation of a key under ``locks/`` (with the ``holder`` of its value),
  every removal (a ``delete`` command, or the end of the owning session: close or expiry)
  and every overwrite of a held key, in apply order, numbered from 1, kept in snapshots (the
  last :data:`AUDIT_LIMIT` events). Query :func:`lock_audit` answers
  ``{"events": [[n, kind, key, holder], ...], "total": n, "more": bool}``.
* ``fenced_append``: ``{"op": "fenced_append", "key": k, "token": t, "holder": h}`` is the
  fencing-aware resource: it refuses a token lower than the highest it holds (answering
  ``{"appended": False, "highest": t'}``) and appends ``[t, h]`` to the list at ``k``
  otherwise (``{"appended": True, "highest": t}``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections import deque
from pathlib import Path
from typing import Any, Final

import msgpack

from zraft.backends.base import (
    ApplyResult,
    CommandRejected,
    InvalidSnapshot,
    QueryResult,
    SnapshotWriter,
)
from zraft.backends.kv import KeyValueBackend, put

log = logging.getLogger(__name__)

DIGEST_FILE: Final = "chaos-digest.json"
AUDIT_FILE: Final = "chaos-lock-audit.msgpack"
LOCK_PREFIX: Final = "locks/"
AUDIT_LIMIT: Final = 200_000  # events kept; a run takes a few thousand locks at most
# Audit event kinds.
CREATED: Final = "create"
DELETED: Final = "delete"  # a delete command removed the key (a release)
SESSION_ENDED: Final = "session_end"  # the owning session closed or expired
OVERWRITTEN: Final = "overwrite"  # a held key's value was written over: never by a lock
_EMPTY_DIGEST: Final = hashlib.sha256(b"zraft-chaos").hexdigest()


def incr(key: str, unique_id: str) -> dict[str, Any]:
    """The command that appends ``unique_id`` to the list at ``key``."""
    return {"op": "incr", "key": key, "id": unique_id}


def count(key: str) -> dict[str, Any]:
    return {"op": "count", "key": key}


DIGEST_QUERY: Final = {"op": "digest"}


def fenced_append(key: str, token: int, holder: str) -> dict[str, Any]:
    """Append ``[token, holder]`` to the list at ``key`` unless it holds a higher token."""
    return {"op": "fenced_append", "key": key, "token": token, "holder": holder}


def lock_audit(after: int = 0, limit: int = 5_000) -> dict[str, Any]:
    """The query for the lock audit's events numbered above ``after`` (at most ``limit``)."""
    return {"op": "lock_audit", "after": after, "limit": limit}


class ChaosBackend(KeyValueBackend):
    def __init__(self) -> None:
        super().__init__()
        self._applied = 0
        self._digest = _EMPTY_DIGEST
        # Events as (number, kind, key, holder); numbers run on past dropped ones.
        self._audit: deque[tuple[int, str, str, str | None]] = deque(maxlen=AUDIT_LIMIT)
        self._audit_total = 0

    # ------------------------------------------------------------------ protocol

    def query(self, query: Any) -> QueryResult:
        op = query.get("op") if isinstance(query, dict) else None
        if op == "digest":
            return QueryResult({"applied": self._applied, "digest": self._digest})
        if op == "count":
            items = self._list_at(_incr_key(query))
            return QueryResult({"count": len(items)}, frozenset({query["key"]}))
        if op == "lock_audit":
            return QueryResult(self._audit_page(query))
        return super().query(query)

    def apply(self, command: Any) -> ApplyResult:
        op = command.get("op") if isinstance(command, dict) else None
        lock_key, before = self._lock_state(command)
        if op == "incr":
            result = self._incr(command)
        elif op == "fenced_append":
            result = self._fenced_append(command)
        else:
            result = super().apply(command)
        if lock_key is not None:
            self._audit_write(lock_key, before, op, result)
        self._fold(command, None)
        return result

    def apply_session(self, command: Any, session_id: str) -> ApplyResult:
        lock_key, before = self._lock_state(command)
        result = super().apply_session(command, session_id)
        if lock_key is not None:
            op = command.get("op") if isinstance(command, dict) else None
            self._audit_write(lock_key, before, op, result)
        self._fold(command, session_id)
        return result

    def expire_session(self, session_id: str) -> frozenset[str]:
        # The session's lock keys and holders, before they go (sorted: set order varies).
        held = {
            key: self._holder(self._data[key])
            for key in sorted(self._owned.get(session_id, ()))
            if key.startswith(LOCK_PREFIX)
        }
        keys = super().expire_session(session_id)
        for key, holder in held.items():
            if key in keys:
                self._audit_event(SESSION_ENDED, key, holder)
        self._fold({"expire": session_id}, None)
        return keys

    def snapshot(self) -> SnapshotWriter:
        inner = super().snapshot()
        state = json.dumps({"applied": self._applied, "digest": self._digest})
        audit = msgpack.packb(
            {"total": self._audit_total, "events": [list(e) for e in self._audit]},
            use_bin_type=True,
        )

        def write(directory: Path) -> None:
            inner.write(directory)
            (Path(directory) / DIGEST_FILE).write_text(state, encoding="utf-8")
            (Path(directory) / AUDIT_FILE).write_bytes(audit)

        return SnapshotWriter(write, background=inner.background)

    def install(self, directory: Path) -> None:
        audit, total = _read_audit(Path(directory) / AUDIT_FILE)  # first: may refuse
        super().install(directory)
        self._audit, self._audit_total = audit, total
        path = Path(directory) / DIGEST_FILE
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
            self._applied, self._digest = int(state["applied"]), str(state["digest"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            # A snapshot from another backend: the digest restarts, which the suite reports
            # as a divergence rather than hiding it.
            log.error("snapshot %s has no usable chaos digest: %s", directory, error)
            self._applied, self._digest = 0, _EMPTY_DIGEST

    # ------------------------------------------------------------------ internals

    def _incr(self, command: dict[str, Any]) -> ApplyResult:
        key = _incr_key(command)
        unique_id = command.get("id")
        if not isinstance(unique_id, str | int) or isinstance(unique_id, bool):
            raise CommandRejected("incr needs an id (str or int)")
        if set(command) - {"op", "key", "id"}:
            raise CommandRejected(f"incr takes key and id, not {sorted(set(command))}")
        items = self._list_at(key)
        items.append(unique_id)
        super().apply(put(key, items))
        return ApplyResult({"count": len(items)}, frozenset({key}))

    def _fenced_append(self, command: dict[str, Any]) -> ApplyResult:
        if set(command) != {"op", "key", "token", "holder"}:
            names = sorted(map(str, command))[:8]  # field names may be anything
            raise CommandRejected(f"fenced_append takes key, token, holder, not {names}")
        key, token, holder = command["key"], command["token"], command["holder"]
        if not isinstance(key, str) or not key or key.startswith(LOCK_PREFIX):
            raise CommandRejected("fenced_append needs a non-empty str key outside locks/")
        if type(token) is not int or token < 0 or not isinstance(holder, str):
            raise CommandRejected("fenced_append needs an int token >= 0 and a str holder")
        entries = self._list_at(key)
        highest = -1
        if entries:
            last = entries[-1]
            if not (isinstance(last, list) and len(last) == 2 and type(last[0]) is int):
                raise CommandRejected(f"key {key[:200]!r} is not a fenced resource")
            highest = last[0]
        if token < highest:  # an older holder, woken up late: fenced off
            return ApplyResult({"appended": False, "highest": highest})
        entries.append([token, holder])
        super().apply(put(key, entries))
        return ApplyResult({"appended": True, "highest": token}, frozenset({key}))

    # -- the lock audit

    def _lock_state(self, command: Any) -> tuple[str | None, bytes | None]:
        """The lock key a command writes (None: not a lock key) and its value before."""
        key = command.get("key") if isinstance(command, dict) else None
        if not isinstance(key, str) or not key.startswith(LOCK_PREFIX):
            return None, None
        return key, self._data.get(key)

    def _audit_write(self, key: str, before: bytes | None, op: Any, result: ApplyResult) -> None:
        after = self._data.get(key)
        if before is None and after is not None:
            self._audit_event(CREATED, key, self._holder(after))
        elif before is not None and after is None:
            self._audit_event(DELETED, key, self._holder(before))
        elif before is not None and after is not None:
            data = result.result if isinstance(result.result, dict) else {}
            # A put or a successful cas on a held key writes over it, even with the same value.
            if before != after or op == "put" or (op == "cas" and data.get("swapped")):
                self._audit_event(OVERWRITTEN, key, self._holder(after))

    def _audit_event(self, kind: str, key: str, holder: str | None) -> None:
        self._audit_total += 1
        self._audit.append((self._audit_total, kind, key, holder))

    @staticmethod
    def _holder(packed: bytes) -> str | None:
        """The ``holder`` of a lock value (a map, as ``Lock`` writes it), else None."""
        value = msgpack.unpackb(packed, raw=False, strict_map_key=False)
        holder = value.get("holder") if isinstance(value, dict) else None
        return holder if isinstance(holder, str) else None

    def _audit_page(self, query: dict[str, Any]) -> dict[str, Any]:
        after, limit = query.get("after", 0), query.get("limit", 5_000)
        if type(after) is not int or type(limit) is not int or after < 0 or limit < 1:
            raise CommandRejected("lock_audit takes int after >= 0 and int limit >= 1")
        first = self._audit[0][0] if self._audit else self._audit_total + 1
        start = max(0, after + 1 - first)
        events = [list(e) for e in itertools.islice(self._audit, start, start + limit)]
        more = start + len(events) < len(self._audit)
        return {"events": events, "total": self._audit_total, "more": more}

    def _list_at(self, key: str) -> list[Any]:
        current = self._get(key)
        if not current["found"]:
            return []
        value = current["value"]
        if not isinstance(value, list):
            raise CommandRejected(f"key {key[:200]!r} does not hold a list")
        return value

    def _fold(self, command: Any, session_id: str | None) -> None:
        """Chain the applied command into the digest (same commands, same order: same hex)."""
        packed = msgpack.packb([session_id, command], use_bin_type=True)
        self._digest = hashlib.sha256(self._digest.encode("ascii") + packed).hexdigest()
        self._applied += 1


def _read_audit(path: Path) -> tuple[deque[tuple[int, str, str, str | None]], int]:
    """The lock audit of a snapshot (empty, with an error logged, if it has none)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        log.error("snapshot %s has no lock audit: it restarts empty", path.parent)
        return deque(maxlen=AUDIT_LIMIT), 0
    try:
        state = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        total, events = state["total"], state["events"]
        audit: deque[tuple[int, str, str, str | None]] = deque(maxlen=AUDIT_LIMIT)
        for number, kind, key, holder in events:
            if not (type(number) is int and isinstance(kind, str) and isinstance(key, str)):
                raise ValueError("bad event")
            if holder is not None and not isinstance(holder, str):
                raise ValueError("bad holder")
            audit.append((number, kind, key, holder))
        if type(total) is not int or (audit and audit[-1][0] != total):
            raise ValueError("bad total")
    except Exception as error:  # msgpack raises several unrelated types
        raise InvalidSnapshot(path, f"damaged lock audit: {type(error).__name__}") from None
    return audit, total


def _incr_key(command: dict[str, Any]) -> str:
    key = command.get("key")
    if not isinstance(key, str) or not key:
        raise CommandRejected("incr and count need a non-empty str key")
    return key

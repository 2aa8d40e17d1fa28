"""The backend the fault suite's peers run: the key-value backend plus two things to check.

* ``incr``: ``{"op": "incr", "key": k, "id": i}`` appends the unique id ``i`` to the list
  stored at ``k`` and answers ``{"count": n}``. Not idempotent on purpose: a write applied
  twice shows up as a doubled id, one lost as a missing id.
* a running digest of every command applied (in order), so peers can be compared after a
  run the way hashicorp's fuzzy tests compare state machines: two peers that applied the
  same number of commands must hold the same digest. Query ``{"op": "digest"}`` answers
  ``{"applied": n, "digest": hex}``; the digest travels in snapshots.

Queries also accept ``{"op": "count", "key": k}`` (the length of the list at ``k``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Final

import msgpack

from zraft.backends.base import ApplyResult, CommandRejected, QueryResult, SnapshotWriter
from zraft.backends.kv import KeyValueBackend, put

log = logging.getLogger(__name__)

DIGEST_FILE: Final = "chaos-digest.json"
_EMPTY_DIGEST: Final = hashlib.sha256(b"zraft-chaos").hexdigest()


def incr(key: str, unique_id: str) -> dict[str, Any]:
    """The command that appends ``unique_id`` to the list at ``key``."""
    return {"op": "incr", "key": key, "id": unique_id}


def count(key: str) -> dict[str, Any]:
    return {"op": "count", "key": key}


DIGEST_QUERY: Final = {"op": "digest"}


class ChaosBackend(KeyValueBackend):
    def __init__(self) -> None:
        super().__init__()
        self._applied = 0
        self._digest = _EMPTY_DIGEST

    # ------------------------------------------------------------------ protocol

    def query(self, query: Any) -> QueryResult:
        op = query.get("op") if isinstance(query, dict) else None
        if op == "digest":
            return QueryResult({"applied": self._applied, "digest": self._digest})
        if op == "count":
            items = self._list_at(_incr_key(query))
            return QueryResult({"count": len(items)}, frozenset({query["key"]}))
        return super().query(query)

    def apply(self, command: Any) -> ApplyResult:
        if isinstance(command, dict) and command.get("op") == "incr":
            result = self._incr(command)
        else:
            result = super().apply(command)
        self._fold(command, None)
        return result

    def apply_session(self, command: Any, session_id: str) -> ApplyResult:
        result = super().apply_session(command, session_id)
        self._fold(command, session_id)
        return result

    def expire_session(self, session_id: str) -> frozenset[str]:
        keys = super().expire_session(session_id)
        self._fold({"expire": session_id}, None)
        return keys

    def snapshot(self) -> SnapshotWriter:
        inner = super().snapshot()
        state = json.dumps({"applied": self._applied, "digest": self._digest})

        def write(directory: Path) -> None:
            inner.write(directory)
            (Path(directory) / DIGEST_FILE).write_text(state, encoding="utf-8")

        return SnapshotWriter(write, background=inner.background)

    def install(self, directory: Path) -> None:
        super().install(directory)
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


def _incr_key(command: dict[str, Any]) -> str:
    key = command.get("key")
    if not isinstance(key, str) or not key:
        raise CommandRejected("incr and count need a non-empty str key")
    return key

"""A key-value backend: str keys, msgpack-able values, temporary keys owned by sessions.

Commands and queries are small dicts; build them with the helpers of this module
(:func:`put`, :func:`get`, :func:`delete`, :func:`cas`, :func:`list_prefix`)::

    {"op": "put", "key": "a", "value": [1, 2]}            -> {"created": bool}
    {"op": "get", "key": "a"}                             -> {"found": bool, "value": v}
    {"op": "delete", "key": "a"}                          -> {"deleted": bool}
    {"op": "delete", "key": "a", "expected": v}           (only if the value is v)
    {"op": "cas", "key": "a", "expected": v, "value": w}  -> {"swapped": bool,
                                                              "found": bool, "value": current}
    {"op": "list", "prefix": "a/", "limit": 10, "after": "a/3", "keys_only": False}
                                                          -> {"items": [[k, v], ...],
                                                              "more": bool}

``expected: None`` means "the key is absent" (so ``cas`` with ``expected=None`` creates a
key only if it does not exist). Values are compared by their msgpack encoding: ``1``,
``1.0`` and ``True`` differ, and maps must have the same key order (a value read with
``get`` always compares equal to what is stored).

Values are kept in their msgpack encoding, which makes every stored value immutable (no
caller can change the state through a returned object), makes equality exact and
type-strict, and makes a snapshot a plain copy of bytes. A value is accepted only if it
survives a msgpack round trip (tuples become lists).

Temporary keys: ``put`` and ``cas`` sent through ``apply_session`` create keys owned by that
session; ``expire_session`` deletes them. Ownership is fixed when a key is created: plain
writes to a temporary key change its value but keep the owner, and a session may not write
to a key that exists and is not its own. ``delete`` removes a key whatever its owner.

Watches: ``get`` names its key (a watch fires when the key is created, changed or
deleted); ``list`` names its prefix in ``watch_prefixes`` (any key starting with it).

Why one module: the command set, its validation and the store it applies to are one backend;
apart, a command and its check could drift.
"""

from __future__ import annotations

import bisect
import logging
import os
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgpack

from zraft.packing import pack
from zraft.storage.syncs import fsync_dir

from .base import (
    ApplyResult,
    Backend,
    CommandRejected,
    InvalidSnapshot,
    QueryResult,
    SnapshotWriter,
)

log = logging.getLogger(__name__)

__all__ = [
    "MAX_KEY_BYTES",
    "SNAPSHOT_FILE",
    "KeyValueBackend",
    "cas",
    "delete",
    "get",
    "list_prefix",
    "put",
]

MAX_KEY_BYTES: Final = 4096
SNAPSHOT_FILE: Final = "kv.msgpack"
_MAGIC: Final = b"ZRKV"
_VERSION: Final = 1
_HEADER = struct.Struct("<4sHHIQ")  # magic, version, reserved, crc32 of body, body length
_CHUNK: Final = 1 << 20

_WRITE_OPS: Final = frozenset({"put", "delete", "cas"})
_READ_OPS: Final = frozenset({"get", "list"})
_SESSION_OPS: Final = frozenset({"put", "cas"})
_FIELDS: Final[dict[str, tuple[frozenset[str], frozenset[str]]]] = {
    # op: (required fields, optional fields), "op" itself excluded
    "put": (frozenset({"key", "value"}), frozenset()),
    "get": (frozenset({"key"}), frozenset()),
    "delete": (frozenset({"key"}), frozenset({"expected"})),
    "cas": (frozenset({"key", "expected", "value"}), frozenset()),
    "list": (frozenset(), frozenset({"prefix", "limit", "after", "keys_only"})),
}

_ALL_OPS: Final = frozenset(_FIELDS)
_OP_FIELD: Final = frozenset({"op"})
_MISSING: Final[Any] = object()


# --------------------------------------------------------------------------- validation


def _encode_value(value: Any, field: str) -> bytes:
    """The msgpack encoding of ``value``, if it survives a round trip unchanged in kind."""
    try:
        packed = pack(value)
        if type(value) not in _SCALARS:  # only containers can change kind on the way back
            msgpack.unpackb(packed, raw=False, strict_map_key=False)
    except (TypeError, ValueError, OverflowError) as exc:
        # UnicodeEncodeError is a ValueError; so is msgpack's nesting limit.
        raise CommandRejected(f"{field} is not msgpack-able: {_describe(exc)}") from None
    return packed


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnicodeError):
        return "a string is not valid UTF-8"
    if isinstance(exc, OverflowError):
        return "an integer does not fit in 64 bits"
    if isinstance(exc, TypeError) and "unhashable" in str(exc):
        return "a map key is a list or map"
    text = str(exc)
    # msgpack's messages name only types, never values or addresses.
    return text if len(text) <= 200 else text[:200]


def _decode(packed: bytes) -> Any:
    return msgpack.unpackb(packed, raw=False, strict_map_key=False)


def _check_key(key: Any, field: str = "key") -> str:
    if not isinstance(key, str):
        raise CommandRejected(f"{field} must be a str, not {type(key).__name__}")
    if not key:
        raise CommandRejected(f"{field} must not be empty")
    _check_text(key, field)
    return key


def _check_text(text: str, field: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise CommandRejected(f"{field} is not valid UTF-8 (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise CommandRejected(f"{field} is {size} bytes long; the limit is {MAX_KEY_BYTES}")


def _check_shape(command: Any, allowed: frozenset[str]) -> tuple[str, dict[str, Any]]:
    if not isinstance(command, dict):
        raise CommandRejected(f"a command must be a map, not {type(command).__name__}")
    op = command.get("op", _MISSING)
    if op is _MISSING:
        raise CommandRejected("the command has no 'op' field")
    if not isinstance(op, str):
        raise CommandRejected(f"op must be a str, not {type(op).__name__}")
    if op not in _FIELDS:
        known = ", ".join(sorted(_FIELDS))
        raise CommandRejected(f"unknown op {op[:64]!r} (known: {known})")
    if op not in allowed:
        raise CommandRejected(f"op {op!r} is not allowed here ({_where(allowed)})")
    required, optional = _FIELDS[op]
    names = command.keys() - _OP_FIELD
    if names != required:  # the common case (every field given, no optional ones) is one test
        for name in names:
            if not isinstance(name, str):
                raise CommandRejected(f"field names must be str, not {type(name).__name__}")
        unknown = sorted(names - required - optional)
        if unknown:
            shown = ", ".join(repr(n[:64]) for n in unknown[:5])
            raise CommandRejected(f"op {op!r} has unknown field(s) {shown}")
        missing = sorted(required - names)
        if missing:
            raise CommandRejected(f"op {op!r} needs field(s) {', '.join(map(repr, missing))}")
    return op, command


def _where(allowed: frozenset[str]) -> str:
    if allowed == _READ_OPS:
        return "queries may only get or list; send writes with write()"
    if allowed == _SESSION_OPS:
        return "temporary data is created by put or cas only; send others as normal writes"
    return "unexpected"


def _optional_int(fields: dict[str, Any], name: str, minimum: int) -> int | None:
    value = fields.get(name)
    if value is None:
        return None
    if type(value) is not int:
        raise CommandRejected(f"{name} must be an int or None, not {type(value).__name__}")
    if value < minimum:
        raise CommandRejected(f"{name} must be >= {minimum}, got {value}")
    return value


# --------------------------------------------------------------------------- helpers


def put(key: str, value: Any) -> dict[str, Any]:
    """Set ``key`` to ``value`` (as a temporary key when sent through a session)."""
    return _checked({"op": "put", "key": key, "value": value})


def get(key: str) -> dict[str, Any]:
    """Read ``key``: ``{"found": bool, "value": value or None}``."""
    return _checked({"op": "get", "key": key})


def delete(key: str, expected: Any = _MISSING) -> dict[str, Any]:
    """Delete ``key``; with ``expected``, only if its value is ``expected``."""
    command: dict[str, Any] = {"op": "delete", "key": key}
    if expected is not _MISSING:
        command["expected"] = expected
    return _checked(command)


def cas(key: str, expected: Any, value: Any) -> dict[str, Any]:
    """Set ``key`` to ``value`` if its value is ``expected`` (None: if it is absent)."""
    return _checked({"op": "cas", "key": key, "expected": expected, "value": value})


def list_prefix(
    prefix: str = "",
    *,
    limit: int | None = None,
    after: str | None = None,
    keys_only: bool = False,
) -> dict[str, Any]:
    """List keys starting with ``prefix`` in sorted order, after ``after``, at most ``limit``."""
    command: dict[str, Any] = {"op": "list", "prefix": prefix}
    if limit is not None:
        command["limit"] = limit
    if after is not None:
        command["after"] = after
    if keys_only:
        command["keys_only"] = True
    return _checked(command)


def _checked(command: dict[str, Any]) -> dict[str, Any]:
    """Validate a helper-built command now, so mistakes surface before a round trip."""
    _Parsed.parse(command, _ALL_OPS)
    return command


class _Parsed:
    """A validated command."""

    __slots__ = ("op", "key", "value", "expected", "prefix", "limit", "after", "keys_only")

    def __init__(self, op: str) -> None:
        self.op = op
        self.key = ""
        self.value: bytes = b""
        self.expected: bytes | None = None  # encoded; None: absent; _MISSING: unconditional
        self.prefix = ""
        self.limit: int | None = None
        self.after: str | None = None
        self.keys_only = False

    @classmethod
    def parse(cls, command: Any, allowed: frozenset[str]) -> _Parsed:
        op, fields = _check_shape(command, allowed)
        parsed = cls(op)
        if "key" in fields:
            parsed.key = _check_key(fields["key"])
        if "value" in fields:
            parsed.value = _encode_value(fields["value"], "value")
        if "expected" in fields:
            expected = fields["expected"]
            parsed.expected = None if expected is None else _encode_value(expected, "expected")
        elif op == "delete":
            parsed.expected = _MISSING
        if op == "list":
            prefix = fields.get("prefix", "")
            if prefix is None:
                prefix = ""
            if not isinstance(prefix, str):
                raise CommandRejected(f"prefix must be a str, not {type(prefix).__name__}")
            _check_text(prefix, "prefix")
            parsed.prefix = prefix
            parsed.limit = _optional_int(fields, "limit", 1)
            after = fields.get("after")
            if after is not None:
                parsed.after = _check_key(after, "after")
            keys_only = fields.get("keys_only", False)
            if not isinstance(keys_only, bool):
                raise CommandRejected(f"keys_only must be a bool, not {type(keys_only).__name__}")
            parsed.keys_only = keys_only
        return parsed


# --------------------------------------------------------------------------- backend


class KeyValueBackend(Backend):
    """An in-memory, deterministic key-value store (see the module docstring)."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._owner: dict[str, str] = {}  # temporary key -> session
        self._owned: dict[str, set[str]] = {}  # session -> its temporary keys
        self._sorted: list[str] | None = []  # sorted keys; None when stale

    # ------------------------------------------------------------------ protocol

    def init(self, peer_id: str) -> None:
        log.debug("key-value backend ready on %s", peer_id)

    def query(self, query: Any) -> QueryResult:
        cmd = _Parsed.parse(query, _READ_OPS)
        if cmd.op == "get":
            return QueryResult(self._get(cmd.key), frozenset({cmd.key}))
        return QueryResult(self._list(cmd), frozenset(), frozenset({cmd.prefix}))

    def apply(self, command: Any) -> ApplyResult:
        # The usual write, a put of a short ASCII key to a scalar, skips the general parser
        # (it is most of the apply cost on every peer); anything else, and anything that
        # fails here, takes the full path, which gives the errors.
        if type(command) is dict and len(command) == 3 and command.get("op") == "put":
            key = command.get("key")
            value = command.get("value", _MISSING)
            if (
                type(key) is str
                and 0 < len(key) <= MAX_KEY_BYTES
                and key.isascii()
                and type(value) in _SCALARS
            ):
                try:
                    packed = pack(value)
                except (TypeError, ValueError, OverflowError):
                    pass
                else:
                    current = self._data.get(key)
                    self._store(key, packed, current, None)
                    return ApplyResult({"created": current is None}, frozenset({key}))
        cmd = _Parsed.parse(command, _ALL_OPS)
        return self._write(cmd, None)

    def apply_session(self, command: Any, session_id: str) -> ApplyResult:
        if not isinstance(session_id, str) or not session_id:
            raise CommandRejected("session id must be a non-empty str")
        cmd = _Parsed.parse(command, _SESSION_OPS)
        return self._write(cmd, session_id)

    def expire_session(self, session_id: str) -> frozenset[str]:
        keys = self._owned.pop(session_id, set())
        for key in keys:
            del self._data[key]
            del self._owner[key]
        if keys:
            self._sorted = None
            log.debug("session %s expired: %d temporary keys deleted", session_id, len(keys))
        return frozenset(keys)

    def snapshot(self) -> SnapshotWriter:
        # Values are immutable bytes, so shallow copies are a complete, private copy.
        data = dict(self._data)
        owners = dict(self._owner)
        return SnapshotWriter(
            lambda directory: _write_snapshot(directory, data, owners), background=True
        )

    def install(self, directory: Path) -> None:
        data, owners = _read_snapshot(Path(directory) / SNAPSHOT_FILE)
        owned: dict[str, set[str]] = {}
        for key, session in owners.items():
            owned.setdefault(session, set()).add(key)
        self._data, self._owner, self._owned = data, owners, owned
        self._sorted = list(data)  # the file is sorted
        log.info("installed key-value snapshot: %d keys, %d temporary", len(data), len(owners))

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return len(self._data)

    def owner(self, key: str) -> str | None:
        """The session owning ``key`` (None: persistent or absent). For tests and tools."""
        return self._owner.get(key)

    # ------------------------------------------------------------------ internals

    def _get(self, key: str) -> dict[str, Any]:
        packed = self._data.get(key)
        if packed is None:
            return {"found": False, "value": None}
        return {"found": True, "value": _decode(packed)}

    def _keys(self) -> list[str]:
        if self._sorted is None:
            self._sorted = sorted(self._data)
        return self._sorted

    def _list(self, cmd: _Parsed) -> dict[str, Any]:
        keys = self._keys()
        start = cmd.prefix if cmd.after is None or cmd.after < cmd.prefix else cmd.after
        index = bisect.bisect_left(keys, start)
        if cmd.after is not None and index < len(keys) and keys[index] == cmd.after:
            index += 1
        found: list[str] = []
        more = False
        while index < len(keys) and keys[index].startswith(cmd.prefix):
            if cmd.limit is not None and len(found) == cmd.limit:
                more = True
                break
            found.append(keys[index])
            index += 1
        if cmd.keys_only:
            return {"keys": found, "more": more}
        return {"items": [[k, _decode(self._data[k])] for k in found], "more": more}

    def _write(self, cmd: _Parsed, session: str | None) -> ApplyResult:
        key = cmd.key
        if cmd.op == "get":
            return ApplyResult(self._get(key))
        if cmd.op == "list":
            return ApplyResult(self._list(cmd))
        current = self._data.get(key)
        if cmd.op == "delete":
            if current is None or (cmd.expected is not _MISSING and cmd.expected != current):
                return ApplyResult({"deleted": False})
            self._remove(key)
            return ApplyResult({"deleted": True}, frozenset({key}))
        if cmd.op == "cas" and cmd.expected != current:
            value = None if current is None else _decode(current)
            return ApplyResult({"swapped": False, "found": current is not None, "value": value})
        self._store(key, cmd.value, current, session)
        if cmd.op == "cas":
            result = {"swapped": True, "found": True, "value": _decode(cmd.value)}
        else:
            result = {"created": current is None}
        return ApplyResult(result, frozenset({key}))

    def _store(self, key: str, packed: bytes, current: bytes | None, session: str | None) -> None:
        """Set ``key`` (whose value is ``current``) to ``packed``; a new key made through a
        session belongs to it."""
        if session is not None and current is not None and self._owner.get(key) != session:
            owner = self._owner.get(key)
            whose = "is persistent" if owner is None else "belongs to another session"
            raise CommandRejected(f"key {key[:200]!r} exists and {whose}")
        self._data[key] = packed
        if current is None:
            if self._sorted is not None:
                bisect.insort(self._sorted, key)
            if session is not None:
                self._owner[key] = session
                self._owned.setdefault(session, set()).add(key)

    def _remove(self, key: str) -> None:
        del self._data[key]
        if self._sorted is not None:
            index = bisect.bisect_left(self._sorted, key)
            del self._sorted[index]
        session = self._owner.pop(key, None)
        if session is not None:
            keys = self._owned[session]
            keys.discard(key)
            if not keys:
                del self._owned[session]


# --------------------------------------------------------------------------- snapshot file
#
# kv.msgpack: a 20-byte header (magic "ZRKV", version u16, reserved u16, crc32 u32 of the
# body, body length u64, little-endian), then the body: a msgpack stream of the entry
# count, then one [key, encoded value, owner session or None] per key in sorted key order.
# The body is canonical: two stores with the same content write the same bytes.


def _write_snapshot(directory: Path, data: dict[str, bytes], owners: dict[str, str]) -> None:
    path = directory / SNAPSHOT_FILE
    tmp = directory / (SNAPSHOT_FILE + ".tmp")
    packer = msgpack.Packer(use_bin_type=True)
    crc = 0
    length = 0
    with open(tmp, "wb") as f:
        f.write(b"\0" * _HEADER.size)

        def emit(chunk: bytes) -> None:
            nonlocal crc, length
            f.write(chunk)
            crc = zlib.crc32(chunk, crc)
            length += len(chunk)

        emit(packer.pack(len(data)))
        for key in sorted(data):
            emit(packer.pack([key, data[key], owners.get(key)]))
        f.seek(0)
        f.write(_HEADER.pack(_MAGIC, _VERSION, 0, crc, length))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(directory)
    log.debug("wrote key-value snapshot %s: %d keys, %d bytes", path, len(data), length)


def _chunks(f: Any, length: int) -> Iterator[bytes]:
    remaining = length
    while remaining:
        chunk = f.read(min(_CHUNK, remaining))
        if not chunk:
            return
        remaining -= len(chunk)
        yield chunk


def _read_snapshot(path: Path) -> tuple[dict[str, bytes], dict[str, str]]:
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise InvalidSnapshot(path, "the file is missing") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        header = f.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise InvalidSnapshot(path, f"too short for a header ({size} bytes)")
        magic, version, _reserved, crc, length = _HEADER.unpack(header)
        if magic != _MAGIC:
            raise InvalidSnapshot(path, f"not a key-value snapshot (magic {magic!r})")
        if version != _VERSION:
            raise InvalidSnapshot(path, f"unsupported format version {version}")
        if size != _HEADER.size + length:
            raise InvalidSnapshot(
                path, f"size is {size} bytes, the header says {_HEADER.size + length}"
            )
        unpacker = msgpack.Unpacker(
            raw=False, strict_map_key=False, max_buffer_size=max(_CHUNK * 2, length)
        )
        actual = 0
        objects: list[Any] = []
        for chunk in _chunks(f, length):
            actual = zlib.crc32(chunk, actual)
            unpacker.feed(chunk)
            try:
                objects.extend(unpacker)
            except Exception as exc:  # msgpack raises several unrelated types
                raise InvalidSnapshot(path, f"undecodable body: {type(exc).__name__}") from None
    if actual != crc:
        raise InvalidSnapshot(path, "checksum mismatch (the file is damaged)")
    return _parse_body(path, objects)


def _parse_body(path: Path, objects: list[Any]) -> tuple[dict[str, bytes], dict[str, str]]:
    if not objects or type(objects[0]) is not int or objects[0] < 0:
        raise InvalidSnapshot(path, "the body does not start with an entry count")
    count = objects[0]
    if len(objects) - 1 != count:
        raise InvalidSnapshot(path, f"{len(objects) - 1} entries, the count says {count}")
    data: dict[str, bytes] = {}
    owners: dict[str, str] = {}
    previous: str | None = None
    for position, entry in enumerate(objects[1:]):
        if not isinstance(entry, list) or len(entry) != 3:
            raise InvalidSnapshot(path, f"entry {position} is not [key, value, owner]")
        key, value, owner = entry
        try:
            _check_key(key)
        except CommandRejected as exc:
            raise InvalidSnapshot(path, f"entry {position}: {exc.reason}") from None
        if previous is not None and key <= previous:
            raise InvalidSnapshot(path, f"entry {position}: keys out of order or repeated")
        if not isinstance(value, bytes):
            raise InvalidSnapshot(path, f"entry {position}: the value is not bytes")
        try:
            _decode(value)
        except Exception:  # msgpack raises several unrelated types
            raise InvalidSnapshot(path, f"entry {position}: undecodable value") from None
        if owner is not None:
            if not isinstance(owner, str) or not owner:
                raise InvalidSnapshot(path, f"entry {position}: bad owner session")
            owners[key] = owner
        data[key] = value
        previous = key
    return data, owners

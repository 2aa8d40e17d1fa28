"""How client commands travel inside log entries.

A NORMAL entry's data is one msgpack array: ``[kind, client_id, seq, acked, body]``.
``client_id``/``seq`` make a write exactly-once; ``acked`` is the highest seq whose result
the client has received, so the replicated state may forget results up to it.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any, NamedTuple

import msgpack

from zraft.packing import pack


class CommandKind(IntEnum):
    WRITE = 0
    SESSION_OPEN = 1  # body: the session's timeout in ms; the session id is the client id
    SESSION_WRITE = 2  # body: [temporary, command]; temporary data belongs to the session
    SESSION_CLOSE = 3  # by the session's owner
    SESSION_EXPIRE = 4  # body: the session id; decided by the leader, replicated


_KINDS = frozenset(int(kind) for kind in CommandKind)
_new_command = tuple.__new__


class MalformedCommand(ValueError):
    """An entry whose data is not a command envelope."""


class Command(NamedTuple):
    kind: int  # a CommandKind
    client_id: str
    seq: int
    acked: int
    body: Any

    def encode(self) -> bytes:
        return pack([int(self.kind), self.client_id, self.seq, self.acked, self.body])

    @staticmethod
    def decode(data: bytes) -> Command:
        try:
            raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
        except Exception as error:  # msgpack raises several unrelated types
            raise MalformedCommand(f"not msgpack: {error}") from None
        if type(raw) is not list or len(raw) != 5:
            raise MalformedCommand("a command is a 5-element array")
        kind, client_id, seq, acked, _ = raw
        try:
            known = kind in _KINDS
        except TypeError:  # unhashable
            known = False
        if not known:
            raise MalformedCommand(f"unknown command kind {kind!r}")
        if type(client_id) is not str or len(client_id) > 256:
            raise MalformedCommand("client id must be a string of at most 256 characters")
        if type(seq) is not int or type(acked) is not int or seq < 0 or acked < 0:
            raise MalformedCommand("seq and acked must be non-negative integers")
        return _new_command(Command, raw)  # one is decoded per entry on every peer

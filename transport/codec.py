"""The wire format: a versioned msgpack codec with every field validated on decode.

Pure: bytes in, frozen dataclasses out (and back); no sockets, no threads.

A frame is one msgpack array ``[version, cluster_id, sender, type_code, body]``. ``body``
is the message's fields as an array, in declaration order (see ``docs/transport.md``).
Frames between peers carry a sixth element, their origin ``[cluster_uuid, instance]``
(which founding of the cluster and which data directory sent them); a peer frame may then
be an empty batch, which says only that (a hello). A client's frame may carry one with no
instance: the founding its requests are for (peers of another founding refuse them).
Type code 0 is a batch: its body is an array of ``[type_code, body]`` pairs, all from the
same sender, so one frame (one socket write, one unpack) carries many messages.

``decode``/``decode_batch`` trust nothing: the size is checked before unpacking, msgpack's
own length limits stop a hostile header from allocating more than the frame could hold,
and every field's type and range is checked. Any violation raises ``FrameError`` whose
``reason`` is a short, stable code suitable for counters.

Why one module: the wire format is one table of type codes with an encoder and a validating
decoder per type, side by side so that they cannot drift.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import msgpack

from zraft.core.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from zraft.core.types import Configuration, Entry, EntryKind, SnapshotMeta
from zraft.packing import pack

from .messages import ClientReply, ClientRequest, SnapshotOffer, SnapshotReady

# 2: ClientReply carries the log index; 3: peer frames carry an origin. (Client frames may
# carry the founding their requests are for, an origin with no instance: peer frames are
# unchanged, so peers of this version and the one before talk, and a rolling upgrade works;
# upgrade clients after their peers, as older peers refuse such a client frame.)
PROTOCOL_VERSION = 3
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024
MAX_PEER_ID_LEN = 256
MAX_OP_LEN = 256
MAX_ERROR_LEN = 64 * 1024
MAX_ORIGIN_PART_LEN = 64
MAX_INT = (1 << 63) - 1
# No single msgpack array or map may claim more elements than this (or than the frame has
# bytes): a 5-byte header cannot make the unpacker allocate a list of 4 billion slots.
MAX_CONTAINER_LEN = 1 << 20
# Most messages one encode_batch frame carries; bigger batches are split.
MAX_BATCH_MESSAGES = 4096

WireMessage: TypeAlias = Message | ClientRequest | ClientReply
Origin: TypeAlias = tuple[str, str]  # (cluster uuid, instance) of the sending peer

BATCH = 0
TYPE_CODES: dict[type, int] = {
    AppendEntries: 1,
    AppendResponse: 2,
    RequestVote: 3,
    VoteResponse: 4,
    Heartbeat: 5,
    HeartbeatResponse: 6,
    InstallSnapshot: 7,
    TimeoutNow: 8,
    ReadIndexRequest: 9,
    ReadIndexResponse: 10,
    SnapshotOffer: 20,
    SnapshotReady: 21,
    ClientRequest: 30,
    ClientReply: 31,
}
"""Stable type codes. Never reuse or renumber one; add new codes and bump nothing else."""


class FrameError(ValueError):
    """A frame that must be dropped. ``reason`` is a short stable code (see the docs)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Decoded:
    """One message and the peer (or client) id the frame says it came from."""

    sender: str
    message: WireMessage


@dataclass(frozen=True, slots=True)
class DecodedBatch:
    sender: str
    messages: list[WireMessage]
    origin: Origin | None = None  # set on frames from peers (and pinned clients)


# --------------------------------------------------------------------------- encoding


def _meta_wire(meta: SnapshotMeta) -> list[Any]:
    return [meta.index, meta.term, meta.config.to_wire()]


def _entry_wire(entry: Entry) -> list[Any]:
    if entry.kind == EntryKind.CONFIG:
        data = entry.data
        if not isinstance(data, Configuration):
            raise TypeError(f"CONFIG entry {entry.index} data is not a Configuration")
        return [entry.index, entry.term, int(entry.kind), data.to_wire()]
    return [entry.index, entry.term, int(entry.kind), entry.data]


def _body(msg: WireMessage) -> list[Any]:  # noqa: C901 - one flat dispatch is clearest
    t = type(msg)
    if t is ClientRequest or t is ClientReply:  # one per write; their fields are the wire's
        return list(msg)  # type: ignore[arg-type]
    if t is AppendEntries:
        assert isinstance(msg, AppendEntries)
        return [
            msg.term, msg.src, msg.dst, msg.prev_index, msg.prev_term,
            [_entry_wire(e) for e in msg.entries], msg.commit,
        ]  # fmt: skip
    if t is Heartbeat:
        assert isinstance(msg, Heartbeat)
        return [msg.term, msg.src, msg.dst, msg.commit, msg.round]
    if t is HeartbeatResponse:
        assert isinstance(msg, HeartbeatResponse)
        return [msg.term, msg.src, msg.dst, msg.round]
    if t is AppendResponse:
        assert isinstance(msg, AppendResponse)
        return [
            msg.term, msg.src, msg.dst, msg.success, msg.index, msg.hint_index, msg.hint_term,
        ]  # fmt: skip
    if t is RequestVote:
        assert isinstance(msg, RequestVote)
        return [
            msg.term, msg.src, msg.dst, msg.last_index, msg.last_term, msg.pre_vote, msg.transfer,
        ]  # fmt: skip
    if t is VoteResponse:
        assert isinstance(msg, VoteResponse)
        return [msg.term, msg.src, msg.dst, msg.granted, msg.pre_vote]
    if t is InstallSnapshot or t is SnapshotOffer:
        assert isinstance(msg, InstallSnapshot | SnapshotOffer)
        return [msg.term, msg.src, msg.dst, _meta_wire(msg.meta)]
    if t is TimeoutNow:
        assert isinstance(msg, TimeoutNow)
        return [msg.term, msg.src, msg.dst]
    if t is ReadIndexRequest:
        assert isinstance(msg, ReadIndexRequest)
        return [msg.term, msg.src, msg.dst, msg.context]
    if t is ReadIndexResponse:
        assert isinstance(msg, ReadIndexResponse)
        return [msg.term, msg.src, msg.dst, msg.context, msg.index, msg.ok]
    if t is SnapshotReady:
        assert isinstance(msg, SnapshotReady)
        return [msg.term, msg.src, msg.dst, msg.index, msg.host, msg.port]
    raise TypeError(f"cannot encode {t.__name__}")


def encode(
    message: WireMessage, *, cluster_id: str, sender: str, origin: Origin | None = None
) -> bytes:
    """One message as one frame. Raises TypeError/ValueError for what cannot be encoded."""
    return _frame(cluster_id, sender, TYPE_CODES[type(message)], _body(message), origin)


def encode_batch(
    messages: Sequence[WireMessage],
    *,
    cluster_id: str,
    sender: str,
    origin: Origin | None = None,
) -> bytes:
    """Many messages in one frame (type code 0). Raises like ``encode``. With an origin,
    ``messages`` may be empty: a hello."""
    items = [[TYPE_CODES[type(m)], _body(m)] for m in messages]
    return _frame(cluster_id, sender, BATCH, items, origin)


def _frame(cluster_id: str, sender: str, code: int, body: Any, origin: Origin | None) -> bytes:
    if origin is None:
        return pack([PROTOCOL_VERSION, cluster_id, sender, code, body])
    return pack([PROTOCOL_VERSION, cluster_id, sender, code, body, list(origin)])


def encode_batches(
    messages: Sequence[WireMessage],
    *,
    cluster_id: str,
    sender: str,
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    on_error: Callable[[WireMessage, Exception], None] | None = None,
    origin: Origin | None = None,
) -> list[tuple[bytes, int]]:
    """Frames of at most ``MAX_BATCH_MESSAGES`` messages and ``max_frame_bytes`` bytes.

    Returns ``(frame, message_count)`` pairs. A message that cannot be encoded, or is alone
    bigger than ``max_frame_bytes``, is left out and reported to ``on_error`` (or raised).
    """
    out: list[tuple[bytes, int]] = []
    for start in range(0, len(messages), MAX_BATCH_MESSAGES):
        _encode_chunk(
            messages[start : start + MAX_BATCH_MESSAGES],
            cluster_id, sender, max_frame_bytes, on_error, out, origin,
        )  # fmt: skip
    return out


def _encode_chunk(
    chunk: Sequence[WireMessage],
    cluster_id: str,
    sender: str,
    max_frame_bytes: int,
    on_error: Callable[[WireMessage, Exception], None] | None,
    out: list[tuple[bytes, int]],
    origin: Origin | None = None,
) -> None:
    try:
        if len(chunk) == 1:
            frame = encode(chunk[0], cluster_id=cluster_id, sender=sender, origin=origin)
        else:
            frame = encode_batch(chunk, cluster_id=cluster_id, sender=sender, origin=origin)
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        if len(chunk) == 1:
            if on_error is None:
                raise
            on_error(chunk[0], exc)
            return
        frame = b""  # find the culprit by halving
        too_big = False
    else:
        too_big = len(frame) > max_frame_bytes
        if not too_big:
            out.append((frame, len(chunk)))
            return
        if len(chunk) == 1:
            error = FrameError("oversized")
            if on_error is None:
                raise error
            on_error(chunk[0], error)
            return
    half = len(chunk) // 2
    _encode_chunk(chunk[:half], cluster_id, sender, max_frame_bytes, on_error, out, origin)
    _encode_chunk(chunk[half:], cluster_id, sender, max_frame_bytes, on_error, out, origin)


# --------------------------------------------------------------------------- decoding


def _bad(name: str) -> FrameError:
    return FrameError(f"bad-field:{name}")


def _uint(value: Any, name: str) -> int:
    if type(value) is not int or value < 0 or value > MAX_INT:
        raise _bad(name)
    return value


def _bool(value: Any, name: str) -> bool:
    if type(value) is not bool:
        raise _bad(name)
    return value


def _peer(value: Any, name: str) -> str:
    if type(value) is not str or not value or len(value) > MAX_PEER_ID_LEN:
        raise _bad(name)
    return value


def _opt_str(value: Any, name: str, limit: int) -> str | None:
    if value is None:
        return None
    if type(value) is not str or len(value) > limit:
        raise _bad(name)
    return value


def _context(value: Any) -> Any:
    if value is None or type(value) in (int, str, bytes):
        return value
    raise _bad("context")


_SCALARS = frozenset({type(None), bool, int, float, str, bytes})
_new = tuple.__new__


def _plain(value: Any, depth: int = 0) -> bool:
    """Only msgpack's plain types (no ext types or timestamps). Loops rather than
    generator expressions: this runs on every client payload."""
    t = type(value)
    if t in _SCALARS:
        return True
    if depth > 64:
        return False
    if t is list:
        for item in value:
            if type(item) not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    if t is dict:
        for key, item in value.items():
            if type(key) not in _SCALARS and not _plain(key, depth + 1):
                return False
            if type(item) not in _SCALARS and not _plain(item, depth + 1):
                return False
        return True
    return False


def _config(raw: Any, name: str) -> Configuration:
    if type(raw) is not dict:
        raise _bad(name)
    try:
        config = Configuration.from_wire(raw)
    except (ValueError, TypeError):  # TypeError: from_wire sorting str and bytes keys
        raise _bad(name) from None
    for peer in config.members:
        _peer(peer, name)
    return config


def _meta(raw: Any) -> SnapshotMeta:
    if type(raw) is not list or len(raw) != 3:
        raise _bad("meta")
    index, term, config = raw
    return SnapshotMeta(
        _uint(index, "meta.index"), _uint(term, "meta.term"), _config(config, "meta.config")
    )


def _entry(raw: Any) -> Entry:
    if type(raw) is not list or len(raw) != 4:
        raise _bad("entry")
    index, term, kind, data = raw
    if type(index) is not int or index < 1 or index > MAX_INT:
        raise _bad("entry.index")
    _uint(term, "entry.term")
    if kind == 0 and type(kind) is int:
        if type(data) is not bytes:
            raise _bad("entry.data")
        return Entry(index, term, EntryKind.NORMAL, data)
    if kind == 1 and type(kind) is int:
        if type(data) is not bytes:
            raise _bad("entry.data")
        return Entry(index, term, EntryKind.NOOP, data)
    if kind == 2 and type(kind) is int:
        return Entry(index, term, EntryKind.CONFIG, _config(data, "entry.data"))
    raise _bad("entry.kind")


def _fields(body: Any, count: int, name: str) -> list[Any]:
    if type(body) is not list or len(body) != count:
        raise FrameError(f"bad-body:{name}")
    return body


def _head(body: list[Any]) -> tuple[int, str, str]:
    return _uint(body[0], "term"), _peer(body[1], "src"), _peer(body[2], "dst")


def _d_append(body: Any) -> AppendEntries:
    b = _fields(body, 7, "AppendEntries")
    term, src, dst = _head(b)
    entries = b[5]
    if type(entries) is not list:
        raise _bad("entries")
    return AppendEntries(
        term, src, dst, _uint(b[3], "prev_index"), _uint(b[4], "prev_term"),
        tuple([_entry(e) for e in entries]), _uint(b[6], "commit"),
    )  # fmt: skip


def _d_append_resp(body: Any) -> AppendResponse:
    b = _fields(body, 7, "AppendResponse")
    term, src, dst = _head(b)
    return AppendResponse(
        term, src, dst, _bool(b[3], "success"), _uint(b[4], "index"),
        _uint(b[5], "hint_index"), _uint(b[6], "hint_term"),
    )  # fmt: skip


def _d_vote(body: Any) -> RequestVote:
    b = _fields(body, 7, "RequestVote")
    term, src, dst = _head(b)
    return RequestVote(
        term, src, dst, _uint(b[3], "last_index"), _uint(b[4], "last_term"),
        _bool(b[5], "pre_vote"), _bool(b[6], "transfer"),
    )  # fmt: skip


def _d_vote_resp(body: Any) -> VoteResponse:
    b = _fields(body, 5, "VoteResponse")
    term, src, dst = _head(b)
    return VoteResponse(term, src, dst, _bool(b[3], "granted"), _bool(b[4], "pre_vote"))


def _d_heartbeat(body: Any) -> Heartbeat:
    b = _fields(body, 5, "Heartbeat")
    term, src, dst = _head(b)
    return Heartbeat(term, src, dst, _uint(b[3], "commit"), _uint(b[4], "round"))


def _d_heartbeat_resp(body: Any) -> HeartbeatResponse:
    b = _fields(body, 4, "HeartbeatResponse")
    term, src, dst = _head(b)
    return HeartbeatResponse(term, src, dst, _uint(b[3], "round"))


def _d_install(body: Any) -> InstallSnapshot:
    b = _fields(body, 4, "InstallSnapshot")
    term, src, dst = _head(b)
    return InstallSnapshot(term, src, dst, _meta(b[3]))


def _d_timeout_now(body: Any) -> TimeoutNow:
    b = _fields(body, 3, "TimeoutNow")
    term, src, dst = _head(b)
    return TimeoutNow(term, src, dst)


def _d_read_req(body: Any) -> ReadIndexRequest:
    b = _fields(body, 4, "ReadIndexRequest")
    term, src, dst = _head(b)
    return ReadIndexRequest(term, src, dst, _context(b[3]))


def _d_read_resp(body: Any) -> ReadIndexResponse:
    b = _fields(body, 6, "ReadIndexResponse")
    term, src, dst = _head(b)
    return ReadIndexResponse(
        term, src, dst, _context(b[3]), _uint(b[4], "index"), _bool(b[5], "ok")
    )


def _d_offer(body: Any) -> SnapshotOffer:
    b = _fields(body, 4, "SnapshotOffer")
    term, src, dst = _head(b)
    return SnapshotOffer(term, src, dst, _meta(b[3]))


def _d_ready(body: Any) -> SnapshotReady:
    b = _fields(body, 6, "SnapshotReady")
    term, src, dst = _head(b)
    host = b[4]
    if type(host) is not str or not host or len(host) > MAX_PEER_ID_LEN:
        raise _bad("host")
    port = b[5]
    if type(port) is not int or not 0 < port < 65536:
        raise _bad("port")
    return SnapshotReady(term, src, dst, _uint(b[3], "index"), host, port)


def _counters(values: tuple[Any, ...], names: tuple[str, ...]) -> None:
    """Check unsigned counters: one pass for the usual case, named errors otherwise."""
    for value in values:
        if type(value) is not int or not 0 <= value <= MAX_INT:
            for item, name in zip(values, names, strict=True):
                _uint(item, name)


_REQUEST_COUNTERS = ("request_id", "seq", "acked", "timeout_ms")


# Client requests and replies are decoded one per write: fields are checked inline and the
# tuple is built from the decoded list itself.
def _d_client_request(body: Any) -> ClientRequest:
    if type(body) is not list or len(body) != 7:
        raise FrameError("bad-body:ClientRequest")
    request_id, op, payload, client_id, seq, acked, timeout_ms = body
    if type(op) is not str or not op or len(op) > MAX_OP_LEN:
        raise _bad("op")
    if type(payload) not in _SCALARS and not _plain(payload):
        raise _bad("payload")
    if type(client_id) is not str or len(client_id) > MAX_PEER_ID_LEN:
        raise _bad("client_id")
    _counters((request_id, seq, acked, timeout_ms), _REQUEST_COUNTERS)
    return _new(ClientRequest, body)  # type: ignore[no-any-return]


def _d_client_reply(body: Any) -> ClientReply:
    if type(body) is not list or len(body) != 6:
        raise FrameError("bad-body:ClientReply")
    request_id, ok, result, error, leader, index = body
    if type(result) not in _SCALARS and not _plain(result):
        raise _bad("result")
    if leader is not None:
        _peer(leader, "leader")
    _uint(request_id, "request_id")
    _bool(ok, "ok")
    _opt_str(error, "error", MAX_ERROR_LEN)
    _uint(index, "index")
    return _new(ClientReply, body)  # type: ignore[no-any-return]


_DECODERS: dict[int, Callable[[Any], WireMessage]] = {
    1: _d_append,
    2: _d_append_resp,
    3: _d_vote,
    4: _d_vote_resp,
    5: _d_heartbeat,
    6: _d_heartbeat_resp,
    7: _d_install,
    8: _d_timeout_now,
    9: _d_read_req,
    10: _d_read_resp,
    20: _d_offer,
    21: _d_ready,
    30: _d_client_request,
    31: _d_client_reply,
}
assert {code for code in _DECODERS} == set(TYPE_CODES.values())


def _unpack(frame: bytes, max_frame_bytes: int) -> Any:
    size = len(frame)
    if size > max_frame_bytes:
        raise FrameError("oversized")
    if size == 0:
        raise FrameError("not-msgpack")
    containers = min(size, MAX_CONTAINER_LEN)
    try:
        # unpackb takes the same limits as Unpacker (whose max_buffer_size is our size
        # check above) and reads straight from the frame without copying it into a buffer.
        return msgpack.unpackb(
            frame,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=containers,
            max_map_len=min(size // 2, MAX_CONTAINER_LEN),
            max_ext_len=0,
        )
    except msgpack.ExtraData:
        raise FrameError("trailing-data") from None
    except Exception:  # noqa: BLE001 - any unpack failure means "not our msgpack"
        raise FrameError("not-msgpack") from None


def _envelope(obj: Any, cluster_id: str) -> tuple[str, int, Any, Origin | None]:
    if type(obj) is not list or not 5 <= len(obj) <= 6:
        raise FrameError("bad-envelope")
    version, cluster, sender, code, body = obj[:5]
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise FrameError("bad-version")
    if cluster != cluster_id or type(cluster) is not str:
        raise FrameError("wrong-cluster")
    if type(sender) is not str or not sender or len(sender) > MAX_PEER_ID_LEN:
        raise FrameError("bad-sender")
    if type(code) is not int:
        raise FrameError("unknown-type")
    return sender, code, body, _origin(obj[5]) if len(obj) == 6 else None


def _origin(raw: Any) -> Origin:
    if (
        type(raw) is not list
        or len(raw) != 2
        or not all(type(p) is str and len(p) <= MAX_ORIGIN_PART_LEN for p in raw)
        or not (raw[0] or raw[1])  # a peer's names its instance; a client's, a founding
    ):
        raise FrameError("bad-origin")
    return raw[0], raw[1]


def _one(code: Any, body: Any, sender: str) -> WireMessage:
    decoder = _DECODERS.get(code) if type(code) is int else None
    if decoder is None:
        raise FrameError("unknown-type")
    message = decoder(body)
    if isinstance(message, Message) and message.src != sender:
        raise FrameError("src-mismatch")
    return message


def decode(frame: bytes, *, cluster_id: str, max_frame_bytes: int) -> Decoded:
    """Decode a single-message frame (a batch frame raises ``FrameError("unexpected-batch")``)."""
    sender, code, body, _ = _envelope(_unpack(frame, max_frame_bytes), cluster_id)
    if code == BATCH:
        raise FrameError("unexpected-batch")
    return Decoded(sender, _one(code, body, sender))


def decode_batch(frame: bytes, *, cluster_id: str, max_frame_bytes: int) -> DecodedBatch:
    """Decode a batch or a single-message frame into a list of messages, all or nothing."""
    sender, code, body, origin = _envelope(_unpack(frame, max_frame_bytes), cluster_id)
    if code != BATCH:
        return DecodedBatch(sender, [_one(code, body, sender)], origin)
    if type(body) is not list or not (body or origin):  # only a peer's hello is empty
        raise FrameError("bad-batch")
    out: list[WireMessage] = []
    for item in body:
        if type(item) is not list or len(item) != 2:
            raise FrameError("bad-batch")
        out.append(_one(item[0], item[1], sender))
    return DecodedBatch(sender, out, origin)


def is_peer_message(message: WireMessage) -> bool:
    """True for Raft peer traffic (core messages and snapshot negotiation)."""
    return isinstance(message, Message)


def iter_type_codes() -> Iterable[tuple[str, int]]:
    """(type name, code) pairs, for documentation and tests."""
    return ((t.__name__, c) for t, c in TYPE_CODES.items())

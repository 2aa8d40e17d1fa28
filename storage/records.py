"""The on-disk format of one log record, and batch encoding.

A record is a fixed 29-byte little-endian header followed by a msgpack payload::

    crc32   u32   over every byte after this field (rest of header + payload)
    length  u32   payload length in bytes
    index   u64
    term    u64
    kind    u8    an EntryKind
    batch   u32   position of the record inside the batch it was appended with (0 = first)
    payload       msgpack: bytes for NORMAL/NOOP, Configuration.to_wire() for CONFIG

Decoding validates everything before trusting it, and tells apart a record cut short by the
end of the buffer (``TornRecordError``: what an interrupted write leaves at a file's tail)
from a complete record whose contents are wrong (``CorruptRecordError``). The decoder never
allocates more than the bytes it was handed: lengths are checked against the buffer first.

The ``batch`` field lets recovery tell a batch torn by a crash (the kernel may write its pages
in any order, so valid records of the same unacknowledged batch can follow a damaged one)
from damage to a batch that was acknowledged (a later batch follows it).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import NamedTuple

import msgpack

from zraft.core.types import Configuration, Entry, EntryKind
from zraft.packing import pack

from .errors import CorruptRecordError, TornRecordError

HEADER = struct.Struct("<IIQQBI")
HEADER_SIZE = HEADER.size  # 29
_CHECKED = struct.Struct("<IQQBI")  # the header fields the CRC covers
MAX_DATA_SIZE = 64 * 1024 * 1024  # refuse to write or believe larger payloads
_U64_MAX = 2**64 - 1
_KINDS = frozenset(int(kind) for kind in EntryKind)


class RecordHeader(NamedTuple):
    """A record whose checksum has been verified, without its payload decoded."""

    index: int
    term: int
    kind: EntryKind
    batch_pos: int  # position inside its batch; index - batch_pos is the batch's first index
    end: int  # offset just past the record


def _payload(entry: Entry) -> bytes:
    if entry.kind == EntryKind.CONFIG:
        if not isinstance(entry.data, Configuration):
            raise TypeError(
                f"entry {entry.index}: CONFIG data must be a Configuration, "
                f"got {type(entry.data).__name__}"
            )
        return msgpack.packb(entry.data.to_wire())
    if not isinstance(entry.data, bytes | bytearray | memoryview):
        raise TypeError(
            f"entry {entry.index}: {entry.kind.name} data must be bytes, "
            f"got {type(entry.data).__name__}"
        )
    return pack(bytes(entry.data))


def encode_record(entry: Entry, batch_pos: int = 0) -> bytes:
    """One record's bytes; ``batch_pos`` is the entry's position inside its batch."""
    if not 1 <= entry.index <= _U64_MAX or not 0 <= entry.term <= _U64_MAX:
        raise ValueError(f"entry index {entry.index} / term {entry.term} out of range")
    if int(entry.kind) not in _KINDS:
        raise ValueError(f"entry {entry.index}: unknown kind {entry.kind!r}")
    payload = _payload(entry)
    if len(payload) > MAX_DATA_SIZE:
        raise ValueError(
            f"entry {entry.index}: payload of {len(payload)} bytes exceeds the "
            f"{MAX_DATA_SIZE}-byte record limit"
        )
    if not 0 <= batch_pos < min(entry.index, 2**32):
        raise ValueError(f"entry {entry.index}: batch position {batch_pos} out of range")
    checked = _CHECKED.pack(len(payload), entry.index, entry.term, int(entry.kind), batch_pos)
    crc = zlib.crc32(payload, zlib.crc32(checked))
    return struct.pack("<I", crc) + checked + payload


_FAST = struct.Struct("<IQQBIBB")  # the checked fields, then msgpack's bin8 marker and length
_CRC = struct.Struct("<I")
_FAST_KINDS = frozenset({int(EntryKind.NORMAL), int(EntryKind.NOOP)})


def encode_batch(entries: Sequence[Entry]) -> tuple[bytes, list[int]]:
    """All records of a batch as one buffer, plus each record's size (for offset indexes).

    The batch's indexes must be contiguous. Entries with a short bytes payload (the common
    case) take an inlined path producing exactly what ``encode_record`` produces.
    """
    parts: list[bytes] = []
    sizes: list[int] = []
    if not entries:
        return b"", sizes
    add_part, add_size = parts.append, sizes.append
    pack_fast, pack_crc, crc32 = _FAST.pack, _CRC.pack, zlib.crc32
    fast_kinds = _FAST_KINDS
    expected = entries[0].index
    if expected < 1:
        raise ValueError(f"entry index {expected} out of range")
    for pos, entry in enumerate(entries):
        if entry.index != expected:
            raise ValueError(
                f"batch indexes are not contiguous: entry {pos} has index {entry.index}, "
                f"expected {expected}"
            )
        expected += 1
        data = entry.data
        if type(data) is bytes and len(data) < 256 and entry.kind in fast_kinds:
            size = len(data)
            try:
                checked = pack_fast(size + 2, entry.index, entry.term, entry.kind, pos, 0xC4, size)
            except struct.error:
                raise ValueError(
                    f"entry index {entry.index} / term {entry.term} out of range"
                ) from None
            add_part(pack_crc(crc32(data, crc32(checked))))
            add_part(checked)
            add_part(data)
            add_size(HEADER_SIZE + 2 + size)
        else:
            record = encode_record(entry, pos)
            add_part(record)
            add_size(len(record))
    return b"".join(parts), sizes


def scan_record(buf: bytes | bytearray | memoryview, offset: int) -> RecordHeader:
    """Validate the record at ``offset`` (bounds, kind, checksum) without decoding its payload.

    Raises TornRecordError if the buffer ends inside the record, CorruptRecordError if the
    record is complete but wrong.
    """
    size = len(buf)
    if offset < 0 or offset > size:
        raise ValueError(f"offset {offset} outside buffer of {size} bytes")
    if size - offset < HEADER_SIZE:
        raise TornRecordError(
            offset, f"only {size - offset} bytes left, a record header needs {HEADER_SIZE}"
        )
    crc, length, index, term, kind, batch_pos = HEADER.unpack_from(buf, offset)
    if length > MAX_DATA_SIZE:
        raise CorruptRecordError(offset, f"payload length {length} exceeds {MAX_DATA_SIZE}")
    end = offset + HEADER_SIZE + length
    if end > size:
        raise TornRecordError(
            offset, f"record of {HEADER_SIZE + length} bytes runs past the end ({size})"
        )
    actual = zlib.crc32(memoryview(buf)[offset + 4 : end])
    if actual != crc:
        raise CorruptRecordError(
            offset, f"checksum mismatch (stored {crc:#010x}, computed {actual:#010x})"
        )
    if kind not in _KINDS:
        raise CorruptRecordError(offset, f"unknown entry kind {kind}")
    if index == 0:
        raise CorruptRecordError(offset, "index 0 is never written")
    if batch_pos >= index:
        raise CorruptRecordError(offset, f"batch position {batch_pos} >= index {index}")
    return RecordHeader(index, term, EntryKind(kind), batch_pos, end)


def decode_record(buf: bytes | bytearray | memoryview, offset: int) -> tuple[Entry, int]:
    """Decode the record at ``offset``; returns the entry and the offset just past it."""
    header = scan_record(buf, offset)
    start = offset + HEADER_SIZE
    payload = memoryview(buf)[start : header.end]
    try:
        value = msgpack.unpackb(
            payload,
            raw=False,
            strict_map_key=True,
            max_bin_len=len(payload),
            max_str_len=len(payload),
            max_array_len=len(payload),
            max_map_len=len(payload),
            max_ext_len=len(payload),
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise CorruptRecordError(offset, f"payload is not valid msgpack: {exc}") from None
    if header.kind == EntryKind.CONFIG:
        try:
            data: object = Configuration.from_wire(value)
        except (ValueError, TypeError) as exc:
            raise CorruptRecordError(offset, f"bad configuration payload: {exc}") from None
    else:
        if not isinstance(value, bytes):
            raise CorruptRecordError(
                offset, f"{header.kind.name} payload must be bytes, got {type(value).__name__}"
            )
        data = value
    return Entry(header.index, header.term, header.kind, data), header.end

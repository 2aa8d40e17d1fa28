"""The record format: round trips, torn versus corrupt, and fuzzing the decoder."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zraft.core.types import Configuration, Entry, EntryKind
from zraft.storage import CorruptRecordError, RecordError, TornRecordError
from zraft.storage.records import (
    HEADER,
    HEADER_SIZE,
    MAX_DATA_SIZE,
    decode_record,
    encode_batch,
    encode_record,
    scan_record,
)

ENTRIES = [
    Entry(1, 1, EntryKind.NORMAL, b"hello"),
    Entry(2, 1, EntryKind.NOOP, b""),
    Entry(3, 2, EntryKind.CONFIG, Configuration.of(["a", "b"], learners=["c"], outgoing=["d"])),
    Entry(4, 2, EntryKind.NORMAL, bytes(range(256)) * 40),
    Entry(5, 2**63, EntryKind.NORMAL, b""),
]


def decode_all(buf: bytes) -> list[Entry]:
    out, offset = [], 0
    while offset < len(buf):
        entry, offset = decode_record(buf, offset)
        out.append(entry)
    return out


@pytest.mark.timeout(30)
def test_batch_round_trip() -> None:
    data, sizes = encode_batch(ENTRIES)
    assert sum(sizes) == len(data)
    assert decode_all(data) == ENTRIES
    offset = 0
    for pos, (entry, size) in enumerate(zip(ENTRIES, sizes, strict=True)):
        header = scan_record(data, offset)
        assert (header.index, header.term, header.kind) == (entry.index, entry.term, entry.kind)
        assert header.batch_pos == pos and header.end == offset + size
        offset += size


@pytest.mark.timeout(30)
def test_encoder_refuses_bad_entries() -> None:
    with pytest.raises(ValueError):
        encode_record(Entry(0, 1, EntryKind.NORMAL, b""))
    with pytest.raises(ValueError):
        encode_record(Entry(1, -1, EntryKind.NORMAL, b""))
    with pytest.raises(TypeError):
        encode_record(Entry(1, 1, EntryKind.NORMAL, {"not": "bytes"}))
    with pytest.raises(TypeError):
        encode_record(Entry(1, 1, EntryKind.CONFIG, b"x"))


@pytest.mark.timeout(30)
def test_every_prefix_is_torn() -> None:
    record = encode_record(ENTRIES[2])
    for cut in range(len(record)):
        with pytest.raises(TornRecordError):
            decode_record(record[:cut], 0)


@pytest.mark.timeout(30)
def test_every_single_bit_flip_is_detected() -> None:
    record = encode_record(ENTRIES[0])
    for position in range(len(record)):
        for bit in range(8):
            damaged = bytearray(record)
            damaged[position] ^= 1 << bit
            with pytest.raises(RecordError):
                decode_record(bytes(damaged), 0)


@pytest.mark.timeout(30)
def test_corrupt_classifications() -> None:
    record = bytearray(encode_record(ENTRIES[0]))
    # an oversized length is corrupt, not torn: no write ever produces it
    huge = bytearray(record)
    struct.pack_into("<I", huge, 4, MAX_DATA_SIZE + 1)
    with pytest.raises(CorruptRecordError, match="exceeds"):
        decode_record(bytes(huge), 0)

    def resealed(kind: int = 0, payload: bytes | None = None, index: int = 1) -> bytes:
        body = payload if payload is not None else bytes(record[HEADER_SIZE:])
        checked = struct.pack("<IQQBI", len(body), index, 1, kind, 0) + body
        import zlib

        return struct.pack("<I", zlib.crc32(checked)) + checked

    with pytest.raises(CorruptRecordError, match="kind"):
        decode_record(resealed(kind=7), 0)
    with pytest.raises(CorruptRecordError, match="index 0"):
        decode_record(resealed(index=0), 0)
    with pytest.raises(CorruptRecordError, match="msgpack"):
        decode_record(resealed(payload=b"\xc1"), 0)
    with pytest.raises(CorruptRecordError, match="must be bytes"):
        decode_record(resealed(payload=b"\x01"), 0)
    with pytest.raises(CorruptRecordError, match="configuration"):
        decode_record(resealed(kind=2, payload=b"\x91\x01"), 0)


@pytest.mark.timeout(120)
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2048), st.integers(min_value=0, max_value=64))
def test_random_bytes_only_raise_record_errors(data: bytes, offset: int) -> None:
    offset = min(offset, len(data))
    tracemalloc.start()
    try:
        with contextlib.suppress(RecordError):
            decode_record(data, offset)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the decoder allocates in proportion to its input, never to a length field it read
    assert peak < 64 * 1024 + 16 * len(data)


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(ENTRIES[:4]),
    st.lists(st.tuples(st.integers(min_value=0), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(min_value=0, max_value=4096),
)
def test_mutated_records_never_crash(entry: Entry, flips: list[tuple[int, int]], cut: int) -> None:
    damaged = bytearray(encode_record(entry))
    for position, value in flips:
        damaged[position % len(damaged)] = value
    damaged = damaged[: max(0, len(damaged) - cut % (len(damaged) + 1))]
    try:
        decoded, end = decode_record(bytes(damaged), 0)
    except RecordError:
        return
    # if it decodes at all, the flips were no-ops: the checksum guards the rest
    assert decoded == entry and end == len(damaged)


@pytest.mark.timeout(30)
def test_header_layout_is_stable() -> None:
    """The on-disk layout is a compatibility promise; changing it must be deliberate."""
    assert HEADER.format == "<IIQQBI" and HEADER_SIZE == 29
    record = encode_record(Entry(7, 3, EntryKind.NOOP, b""))
    crc, length, index, term, kind, pos = HEADER.unpack_from(record)
    assert (length, index, term, kind, pos) == (2, 7, 3, 1, 0)
    assert record[HEADER_SIZE:] == b"\xc4\x00"


@pytest.mark.timeout(60)
@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=300).map(lambda d: (EntryKind.NORMAL, d)),
            st.binary(max_size=3).map(lambda d: (EntryKind.NOOP, d)),
            st.binary(min_size=250, max_size=70000).map(lambda d: (EntryKind.NORMAL, d)),
            st.just((EntryKind.CONFIG, Configuration.of(["x", "y"]))),
        ),
        min_size=1,
        max_size=20,
    ),
    st.integers(min_value=1, max_value=2**40),
    st.integers(min_value=0, max_value=2**64 - 1),
)
def test_batch_fast_path_matches_encode_record(
    items: list[tuple[EntryKind, object]], first: int, term: int
) -> None:
    entries = [Entry(first + k, term, kind, data) for k, (kind, data) in enumerate(items)]
    data, sizes = encode_batch(entries)
    assert data == b"".join(encode_record(e, pos) for pos, e in enumerate(entries))
    assert decode_all(data) == entries and sum(sizes) == len(data)


@pytest.mark.timeout(30)
def test_batch_checks() -> None:
    with pytest.raises(ValueError, match="not contiguous"):
        encode_batch([Entry(1, 1), Entry(3, 1)])
    with pytest.raises(ValueError, match="out of range"):
        encode_batch([Entry(1, -5)])
    with pytest.raises(ValueError, match="out of range"):
        encode_batch([Entry(1, 2**64)])
    assert encode_batch([]) == (b"", [])
    # bytearray and memoryview payloads are stored as bytes
    data, _ = encode_batch([Entry(1, 1, EntryKind.NORMAL, bytearray(b"ab"))])
    assert decode_all(data) == [Entry(1, 1, EntryKind.NORMAL, b"ab")]

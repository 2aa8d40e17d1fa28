"""Fuzzing what storage reads back from disk: log records (raw, and with a recomputed
checksum so the payload decoder sees the damage), whole log directories reopened after
random damage, hard-state copies and snapshot meta files. Only ``StorageError`` (and its
record subclasses) may come out, with a message naming the file and the problem."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.targets import (
    HARD_STATE,
    HARD_STATE_RESEALED,
    META,
    META_RESEALED,
    RECORDS,
    RECORDS_RESEALED,
    SEGMENTS,
    check,
    hard_state_seeds,
    meta_seeds,
    record_seeds,
)
from tests.support.fuzzing import fuzz
from zraft.storage import CorruptHardStateError, CorruptSnapshotError


@pytest.mark.timeout(120)
@fuzz(300)
@given(st.binary(max_size=256))
@example(record_seeds()[0])
def test_records(data: bytes) -> None:
    check(RECORDS, data)


@pytest.mark.timeout(120)
@fuzz(300)
@given(st.binary(min_size=1, max_size=64))
def test_records_with_valid_checksums(recipe: bytes) -> None:
    check(RECORDS_RESEALED, recipe)


@pytest.mark.timeout(180)
@fuzz(80)
@given(st.binary(min_size=8, max_size=64))
def test_log_directories_reopened_after_damage(recipe: bytes) -> None:
    check(SEGMENTS, recipe, memory=False)  # tracemalloc would mostly measure the fixture


@pytest.mark.timeout(120)
@fuzz(150)
@given(st.binary(max_size=128))
@example(hard_state_seeds()[0])
def test_hard_state_files(data: bytes) -> None:
    check(HARD_STATE, data)


@pytest.mark.timeout(120)
@fuzz(150)
@given(st.binary(min_size=1, max_size=64))
def test_hard_state_payloads_with_valid_checksums(recipe: bytes) -> None:
    check(HARD_STATE_RESEALED, recipe)


@pytest.mark.timeout(120)
@fuzz(100)
@given(st.binary(max_size=200))
@example(meta_seeds()[0])
def test_snapshot_meta_files(data: bytes) -> None:
    check(META, data)


@pytest.mark.timeout(120)
@fuzz(150)
@given(st.binary(min_size=1, max_size=64))
def test_snapshot_meta_payloads_with_valid_checksums(recipe: bytes) -> None:
    check(META_RESEALED, recipe)


# --------------------------------------------------------------------------- found


def _meta_file(**changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "index": 9,
        "term": 2,
        "config": {"voters": ["a:1", "b:2"], "outgoing": [], "learners": []},
        "extra": {},
        "files": {"data": [4, zlib.crc32(b"abcd")]},
    }
    payload.update(changes)
    return _meta_file_raw(msgpack.packb(payload))


def _meta_file_raw(body: bytes) -> bytes:
    return struct.pack("<4sII", b"ZRSM", zlib.crc32(body), len(body)) + body


# Checksummed meta files the fuzzer found escaping as OverflowError, ValueError or a bare
# OSError, or being accepted although they cannot have been written by SnapshotStore.
FOUND_META = [
    ("index inf", _meta_file(index=float("inf")), "must be non-negative ints"),
    ("index as text", _meta_file(index="9"), "must be non-negative ints"),
    ("term true", _meta_file(term=True), "must be non-negative ints"),
    ("NUL in a file name", _meta_file(files={"da\x00ta": [4, 0]}), "bad data file name"),
    ("file name too long", _meta_file(files={"a" * 300: [4, 0]}), "bad data file name"),
    ("dot part", _meta_file(files={"./data": [4, 0]}), "bad data file name"),
    ("file inside a file", _meta_file(files={"data/x": [4, 0]}), "lacks data file"),
    ("crc true", _meta_file(files={"data": [4, True]}), "bad size/crc"),
    ("negative size", _meta_file(files={"data": [-4, 0]}), "bad size/crc"),
    ("record not a map", _meta_file_raw(msgpack.packb([9, 2, {}])), "not a map"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "data", "says"), FOUND_META, ids=[f[0] for f in FOUND_META])
def test_meta_inputs_the_fuzzer_found(name: str, data: bytes, says: str) -> None:
    rejection = check(META, data)
    assert isinstance(rejection, CorruptSnapshotError), name
    assert says in str(rejection), str(rejection)


@pytest.mark.timeout(30)
def test_a_checksummed_hard_state_with_a_boolean_term_is_refused(tmp_path: Any) -> None:
    payload = msgpack.packb({"term": True, "vote": None, "commit": 0, "config": None})
    checked = struct.pack("<QI", 1, len(payload)) + payload
    data = struct.pack("<4sIQI", b"ZRHS", zlib.crc32(checked), 1, len(payload)) + payload
    rejection = check(HARD_STATE, data)
    assert isinstance(rejection, CorruptHardStateError)
    assert "non-negative integers" in str(rejection)

"""SegmentedLog under damaged files and failing system calls.

Documented outcomes:
* damage confined to the last batch of the open segment (a torn write) is cut off with a
  warning, and appending continues;
* damage anywhere else raises CorruptLogError naming the file and the record's offset;
* a lost segment raises MissingSegmentError;
* ENOSPC raises StorageFullError, EROFS/EACCES raise ReadOnlyStorageError, and the log still
  holds exactly what was durable before the failed call.

The tests run as root, for whom chmod does not make a directory read-only, so read-only
storage is simulated by making the system calls raise EROFS or EACCES.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Any

import pytest

from zraft.core.types import Configuration, Entry, EntryKind
from zraft.storage import (
    CorruptLogError,
    LogBrokenError,
    MissingSegmentError,
    ReadOnlyStorageError,
    SegmentedLog,
    StorageError,
    StorageFullError,
)
from zraft.storage import log as log_module
from zraft.storage.records import encode_batch, scan_record

SEGMENT = 3000


def make_entry(index: int) -> Entry:
    term = 1 + index // 40
    if index % 31 == 0:
        return Entry(index, term, EntryKind.CONFIG, Configuration.of(["a", "b", f"c{index}"]))
    digest = hashlib.blake2b(index.to_bytes(8, "little"), digest_size=20).digest()
    return Entry(index, term, EntryKind.NORMAL, digest * (1 + index % 5))


def batch(lo: int, hi: int) -> list[Entry]:
    return [make_entry(i) for i in range(lo, hi)]


def build(path: Path, last: int, step: int = 7) -> None:
    with SegmentedLog(path, max_segment_size=SEGMENT) as log:
        for lo in range(1, last + 1, step):
            log.append(batch(lo, min(lo + step, last + 1)))


def closed_segments(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix == ".seg")


def open_segment(path: Path) -> Path:
    (found,) = [p for p in path.iterdir() if p.suffix == ".open"]
    return found


def record_starts(data: bytes) -> list[int]:
    starts, offset = [], 0
    while offset < len(data):
        starts.append(offset)
        offset = scan_record(data, offset).end
    return starts


def reopen(path: Path) -> SegmentedLog:
    return SegmentedLog(path, max_segment_size=SEGMENT)


def assert_intact(path: Path, last: int) -> None:
    with reopen(path) as log:
        assert log.last_index == last
        assert log.entries(1, last + 1) == batch(1, last + 1)


# ---------------------------------------------------------------- torn tails


@pytest.mark.timeout(60)
def test_torn_tail_is_cut_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = random.Random(7)
    for trial in range(25):
        path = tmp_path / f"t{trial}"
        build(path, 60)
        seg = open_segment(path)
        torn, sizes = encode_batch(batch(61, 61 + rng.randint(1, 6)))
        cut = rng.randint(1, len(torn) - 1)  # a strict prefix of the next batch
        ends = [sum(sizes[: k + 1]) for k in range(len(sizes))]
        whole = sum(1 for end in ends if end <= cut)  # records the prefix holds entirely
        with open(seg, "ab") as f:
            f.write(torn[:cut])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zraft.storage.log"), reopen(path) as log:
            # whole records of the torn batch survive (valid, merely unacknowledged); the
            # partial one is cut and nothing else appears
            assert log.last_index == 60 + whole
            assert log.entries(1, 100) == batch(1, 61 + whole)
            log.append(batch(log.last_index + 1, 80))
        cut_logged = any("cutting" in r.getMessage() for r in caplog.records)
        assert cut_logged == (cut not in ends)
        assert_intact(path, 79)


@pytest.mark.timeout(60)
def test_flipped_bytes_in_unacknowledged_tail_are_cut(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rng = random.Random(11)
    for trial in range(25):
        path = tmp_path / f"t{trial}"
        build(path, 50)
        seg = open_segment(path)
        acked = seg.stat().st_size
        torn, sizes = encode_batch(batch(51, 55))
        damaged = bytearray(torn)
        for _ in range(rng.randint(1, 4)):
            damaged[rng.randrange(len(damaged))] ^= 1 << rng.randrange(8)
        if bytes(damaged) == torn:
            continue
        with open(seg, "ab") as f:
            f.write(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="zraft.storage.log"), reopen(path) as log:
            last = log.last_index
            assert 50 <= last < 54
            assert log.entries(1, 60) == batch(1, last + 1)
        assert any("cutting" in r.getMessage() for r in caplog.records)
        assert seg.stat().st_size == acked + sum(sizes[: last - 50])


@pytest.mark.timeout(30)
def test_out_of_order_pages_of_one_batch_are_a_torn_write(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A crash can persist later pages of a batch but not earlier ones: still a torn write."""
    build(tmp_path, 20)
    seg = open_segment(tmp_path)
    torn, sizes = encode_batch(batch(21, 31))
    damaged = bytearray(torn)
    start = sizes[0] + sizes[1]  # zero out record 23 entirely; 24..30 are intact
    damaged[start : start + sizes[2]] = bytes(sizes[2])
    with open(seg, "ab") as f:
        f.write(damaged)
    with caplog.at_level(logging.WARNING, logger="zraft.storage.log"), reopen(tmp_path) as log:
        assert log.last_index == 22
        assert log.entries(1, 40) == batch(1, 23)
    assert any("cutting" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------- corruption


@pytest.mark.timeout(60)
def test_flip_in_closed_segment_names_file_and_offset(tmp_path: Path) -> None:
    rng = random.Random(3)
    build(tmp_path, 300)
    segments = closed_segments(tmp_path)
    assert len(segments) >= 4
    for _ in range(30):
        victim = rng.choice(segments)
        data = victim.read_bytes()
        position = rng.randrange(len(data))
        starts = record_starts(data)
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        victim.write_bytes(damaged)
        with pytest.raises(CorruptLogError) as info:
            reopen(tmp_path)
        assert info.value.path == str(victim)
        assert info.value.offset == max(s for s in starts if s <= position)
        assert str(victim) in str(info.value) and f"offset {info.value.offset}" in str(info.value)
        victim.write_bytes(data)  # repair, and the log is whole again
    assert_intact(tmp_path, 300)


@pytest.mark.timeout(60)
def test_flip_in_acknowledged_part_of_open_segment_is_corruption(tmp_path: Path) -> None:
    rng = random.Random(5)
    with SegmentedLog(tmp_path, max_segment_size=10**6) as log:
        for lo in range(1, 201, 10):
            log.append(batch(lo, lo + 10))
    seg = open_segment(tmp_path)
    data = seg.read_bytes()
    starts = record_starts(data)
    last_batch_start = starts[190]  # records of the final batch (191..200) are the tail
    for _ in range(30):
        position = rng.randrange(last_batch_start)
        damaged = bytearray(data)
        damaged[position] ^= 1 << rng.randrange(8)
        seg.write_bytes(damaged)
        with pytest.raises(CorruptLogError) as info:
            SegmentedLog(tmp_path, max_segment_size=10**6)
        assert info.value.path == str(seg)
        assert info.value.offset == max(s for s in starts if s <= position)
        assert "later batch" in info.value.reason
        seg.write_bytes(data)
    with SegmentedLog(tmp_path, max_segment_size=10**6) as log:
        assert log.entries(1, 201) == batch(1, 201)


@pytest.mark.timeout(30)
def test_flip_in_last_acknowledged_batch_is_cut_documented_limit(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Damage to the final batch looks exactly like a torn write; it is cut, loudly."""
    build(tmp_path, 30, step=10)
    seg = open_segment(tmp_path)
    data = seg.read_bytes()
    starts = record_starts(data)
    damaged = bytearray(data)
    damaged[starts[-1] + 3] ^= 0x10
    seg.write_bytes(damaged)
    with caplog.at_level(logging.WARNING, logger="zraft.storage.log"), reopen(tmp_path) as log:
        assert log.entries(1, 40) == batch(1, log.last_index + 1)
        assert log.last_index == 29
    assert any("cutting" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)
def test_truncated_closed_segment_is_corruption(tmp_path: Path) -> None:
    rng = random.Random(9)
    build(tmp_path, 200)
    for _ in range(20):
        victim = rng.choice(closed_segments(tmp_path))
        data = victim.read_bytes()
        victim.write_bytes(data[: rng.randrange(len(data))])
        with pytest.raises(CorruptLogError) as info:
            reopen(tmp_path)
        assert info.value.path == str(victim)
        victim.write_bytes(data)
    assert_intact(tmp_path, 200)


@pytest.mark.timeout(30)
def test_missing_segment(tmp_path: Path) -> None:
    build(tmp_path, 200)
    segments = closed_segments(tmp_path)
    middle = segments[len(segments) // 2]
    data = middle.read_bytes()
    middle.unlink()
    with pytest.raises(MissingSegmentError, match="missing segment"):
        reopen(tmp_path)
    middle.write_bytes(data)
    first = segments[0]
    data = first.read_bytes()
    first.unlink()
    with pytest.raises(MissingSegmentError, match=r"entries 1\.\."):
        reopen(tmp_path)
    first.write_bytes(data)
    assert_intact(tmp_path, 200)


@pytest.mark.timeout(30)
def test_damaged_base_file(tmp_path: Path) -> None:
    build(tmp_path, 100)
    with reopen(tmp_path) as log:
        log.compact(50, make_entry(50).term)
    base = tmp_path / "base"
    data = base.read_bytes()
    base.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(CorruptLogError, match="base"):
        reopen(tmp_path)


# ---------------------------------------------------------------- failing system calls


def failing(errno_value: int, after: int = 0, real: Any = None) -> Any:
    """A stand-in for an os function that fails with ``errno_value`` after ``after`` calls."""
    calls = {"n": 0}

    def fake(*args: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(errno_value, os.strerror(errno_value))
        return real(*args)

    return fake


@pytest.mark.timeout(30)
@pytest.mark.parametrize("call", ["write", "fdatasync"])
def test_enospc_leaves_log_as_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    log = SegmentedLog(tmp_path, max_segment_size=10**6)
    log.append(batch(1, 20))
    seg = open_segment(tmp_path)
    size = seg.stat().st_size
    monkeypatch.setattr(log_module.os, call, failing(errno.ENOSPC))
    with pytest.raises(StorageFullError, match="no space"):
        log.append(batch(20, 30))
    monkeypatch.undo()
    assert seg.stat().st_size == size
    assert log.last_index == 19 and log.entries(1, 40) == batch(1, 20)
    log.append(batch(20, 25))  # space is back: appending continues
    log.close()
    assert_intact(tmp_path, 24)


@pytest.mark.timeout(30)
def test_partial_write_then_enospc_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SegmentedLog(tmp_path, max_segment_size=10**6)
    log.append(batch(1, 10))
    seg = open_segment(tmp_path)
    size = seg.stat().st_size
    real_write = os.write

    def half_then_fail(fd: int, data: Any) -> int:
        if len(data) > 64:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(log_module.os, "write", half_then_fail)
    with pytest.raises(StorageFullError):
        log.append(batch(10, 40))
    monkeypatch.undo()
    assert seg.stat().st_size == size
    log.append(batch(10, 12))
    log.close()
    assert_intact(tmp_path, 11)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES])
def test_read_only_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    log = SegmentedLog(tmp_path, max_segment_size=SEGMENT)
    log.append(batch(1, 10))
    monkeypatch.setattr(log_module.os, "write", failing(code))
    with pytest.raises(ReadOnlyStorageError, match="read-only"):
        log.append(batch(10, 12))
    monkeypatch.undo()
    # a rollover that cannot create the next segment file
    monkeypatch.setattr(log_module.os, "open", failing(code, real=os.open))
    with pytest.raises(ReadOnlyStorageError):
        for lo in range(10, 400, 10):
            log.append(batch(lo, lo + 10))
    monkeypatch.undo()
    last = log.last_index
    assert log.entries(1, last + 1) == batch(1, last + 1)
    log.append(batch(last + 1, last + 3))  # writable again: continues in a new segment
    log.close()
    assert_intact(tmp_path, last + 2)
    # opening a log on storage that refuses writes fails clearly
    monkeypatch.setattr(log_module.os, "open", failing(code, real=os.open))
    with pytest.raises(ReadOnlyStorageError):
        reopen(tmp_path)


@pytest.mark.timeout(30)
def test_failed_rollback_breaks_the_log_until_reopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = SegmentedLog(tmp_path)
    log.append(batch(1, 10))
    monkeypatch.setattr(log_module.os, "fdatasync", failing(errno.EIO))
    monkeypatch.setattr(log_module.os, "ftruncate", failing(errno.EIO))
    with pytest.raises(StorageError, match="EIO"):
        log.append(batch(10, 20))
    monkeypatch.undo()
    with pytest.raises(LogBrokenError, match="reopen"):
        log.append(batch(10, 11))
    log.close()
    # the unsynced batch is still in the page cache, so it reads back whole; either way
    # every acknowledged entry is there and nothing past the attempted batch
    with reopen(tmp_path) as again:
        assert again.last_index in (9, 19)
        assert again.entries(1, 100) == batch(1, again.last_index + 1)

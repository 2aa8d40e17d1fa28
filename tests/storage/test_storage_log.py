"""SegmentedLog: round trips, segment rollover, truncation, compaction, reset and reopen."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from zraft.core.types import Configuration, Entry, EntryKind
from zraft.storage import SegmentedLog, StorageError


def make_entry(index: int, term: int | None = None) -> Entry:
    """A deterministic entry for ``index``; every kind and a spread of sizes appear."""
    if term is None:
        term = 1 + index // 50
    if index % 37 == 0:
        return Entry(index, term, EntryKind.CONFIG, Configuration.of(["a", f"p{index % 5}"]))
    if index % 53 == 0:
        return Entry(index, term, EntryKind.NOOP, b"")
    digest = hashlib.sha256(index.to_bytes(8, "little")).digest()
    return Entry(index, term, EntryKind.NORMAL, digest * (index % 7))


def batch(lo: int, hi: int, term: int | None = None) -> list[Entry]:
    return [make_entry(i, term) for i in range(lo, hi)]


def segment_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.suffix in (".seg", ".open"))


@pytest.mark.timeout(30)
def test_empty_log(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path) as log:
        assert (log.first_index, log.last_index, log.last_term) == (1, 0, 0)
        assert log.term(0) == 0
        assert log.term(1) is None
        assert log.entry(1) is None
        assert log.entries(1, 10) == []
    with SegmentedLog(tmp_path) as log:
        assert (log.first_index, log.last_index) == (1, 0)


@pytest.mark.timeout(30)
def test_round_trip_and_reopen(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=4096, cache_entries=16) as log:
        for lo in range(1, 400, 13):
            log.append(batch(lo, lo + 13))
        assert log.last_index == 403
        assert log.entries(1, 404) == batch(1, 404)
        assert [log.term(i) for i in range(1, 404)] == [make_entry(i).term for i in range(1, 404)]
        assert log.entry(200) == make_entry(200)
        assert len(segment_files(tmp_path)) > 5
    with SegmentedLog(tmp_path, max_segment_size=4096, cache_entries=16) as log:
        assert (log.first_index, log.last_index) == (1, 403)
        assert log.entries(1, 404) == batch(1, 404)
        assert log.last_term == make_entry(403).term
        log.append(batch(404, 410))
        assert log.entries(395, 1000) == batch(395, 410)


@pytest.mark.timeout(30)
def test_rollover_names_and_sizes(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=2000) as log:
        for i in range(1, 101):
            log.append([make_entry(i)])
        names = segment_files(tmp_path)
    closed = [n for n in names if n.endswith(".seg")]
    opened = [n for n in names if n.endswith(".open")]
    assert len(opened) == 1 and len(closed) >= 3
    expected_first = 1
    for name in closed:
        first, last = (int(x) for x in name[:-4].split("-"))
        assert first == expected_first and last >= first
        assert os.path.getsize(tmp_path / name) <= 2000
        expected_first = last + 1
    assert int(opened[0][:-5]) == expected_first


@pytest.mark.timeout(30)
def test_batch_larger_than_segment_goes_alone(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=500) as log:
        log.append(batch(1, 3))
        log.append(batch(3, 40))  # far larger than a segment: one segment of its own
        log.append(batch(40, 42))
        assert log.entries(1, 42) == batch(1, 42)
    names = segment_files(tmp_path)
    assert "00000000000000000003-00000000000000000039.seg" in names


@pytest.mark.timeout(30)
def test_append_validation(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path) as log:
        log.append(batch(1, 5))
        with pytest.raises(ValueError, match="not contiguous"):
            log.append([make_entry(5), make_entry(7)])
        with pytest.raises(ValueError, match="gap"):
            log.append([make_entry(7)])
        with pytest.raises(TypeError):
            log.append([Entry(5, 1, EntryKind.NORMAL, "text, not bytes")])
        with pytest.raises(TypeError):
            log.append([Entry(5, 1, EntryKind.CONFIG, b"not a configuration")])
        log.append([])
        assert log.entries(1, 10) == batch(1, 5)  # nothing was lost by the refused batches


@pytest.mark.timeout(30)
def test_truncate_within_open_segment(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path) as log:
        log.append(batch(1, 20, term=1))
        log.append(batch(15, 18, term=2))  # replaces 15..19
        assert log.last_index == 17
        assert log.entries(1, 100) == batch(1, 15, term=1) + batch(15, 18, term=2)
    with SegmentedLog(tmp_path) as log:
        assert log.entries(1, 100) == batch(1, 15, term=1) + batch(15, 18, term=2)


@pytest.mark.timeout(30)
def test_truncate_across_segments(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=1500, cache_entries=4) as log:
        for i in range(1, 200, 5):
            log.append(batch(i, i + 5, term=1))
        before = segment_files(tmp_path)
        assert len(before) > 6
        log.append(batch(37, 40, term=3))  # deep inside an early closed segment
        assert log.last_index == 39
        assert log.term(36) == 1 and log.term(37) == 3 and log.term(40) is None
        assert log.entries(30, 100) == batch(30, 37, term=1) + batch(37, 40, term=3)
        log.append(batch(40, 60, term=3))
    after = segment_files(tmp_path)
    assert len(after) < len(before)
    with SegmentedLog(tmp_path, max_segment_size=1500) as log:
        assert log.last_index == 59
        assert log.entries(1, 100) == batch(1, 37, term=1) + batch(37, 60, term=3)


@pytest.mark.timeout(30)
def test_truncate_at_segment_start(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=1000) as log:
        for i in range(1, 60):
            log.append([make_entry(i, 1)])
        firsts = [int(n.split("-")[0].split(".")[0]) for n in segment_files(tmp_path)]
        cut = firsts[2]
        log.append([make_entry(cut, 2)])
        assert log.last_index == cut
        assert log.entries(1, 100) == batch(1, cut, term=1) + [make_entry(cut, 2)]
    with SegmentedLog(tmp_path, max_segment_size=1000) as log:
        assert log.entries(1, 100) == batch(1, cut, term=1) + [make_entry(cut, 2)]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("in_background", [False, True])
def test_compaction_drops_whole_segments(tmp_path: Path, in_background: bool) -> None:
    with SegmentedLog(tmp_path, max_segment_size=1500, remove_in_background=in_background) as log:
        for i in range(1, 300, 10):
            log.append(batch(i, i + 10))
        count = len(segment_files(tmp_path))
        assert log.frees_segment(150) and not log.frees_segment(log.first_index)
        log.compact(150, make_entry(150).term)
        log.wait_for_removals()
        assert not log.frees_segment(150)
        assert log.first_index == 151 and log.base_index == 150
        assert log.term(150) == make_entry(150).term
        assert log.term(149) is None and log.entry(150) is None
        assert log.entries(1, 160) == batch(151, 160)
        assert len(segment_files(tmp_path)) < count
        with pytest.raises(ValueError, match="compacted"):
            log.append(batch(140, 145))
        with pytest.raises(ValueError, match="term"):
            log.compact(200, 999)
        log.compact(100, 1)  # older than the base: nothing to do
        assert log.first_index == 151
    with SegmentedLog(tmp_path, max_segment_size=1500) as log:
        assert (log.first_index, log.last_index) == (151, 300)
        assert log.term(150) == make_entry(150).term
        assert log.entries(0, 1000) == batch(151, 301)
        # every file left on disk holds some entry after the base
        for name in segment_files(tmp_path):
            if name.endswith(".seg"):
                assert int(name[:-4].split("-")[1]) > 150


@pytest.mark.timeout(30)
def test_segments_a_crash_left_behind_a_background_compaction_go_on_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SegmentedLog(tmp_path, max_segment_size=1500, remove_in_background=True) as log:
        for i in range(1, 300, 10):
            log.append(batch(i, i + 10))
        count = len(segment_files(tmp_path))
        # The process dies after the base is durable, before the helper unlinks anything.
        monkeypatch.setattr("zraft.storage.log._SegmentRemover._remove", lambda self, paths: None)
        log.compact(150, make_entry(150).term)
        log.wait_for_removals()
        assert len(segment_files(tmp_path)) == count  # all still there
        assert log.entries(1, 160) == batch(151, 160)
    monkeypatch.undo()
    with SegmentedLog(tmp_path, max_segment_size=1500) as log:
        assert (log.first_index, log.last_index) == (151, 300)
        assert log.entries(0, 1000) == batch(151, 301)
        names = segment_files(tmp_path)
        assert len(names) < count
        assert all(int(n[:-4].split("-")[1]) > 150 for n in names if n.endswith(".seg"))


@pytest.mark.timeout(30)
def test_a_failed_background_removal_is_logged_and_the_log_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(path: str) -> None:
        raise PermissionError(13, "Permission denied", path)

    with SegmentedLog(tmp_path, max_segment_size=1500, remove_in_background=True) as log:
        for i in range(1, 300, 10):
            log.append(batch(i, i + 10))
        monkeypatch.setattr("zraft.storage.log.os.unlink", refuse)
        log.compact(150, make_entry(150).term)
        log.wait_for_removals()
        monkeypatch.undo()
        assert "removing compacted segments" in caplog.text
        log.append(batch(300, 310))
        assert log.entries(1, 1000) == batch(151, 310)
    with SegmentedLog(tmp_path, max_segment_size=1500) as log:  # the leftovers go now
        assert (log.first_index, log.last_index) == (151, 309)
        assert all(
            int(n[:-4].split("-")[1]) > 150 for n in segment_files(tmp_path) if n.endswith(".seg")
        )


@pytest.mark.timeout(30)
def test_compaction_to_last_index_and_continue(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=100_000) as log:
        log.append(batch(1, 50))
        log.compact(49, make_entry(49).term)
        assert (log.first_index, log.last_index) == (50, 49)
        assert log.last_term == make_entry(49).term
        assert segment_files(tmp_path) == []  # the only segment was fully compacted
        log.append(batch(50, 60))
        assert log.entries(1, 100) == batch(50, 60)
    with SegmentedLog(tmp_path) as log:
        assert (log.first_index, log.last_index) == (50, 59)
        assert log.entries(1, 100) == batch(50, 60)


@pytest.mark.timeout(30)
def test_reset_and_restore_to_snapshot(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=1000) as log:
        log.append(batch(1, 100))
        log.reset(500, 9)
        assert (log.first_index, log.last_index, log.last_term) == (501, 500, 9)
        assert log.term(500) == 9 and log.term(100) is None
        log.append(batch(501, 510, term=9))
    with SegmentedLog(tmp_path, max_segment_size=1000) as log:
        assert (log.first_index, log.last_index) == (501, 509)
        # a snapshot that matches the log keeps the suffix
        log.restore_to_snapshot(505, 9)
        assert (log.first_index, log.last_index) == (506, 509)
        # a snapshot that conflicts drops everything
        log.restore_to_snapshot(507, 10)
        assert (log.first_index, log.last_index, log.last_term) == (508, 507, 10)
        # past the end: compact resets
        log.compact(700, 11)
        assert (log.first_index, log.last_index, log.last_term) == (701, 700, 11)
        with pytest.raises(ValueError, match="older"):
            log.restore_to_snapshot(600, 11)


@pytest.mark.timeout(30)
def test_max_bytes_limits_reads(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_segment_size=3000, cache_entries=8) as log:
        entries = [Entry(i, 1, EntryKind.NORMAL, bytes([i % 256]) * 100) for i in range(1, 101)]
        for i in range(0, 100, 10):
            log.append(entries[i : i + 10])
        # 116 bytes per entry by Entry.size(): 1000 bytes hold 8 of them
        assert log.entries(1, 101, max_bytes=1000) == entries[:8]
        assert log.entries(95, 101, max_bytes=1000) == entries[94:]  # from the cache
        assert log.entries(5, 101, max_bytes=1) == entries[4:5]  # always at least one
        got = log.entries(1, 101, max_bytes=10**9)
        assert got == entries


@pytest.mark.timeout(30)
def test_cache_is_bounded(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, cache_entries=10) as log:
        for i in range(1, 1001, 50):
            log.append(batch(i, i + 50))
        assert len(log._cache) == 10  # white-box: only the window is kept as objects
        assert log.entries(1, 1001) == batch(1, 1001)
    with SegmentedLog(tmp_path, cache_entries=0) as log:
        log.append(batch(1001, 1003))
        assert len(log._cache) == 0
        assert log.entries(990, 2000) == batch(990, 1003)


@pytest.mark.timeout(30)
def test_directory_lock(tmp_path: Path) -> None:
    log = SegmentedLog(tmp_path)
    with pytest.raises(StorageError, match="already open"):
        SegmentedLog(tmp_path)
    log.close()
    with pytest.raises(StorageError, match="closed"):
        log.append(batch(1, 2))
    SegmentedLog(tmp_path).close()


@pytest.mark.timeout(60)
def test_random_operations_match_a_model(tmp_path: Path) -> None:
    """Random appends, conflicting appends, compactions and reopens against a list model."""
    import random

    rng = random.Random(1234)
    model: dict[int, Entry] = {}
    base = (0, 0)
    log = SegmentedLog(tmp_path, max_segment_size=2500, cache_entries=7)
    term = 1
    try:
        for _ in range(400):
            op = rng.random()
            last = log.last_index
            if op < 0.6:
                lo = rng.randint(max(base[0] + 1, last - 10), last + 1)
                if rng.random() < 0.3:
                    term += 1
                new = [make_entry(i, term) for i in range(lo, lo + rng.randint(1, 20))]
                log.append(new)
                for i in [i for i in model if i >= lo]:
                    del model[i]
                model.update({e.index: e for e in new})
            elif op < 0.7 and last > base[0]:
                upto = rng.randint(base[0] + 1, last)
                base = (upto, model[upto].term)
                log.compact(*base)
                for i in [i for i in model if i <= upto]:
                    del model[i]
            elif op < 0.8:
                log.close()
                log = SegmentedLog(tmp_path, max_segment_size=2500, cache_entries=7)
            else:
                lo = rng.randint(0, last + 2)
                hi = rng.randint(lo, last + 3)
                expect = [model[i] for i in range(max(lo, base[0] + 1), min(hi, last + 1))]
                assert log.entries(lo, hi) == expect
            assert log.last_index == (max(model) if model else base[0])
            assert log.base_index == base[0] and log.term(base[0]) == base[1]
        assert log.entries(0, log.last_index + 1) == [model[i] for i in sorted(model)]
    finally:
        log.close()

"""A durable, segmented Raft log.

Entries live in segment files inside one directory. The last segment is open for appends
(``<first>.open``); when the next batch would push it past ``max_segment_size`` it is closed
by renaming it ``<first>-<last>.seg``. A batch is written with one ``write`` and made durable
with one ``fdatasync`` before ``append`` returns. A small ``base`` file remembers the
(index, term) the log was compacted to, so ``term(snapshot_index)`` still answers.

Memory stays flat as the log grows: per segment only an array of record offsets and the
points where the term changes are kept; the last ``cache_entries`` entries are held as
objects and older ones are read back from disk with ``pread`` when asked for.

Crash safety, in short:
* an append that returned is on disk (fdatasync), and so is everything before it;
* truncating a conflicting suffix is made durable before the new entries are written, and
  segments are removed newest first, so a crash always leaves a prefix of some history;
* on open, damage confined to the last batch of the open segment (what a crash during an
  unacknowledged append leaves) is cut off with a warning; damage anywhere else raises
  ``CorruptLogError`` naming the file and offset, and a hole in the index ranges raises
  ``MissingSegmentError``. Acknowledged entries are never dropped silently.

Why one module: segments, their index, recovery and compaction share one on-disk layout and
one lock; the record encoding is apart (records.py).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import re
import struct
import zlib
from array import array
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from itertools import accumulate, islice
from types import TracebackType

from zraft.core.types import Entry

from .errors import (
    CorruptLogError,
    LogBrokenError,
    LogLockedError,
    MissingSegmentError,
    RecordError,
    StorageError,
    translate_os_error,
)
from .protocols import check_append_start
from .records import _KINDS, HEADER, HEADER_SIZE, decode_record, encode_batch, scan_record
from .syncs import fsync_dir

log = logging.getLogger(__name__)

_CLOSED_RE = re.compile(r"^(\d{20})-(\d{20})\.seg$")
_OPEN_RE = re.compile(r"^(\d{20})\.open$")
_BASE_NAME = "base"
_BASE_TMP = "base.tmp"
_LOCK_NAME = "LOCK"
_BASE = struct.Struct("<4sIQQ")  # magic, crc32 of (index, term), index, term
_BASE_MAGIC = b"ZRLB"
_READ_CHUNK = 1 << 20  # bytes read from disk at a time when serving a range
_MAX_READ_FDS = 16  # read descriptors kept open (least recently used are closed)


def _closed_name(first: int, last: int) -> str:
    return f"{first:020d}-{last:020d}.seg"


def _open_name(first: int) -> str:
    return f"{first:020d}.open"


class _Segment:
    """One segment file and its in-memory index."""

    __slots__ = ("path", "first", "offsets", "size", "term_starts", "term_values", "closed")

    def __init__(self, path: str, first: int, closed: bool) -> None:
        self.path = path
        self.first = first
        self.closed = closed
        self.offsets = array("Q")  # offsets[k]: file offset of entry first + k
        self.size = 0  # bytes of valid records; the file's length
        self.term_starts = array("Q")  # index at which each run of equal terms starts
        self.term_values = array("Q")

    @property
    def next_index(self) -> int:
        return self.first + len(self.offsets)

    @property
    def last(self) -> int:
        return self.first + len(self.offsets) - 1

    def add(self, index: int, term: int, offset: int) -> None:
        self.offsets.append(offset)
        if not self.term_values or self.term_values[-1] != term:
            self.term_starts.append(index)
            self.term_values.append(term)

    def extend(self, entries: Sequence[Entry], sizes: list[int]) -> None:
        """Index a batch just written at the end of the file."""
        self.offsets.extend(accumulate(sizes[:-1], initial=self.size))
        self.size += sum(sizes)
        starts, values = self.term_starts, self.term_values
        last = values[-1] if values else -1
        for entry in entries:
            if entry.term != last:
                last = entry.term
                starts.append(entry.index)
                values.append(last)

    def term(self, index: int) -> int:
        return self.term_values[bisect_right(self.term_starts, index) - 1]

    def end_of(self, index: int) -> int:
        """File offset just past entry ``index``."""
        k = index - self.first + 1
        return self.offsets[k] if k < len(self.offsets) else self.size

    def cut(self, index: int) -> None:
        """Forget ``index`` and everything after it (the file is truncated by the caller)."""
        k = index - self.first
        self.size = self.offsets[k] if k < len(self.offsets) else self.size
        del self.offsets[k:]
        runs = bisect_right(self.term_starts, index - 1)
        del self.term_starts[runs:]
        del self.term_values[runs:]


class _SegmentRemover:
    """Removes compacted segment files on a thread of its own.

    Unlinking a full segment frees megabytes of extents and page cache: ~4 ms for 10 MiB
    here, which the log's owner (the peer's loop thread, which also answers heartbeats)
    must not spend. Only files the log no longer indexes come here, after the base that
    makes them garbage is durable; one that a crash leaves behind is removed on the next
    open.
    """

    def __init__(self, directory: str, fsync: bool) -> None:
        self._dir = directory
        self._fsync = fsync
        self._pool: ThreadPoolExecutor | None = None
        self._last: Future[None] | None = None

    def remove(self, paths: list[str]) -> None:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="zraft-log-remover")
        self._last = self._pool.submit(self._remove, paths)

    def wait(self) -> None:
        """Until every removal handed over so far is done."""
        if self._last is not None:
            self._last.result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _remove(self, paths: list[str]) -> None:
        try:
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if self._fsync:
                fsync_dir(self._dir)
        except OSError as exc:  # harmless: the next open removes what is left
            log.warning("removing compacted segments of %s: %s", self._dir, exc)


class SegmentedLog:
    """The entries after the latest snapshot, durable on disk.

    ``first_index`` is ``base_index + 1`` where the base is the (index, term) the log was
    last compacted or reset to (0, 0 for a new log). ``term(base_index)`` answers from the
    base; ``term`` and ``entry`` return None outside ``base_index .. last_index``.

    With ``fsync=False`` nothing is flushed to the disk; only for tests and benchmarks.
    With ``remove_in_background`` the files of compacted segments are removed on a helper
    thread (``wait_for_removals``), not in ``compact``.
    Not thread-safe: one owner (an actor) calls it.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_segment_size: int = 10 * 1024 * 1024,
        cache_entries: int = 4096,
        fsync: bool = True,
        remove_in_background: bool = False,
    ) -> None:
        if max_segment_size < HEADER_SIZE:
            raise ValueError(f"max_segment_size must be at least {HEADER_SIZE} bytes")
        if cache_entries < 0:
            raise ValueError("cache_entries must not be negative")
        self._dir = os.fspath(directory)
        self._max_segment_size = max_segment_size
        self._cache_size = cache_entries
        self._fsync = fsync
        self._base_index = 0
        self._base_term = 0
        self._last_index = 0
        self._segments: list[_Segment] = []
        self._firsts: list[int] = []  # segment first indexes, for bisect
        self._wfd: int | None = None  # write descriptor of the open (last) segment
        self._read_fds: OrderedDict[int, tuple[_Segment, int]] = OrderedDict()
        self._cache: deque[Entry] = deque(maxlen=cache_entries)  # entries up to last_index
        self._broken: str | None = None
        self._lock_fd: int | None = None
        self._closed = False
        self._remover = _SegmentRemover(self._dir, fsync) if remove_in_background else None
        try:
            self._lock()
            self._recover()
        except BaseException:
            self._release()
            raise

    # ------------------------------------------------------------------ queries

    @property
    def directory(self) -> str:
        return self._dir

    @property
    def base_index(self) -> int:
        """The index the log was compacted to (the latest snapshot's index), 0 if never."""
        return self._base_index

    @property
    def base_term(self) -> int:
        return self._base_term

    @property
    def first_index(self) -> int:
        return self._base_index + 1

    @property
    def last_index(self) -> int:
        return self._last_index

    @property
    def _cache_first(self) -> int:
        return self._last_index + 1 - len(self._cache)

    @property
    def last_term(self) -> int:
        term = self.term(self._last_index)
        assert term is not None
        return term

    def term(self, index: int) -> int | None:
        """The term of entry ``index``; None if it is compacted away or past the end."""
        if index == self._base_index:
            return self._base_term
        if index < self._base_index or index > self._last_index:
            return None
        if index >= self._cache_first:
            return self._cache[index - self._cache_first].term
        return self._segment_of(index).term(index)

    def entry(self, index: int) -> Entry | None:
        """Entry ``index``, or None if it is compacted away or past the end."""
        if index <= self._base_index or index > self._last_index:
            return None
        if index >= self._cache_first:
            return self._cache[index - self._cache_first]
        found = self.entries(index, index + 1)
        return found[0]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``lo .. hi-1``, clamped to what the log holds.

        With ``max_bytes`` the result stops before the total ``Entry.size()`` would exceed
        it, but holds at least one entry whenever any is in range.
        """
        self._check_usable()
        lo = max(lo, self.first_index)
        hi = min(hi, self._last_index + 1)
        out: list[Entry] = []
        total = 0
        index = lo
        while index < hi:
            if index >= self._cache_first:
                source: Iterator[Entry] = islice(
                    self._cache, index - self._cache_first, hi - self._cache_first
                )
                stop = hi
            else:
                segment = self._segment_of(index)
                stop = min(hi, segment.next_index, self._cache_first)
                budget = _READ_CHUNK if max_bytes is None else min(_READ_CHUNK, max_bytes + 1024)
                limit = segment.offsets[index - segment.first] + budget
                fits = segment.first + bisect_right(segment.offsets, limit) - 1
                stop = max(index + 1, min(stop, fits))
                source = iter(self._read(segment, index, stop))
            for entry in source:
                total += entry.size()
                if max_bytes is not None and out and total > max_bytes:
                    return out
                out.append(entry)
            index = stop
        return out

    # ------------------------------------------------------------------ updates

    def append(self, entries: Sequence[Entry]) -> None:
        """Append a batch durably; a suffix from ``entries[0].index`` on is replaced first.

        When this returns, every entry up to ``entries[-1].index`` is on disk.
        """
        self._check_usable()
        if not entries:
            return
        first = entries[0].index
        check_append_start(first, self._base_index, self._last_index)
        # Encoding also checks the batch is contiguous; done before truncating, so a bad
        # batch loses nothing.
        data, sizes = encode_batch(entries)
        if first <= self._last_index:
            self._truncate_from(first)
        segment = self._segments[-1] if self._segments else None
        if (
            segment is not None
            and not segment.closed
            and segment.offsets
            and segment.size + len(data) > self._max_segment_size
        ):
            self._close_open_segment()
        if self._wfd is None:
            self._start_segment(self._last_index + 1)
        self._write_batch(data, sizes, entries)

    def compact(self, upto_index: int, upto_term: int) -> None:
        """Forget entries up to ``upto_index``, which a snapshot at (index, term) now covers.

        Whole segments at or below the index are removed; a segment straddling it stays on
        disk but its older entries are no longer served. If the index is past the end of the
        log the log is reset instead. The new base is durable when this returns.
        """
        self._check_usable()
        if upto_index <= self._base_index:
            return
        if upto_index > self._last_index:
            self.reset(upto_index, upto_term)
            return
        have = self.term(upto_index)
        if have != upto_term:
            raise ValueError(
                f"cannot compact to index {upto_index} term {upto_term}: the log has term "
                f"{have} there (use reset or restore_to_snapshot)"
            )
        self._write_base(upto_index, upto_term)
        self._base_index, self._base_term = upto_index, upto_term
        while self._cache and self._cache_first <= upto_index:
            self._cache.popleft()
        removed = 0
        doomed: list[str] = []
        while self._segments and self._segments[0].last <= upto_index:
            segment = self._segments[0]
            if not segment.closed:
                if segment.next_index > upto_index + 1 or not segment.offsets:
                    break  # the open segment still holds (or will hold) live entries
                self._close_write_fd()
                # Now, not later: the next append starts another open segment, and a
                # restart must never find two.
                self._unlink_segment(segment, sync_dir=False)
            elif self._remover is not None:
                self._forget_read_fd(segment)
                doomed.append(segment.path)
            else:
                self._unlink_segment(segment, sync_dir=False)
            del self._segments[0]
            del self._firsts[0]
            removed += 1
        if doomed:
            assert self._remover is not None
            self._remover.remove(doomed)
        if removed > len(doomed):
            self._sync_dir_or_raise()
        if removed:
            log.info(
                "compacted log %s to index %d: removed %d segment(s)",
                self._dir,
                upto_index,
                removed,
            )

    def frees_segment(self, upto_index: int) -> bool:
        """Whether ``compact(upto_index, ...)`` would remove a closed segment."""
        return (
            bool(self._segments)
            and self._segments[0].closed
            and self._segments[0].last <= upto_index
        )

    def wait_for_removals(self) -> None:
        """Until the files of every segment compacted so far are gone (with
        ``remove_in_background``; otherwise ``compact`` removed them itself)."""
        if self._remover is not None:
            self._remover.wait()

    def reset(self, base_index: int, base_term: int) -> None:
        """Drop every entry and restart the log after (base_index, base_term).

        Used when an installed snapshot is past (or conflicts with) the log. Segments go
        newest first and the base is written last, so a crash in between leaves a shorter
        log with the old base: call ``restore_to_snapshot`` again on start.
        """
        self._check_usable()
        if base_index < 0 or base_term < 0:
            raise ValueError("base index and term must not be negative")
        while self._segments:
            segment = self._segments[-1]
            if not segment.closed:
                self._close_write_fd()
            self._unlink_segment(segment, sync_dir=True)
            self._segments.pop()
            self._firsts.pop()
            self._set_last(segment.first - 1)
        self._cache.clear()
        self._write_base(base_index, base_term)
        self._base_index, self._base_term = base_index, base_term
        self._last_index = base_index
        self._start_segment(base_index + 1)
        log.info("reset log %s to base index %d term %d", self._dir, base_index, base_term)

    def restore_to_snapshot(self, index: int, term: int) -> None:
        """Make the log consistent with a snapshot at (index, term).

        If the log holds that entry with that term, entries after it are kept (Raft keeps
        the suffix); otherwise everything is dropped. Safe to call again after a crash.
        """
        if index < self._base_index:
            raise ValueError(f"snapshot at {index} is older than the log's base {self._base_index}")
        if self.term(index) == term:
            self.compact(index, term)
        else:
            self.reset(index, term)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> SegmentedLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"SegmentedLog({self._dir!r}, first={self.first_index}, last={self._last_index}, "
            f"segments={len(self._segments)})"
        )

    # ------------------------------------------------------------------ writing

    def _write_batch(self, data: bytes, sizes: list[int], entries: Sequence[Entry]) -> None:
        segment = self._segments[-1]
        fd = self._wfd
        assert fd is not None and not segment.closed
        before = segment.size
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                if written <= 0:
                    raise OSError(errno.ENOSPC, "write wrote nothing")
                view = view[written:]
            if self._fsync:
                os.fdatasync(fd)
        except OSError as exc:
            self._roll_back(segment, before, exc)
            raise translate_os_error(exc, segment.path, "append to") from exc
        segment.extend(entries, sizes)
        self._last_index = entries[-1].index
        self._cache.extend(entries)  # the deque's maxlen drops the oldest

    def _roll_back(self, segment: _Segment, size: int, cause: OSError) -> None:
        """Undo a failed append: cut the file back to what was durable before it."""
        assert self._wfd is not None
        try:
            os.ftruncate(self._wfd, size)
        except OSError as exc:
            self._broken = (
                f"an append to {segment.path} failed ({cause}) and cutting the file back to "
                f"{size} bytes failed too ({exc}); reopen the log"
            )
            log.error("%s", self._broken)
            return
        # Syncing the cut is best effort: if it does not reach the disk, a crash can leave
        # some records of the failed batch behind, which is harmless (they were valid entries,
        # merely unacknowledged). The next successful append syncs the cut anyway.
        if self._fsync:
            try:
                os.fdatasync(self._wfd)
            except OSError as exc:
                log.warning("could not sync the cut of %s: %s", segment.path, exc)
        log.warning(
            "append to %s failed (%s); file cut back to %d bytes", segment.path, cause, size
        )

    def _truncate_from(self, index: int) -> None:
        """Durably remove ``index`` and everything after it (index > base_index)."""
        # Whole segments after the one holding ``index`` go first, newest first.
        while self._segments and self._segments[-1].first > index:
            segment = self._segments[-1]
            if not segment.closed:
                self._close_write_fd()
            self._unlink_segment(segment, sync_dir=True)
            self._segments.pop()
            self._firsts.pop()
            self._set_last(segment.first - 1)
        segment = self._segments[-1]
        if segment.closed:  # reopen it: it must not look closed while its size changes
            path = os.path.join(self._dir, _open_name(segment.first))
            try:
                os.rename(segment.path, path)
            except OSError as exc:
                raise translate_os_error(exc, segment.path, "reopen for truncation") from exc
            segment.path, segment.closed = path, False
            self._open_write_fd(segment)
            self._sync_dir_or_raise()
        assert self._wfd is not None
        keep = segment.offsets[index - segment.first]
        try:
            os.ftruncate(self._wfd, keep)
            if self._fsync:
                os.fdatasync(self._wfd)
        except OSError as exc:
            self._broken = f"truncating {segment.path} to {keep} bytes failed ({exc}); reopen"
            raise translate_os_error(exc, segment.path, "truncate") from exc
        log.info("truncated log %s from index %d (was last %d)", self._dir, index, self._last_index)
        segment.cut(index)
        self._set_last(index - 1)

    def _set_last(self, last: int) -> None:
        """Lower ``last_index``, dropping cached entries past it."""
        for _ in range(min(len(self._cache), self._last_index - last)):
            self._cache.pop()
        self._last_index = last

    def _close_open_segment(self) -> None:
        segment = self._segments[-1]
        path = os.path.join(self._dir, _closed_name(segment.first, segment.last))
        try:
            os.rename(segment.path, path)
        except OSError as exc:
            raise translate_os_error(exc, segment.path, "close segment") from exc
        segment.path, segment.closed = path, True
        self._close_write_fd()
        self._sync_dir_or_raise()

    def _start_segment(self, first: int) -> None:
        path = os.path.join(self._dir, _open_name(first))
        segment = _Segment(path, first, closed=False)
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise translate_os_error(exc, path, "create segment") from exc
        self._wfd = fd
        self._segments.append(segment)
        self._firsts.append(first)
        self._sync_dir_or_raise()

    def _open_write_fd(self, segment: _Segment) -> None:
        try:
            self._wfd = os.open(segment.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:
            raise translate_os_error(exc, segment.path, "open for writing") from exc

    def _close_write_fd(self) -> None:
        if self._wfd is not None:
            os.close(self._wfd)
            self._wfd = None

    def _unlink_segment(self, segment: _Segment, sync_dir: bool) -> None:
        self._forget_read_fd(segment)
        try:
            os.unlink(segment.path)
            if sync_dir:
                self._sync_dir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise translate_os_error(exc, segment.path, "remove") from exc

    def _write_base(self, index: int, term: int) -> None:
        body = struct.pack("<QQ", index, term)
        data = _BASE.pack(_BASE_MAGIC, zlib.crc32(body), index, term)
        tmp = os.path.join(self._dir, _BASE_TMP)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                os.write(fd, data)
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, os.path.join(self._dir, _BASE_NAME))
            self._sync_dir()
        except OSError as exc:
            raise translate_os_error(exc, tmp, "write log base") from exc

    def _sync_dir_or_raise(self) -> None:
        try:
            self._sync_dir()
        except OSError as exc:
            raise translate_os_error(exc, self._dir, "sync directory") from exc

    def _sync_dir(self) -> None:
        if self._fsync:
            fsync_dir(self._dir)

    # ------------------------------------------------------------------ reading

    def _segment_of(self, index: int) -> _Segment:
        return self._segments[bisect_right(self._firsts, index) - 1]

    def _read(self, segment: _Segment, lo: int, hi: int) -> list[Entry]:
        """Entries ``lo .. hi-1`` of one segment, from disk."""
        start = segment.offsets[lo - segment.first]
        end = segment.end_of(hi - 1)
        fd = self._read_fd(segment)
        try:
            buf = os.pread(fd, end - start, start)
        except OSError as exc:
            raise translate_os_error(exc, segment.path, "read") from exc
        if len(buf) != end - start:
            raise CorruptLogError(segment.path, start + len(buf), "file is shorter than indexed")
        out: list[Entry] = []
        offset = 0
        for index in range(lo, hi):
            try:
                entry, offset = decode_record(buf, offset)
            except RecordError as exc:
                raise CorruptLogError(segment.path, start + exc.offset, exc.reason) from None
            if entry.index != index:
                raise CorruptLogError(
                    segment.path, start + offset, f"holds index {entry.index}, expected {index}"
                )
            out.append(entry)
        return out

    def _read_fd(self, segment: _Segment) -> int:
        key = id(segment)
        held = self._read_fds.get(key)
        if held is not None and held[0] is segment:
            self._read_fds.move_to_end(key)
            return held[1]
        try:
            fd = os.open(segment.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise translate_os_error(exc, segment.path, "open for reading") from exc
        self._read_fds[key] = (segment, fd)
        while len(self._read_fds) > _MAX_READ_FDS:
            _, (_, old) = self._read_fds.popitem(last=False)
            os.close(old)
        return fd

    def _forget_read_fd(self, segment: _Segment) -> None:
        held = self._read_fds.pop(id(segment), None)
        if held is not None:
            os.close(held[1])

    # ------------------------------------------------------------------ open / recovery

    def _lock(self) -> None:
        try:
            os.makedirs(self._dir, exist_ok=True)
            self._lock_fd = os.open(
                os.path.join(self._dir, _LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644
            )
        except OSError as exc:
            raise translate_os_error(exc, self._dir, "open log directory") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogLockedError(self._dir) from None

    def _release(self) -> None:
        if self._remover is not None:  # before the lock goes: the files are still ours
            self._remover.close()
        self._close_write_fd()
        while self._read_fds:
            _, (_, fd) = self._read_fds.popitem()
            os.close(fd)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"log {self._dir} is closed")
        if self._broken is not None:
            raise LogBrokenError(self._broken)

    def _read_base(self) -> tuple[int, int]:
        path = os.path.join(self._dir, _BASE_NAME)
        try:
            with open(path, "rb") as f:
                data = f.read(_BASE.size + 1)
        except FileNotFoundError:
            return 0, 0
        if len(data) != _BASE.size:
            raise CorruptLogError(path, 0, f"base file has {len(data)} bytes, not {_BASE.size}")
        magic, crc, index, term = _BASE.unpack(data)
        if magic != _BASE_MAGIC or zlib.crc32(struct.pack("<QQ", index, term)) != crc:
            raise CorruptLogError(path, 0, "base file fails its magic or checksum")
        return index, term

    def _recover(self) -> None:
        try:
            names = os.listdir(self._dir)
        except OSError as exc:
            raise translate_os_error(exc, self._dir, "list") from exc
        if _BASE_TMP in names:  # an interrupted base update; the old base file still rules
            self._remove_file(os.path.join(self._dir, _BASE_TMP))
        self._base_index, self._base_term = self._read_base()
        base = self._base_index
        closed: list[tuple[int, int, str]] = []
        opened: list[tuple[int, str]] = []
        for name in names:
            if match := _CLOSED_RE.match(name):
                first, last = int(match[1]), int(match[2])
                if last < first:
                    raise CorruptLogError(os.path.join(self._dir, name), 0, "last < first")
                closed.append((first, last, name))
            elif match := _OPEN_RE.match(name):
                opened.append((int(match[1]), name))
        if len(opened) > 1:
            raise CorruptLogError(self._dir, 0, f"several open segments: {sorted(opened)}")
        closed.sort()
        for _first, last, name in closed:
            if last <= base:  # left over from a compaction interrupted by a crash
                log.info("removing compacted segment %s (base index %d)", name, base)
                self._remove_file(os.path.join(self._dir, name))
        expected = base + 1
        chained = False
        for first, last, name in (c for c in closed if c[1] > base):
            path = os.path.join(self._dir, name)
            self._check_chain(path, first, expected, chained)
            segment = self._load_closed(path, first, last)
            self._segments.append(segment)
            self._firsts.append(first)
            expected, chained = last + 1, True
        if opened:
            first, name = opened[0]
            path = os.path.join(self._dir, name)
            self._check_chain(path, first, expected, chained)
            segment = self._load_open(path, first)
            if segment.next_index <= base + 1 and first <= base:
                log.info("removing compacted open segment %s (base index %d)", name, base)
                self._remove_file(path)
            else:
                self._segments.append(segment)
                self._firsts.append(first)
                self._open_write_fd(segment)
                expected = segment.next_index
        self._last_index = max(expected - 1, base)
        if self._wfd is None:
            self._start_segment(self._last_index + 1)
        log.debug(
            "opened log %s: base %d, last %d, %d segment(s)",
            self._dir,
            base,
            self._last_index,
            len(self._segments),
        )

    def _check_chain(self, path: str, first: int, expected: int, chained: bool) -> None:
        if first == expected or (not chained and first < expected):
            return
        if first > expected:
            raise MissingSegmentError(
                path, 0, f"missing segment: entries {expected}..{first - 1} are in no file"
            )
        raise CorruptLogError(
            path, 0, f"segment starts at {first}, overlapping index {expected - 1}"
        )

    def _remove_file(self, path: str) -> None:
        try:
            os.unlink(path)
        except OSError as exc:
            raise translate_os_error(exc, path, "remove") from exc

    @contextmanager
    def _mapped(self, path: str) -> Iterator[bytes | mmap.mmap]:
        """A segment file's bytes, memory-mapped: scanning a large log on open neither
        copies whole segments onto the heap nor leaves the heap fragmented afterwards."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise translate_os_error(exc, path, "read") from exc
        try:
            size = os.fstat(fd).st_size
            if size == 0:
                yield b""
                return
            with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mapped:
                yield mapped
        finally:
            os.close(fd)

    def _load_closed(self, path: str, first: int, last: int) -> _Segment:
        """Index a closed segment; any flaw is corruption (it was fully synced when closed)."""
        segment = _Segment(path, first, closed=True)
        offset = 0
        index = first
        with self._mapped(path) as buf:
            while offset < len(buf):
                try:
                    header = scan_record(buf, offset)
                except RecordError as exc:
                    raise CorruptLogError(path, offset, exc.reason) from None
                if header.index != index or index > last:
                    raise CorruptLogError(
                        path, offset, f"holds index {header.index}, expected {index}"
                    )
                segment.add(index, header.term, offset)
                offset = header.end
                index += 1
        if index != last + 1:
            raise CorruptLogError(
                path, offset, f"closed segment ends at index {index - 1}, its name says {last}"
            )
        segment.size = offset
        return segment

    def _load_open(self, path: str, first: int) -> _Segment:
        """Index the open segment, cutting off a batch that a crash left half written."""
        segment = _Segment(path, first, closed=False)
        offset = 0
        index = first
        reason = ""
        with self._mapped(path) as buf:
            while offset < len(buf):
                try:
                    header = scan_record(buf, offset)
                except RecordError as exc:
                    reason = exc.reason
                    break
                if header.index != index:
                    raise CorruptLogError(
                        path, offset, f"holds index {header.index}, expected {index}"
                    )
                segment.add(index, header.term, offset)
                offset = header.end
                index += 1
            file_size = len(buf)
            later = _later_batch(buf, offset + 1, index) if offset < file_size else None
        segment.size = offset
        if offset == file_size:
            return segment
        if later is not None:
            raise CorruptLogError(
                path,
                offset,
                f"{reason}; a later batch follows at offset {later}, so this "
                "damage is not a torn write and acknowledged entries would be lost",
            )
        log.warning(
            "log segment %s: cutting %d bytes at offset %d, from index %d on: the last batch "
            "is damaged as a crash during its append leaves it: %s",
            path,
            file_size - offset,
            offset,
            index,
            reason,
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.ftruncate(fd, offset)
                if self._fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise translate_os_error(exc, path, "cut the torn tail of") from exc
        return segment


def _later_batch(buf: bytes | mmap.mmap, start: int, expected: int) -> int | None:
    """Offset of a valid record at or after ``start`` from a batch starting after ``expected``.

    ``expected`` is the index of the damaged record. Valid records of *its* batch may follow
    it (pages of one write reach the disk in any order), but a record of a later batch
    proves the damaged batch had been acknowledged. Scans byte by byte: only on damage.
    """
    size = len(buf)
    highest = expected + (size - start) // HEADER_SIZE + 1
    offset = start
    while offset <= size - HEADER_SIZE:
        _, length, index, _, kind, batch_pos = HEADER.unpack_from(buf, offset)
        if (
            expected <= index <= highest
            and kind in _KINDS
            and batch_pos < index
            and offset + HEADER_SIZE + length <= size
        ):
            try:
                header = scan_record(buf, offset)
            except RecordError:
                offset += 1
                continue
            if header.index - header.batch_pos > expected:
                return offset
            offset = header.end
            continue
        offset += 1
    return None

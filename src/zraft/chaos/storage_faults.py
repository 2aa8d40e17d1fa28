"""A failing disk, as wrappers around the storage protocols (``zraft.storage.protocols``).

The fault suite (``python -m zraft.chaos.faulty_peer``) and tests put these around a
peer's real or in-memory stores; the stores themselves hold no fault code. One
``DiskFaults`` is shared by the wrappers of one peer, as one disk is: it counts the
durable writes (log appends, compactions and resets, hard-state saves, snapshots made or
installed) and, after ``after`` of them succeeded, fails every later one in its way:

* ``FAILING_SYNC``: EIO, as an fdatasync of a dying disk reports it; nothing of the failed
  write is acknowledged (the real log cuts the batch back the same way);
* ``NO_SPACE``: ENOSPC (``StorageFullError``), nothing written;
* ``TORN_WRITE``: the process dies in the middle of the write: a log append leaves a prefix
  of its batch durable, a hard-state save or a snapshot leaves the previous one (they are
  atomic on disk), and every later call fails until the stores are opened again.

Reads are not faulted: a disk that fails its syncs still returns what it holds.
"""

from __future__ import annotations

import enum
import errno
import logging
import random
import threading
from collections.abc import Callable, Sequence
from typing import Any

from zraft.core import Configuration, Entry, HardState, SnapshotMeta
from zraft.storage import StorageError
from zraft.storage.errors import translate_os_error
from zraft.storage.protocols import (
    HardStateStorage,
    LatestSnapshot,
    LogStorage,
    SnapshotStorage,
)

log = logging.getLogger(__name__)

# In the message a failing peer logs when it stops; the fsync nemesis counts it.
INJECTED_FSYNC_FAILURE = "injected fsync failure"


class FaultKind(enum.Enum):
    FAILING_SYNC = "failing-sync"
    NO_SPACE = "no-space"
    TORN_WRITE = "torn-write"


class DiskFaults:
    """When the disk under one peer's stores fails, and how (see the module docstring).

    ``rng`` chooses how much of a torn append survives (half the batch without one).
    """

    def __init__(self, kind: FaultKind, after: int, rng: random.Random | None = None) -> None:
        if after < 0:
            raise ValueError("after must not be negative")
        self.kind = kind
        self.after = after
        self.rng = rng
        self.writes = 0  # durable writes that succeeded
        self.fired = 0  # writes failed on purpose
        self.torn = False  # a torn write happened: the process is as good as dead
        # A peer writes snapshots on a worker thread while its log actor appends.
        self._lock = threading.Lock()

    def admit(self, action: str, where: str) -> bool:
        """Called before a durable write. Returns False to let it through; True if it is
        to be torn (the caller writes a part, then calls ``tear``); raises the fault."""
        with self._lock:
            return self._admit(action, where)

    def _admit(self, action: str, where: str) -> bool:
        if self.torn:
            raise StorageError(
                f"cannot {action} {where}: the process died in a torn write (injected); "
                "open the stores again"
            )
        if self.writes < self.after:
            self.writes += 1
            return False
        self.fired += 1
        if self.kind is FaultKind.TORN_WRITE:
            self.torn = True  # now: no other thread's write may get through after this one
            return True
        if self.kind is FaultKind.NO_SPACE:
            cause = OSError(errno.ENOSPC, "injected: no space left on device")
        else:
            cause = OSError(errno.EIO, INJECTED_FSYNC_FAILURE)
        log.warning("injecting %s into %s %s", self.kind.value, action, where)
        raise translate_os_error(cause, where, action) from cause

    def tear(self, action: str, where: str) -> StorageError:
        """The error a torn write raises (every write after it fails already)."""
        log.warning("injecting a torn write into %s %s", action, where)
        cause = OSError(errno.EIO, "injected torn write: the process died mid-write")
        error = translate_os_error(cause, where, action)
        error.__cause__ = cause
        return error

    def torn_prefix(self, size: int) -> int:
        """How many entries of a batch of ``size`` a torn append leaves (fewer than all)."""
        if self.rng is None:
            return size // 2
        return self.rng.randrange(size)


class FaultyLog:
    """``LogStorage`` whose writes go through ``faults`` first."""

    def __init__(self, inner: LogStorage, faults: DiskFaults, where: str = "the log") -> None:
        self.inner = inner
        self.faults = faults
        self.where = where

    @property
    def base_index(self) -> int:
        return self.inner.base_index

    @property
    def base_term(self) -> int:
        return self.inner.base_term

    @property
    def first_index(self) -> int:
        return self.inner.first_index

    @property
    def last_index(self) -> int:
        return self.inner.last_index

    @property
    def last_term(self) -> int:
        return self.inner.last_term

    def term(self, index: int) -> int | None:
        return self.inner.term(index)

    def entry(self, index: int) -> Entry | None:
        return self.inner.entry(index)

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        return self.inner.entries(lo, hi, max_bytes)

    def append(self, entries: Sequence[Entry]) -> None:
        if not entries:
            return
        if self.faults.admit("append to", self.where):
            kept = self.faults.torn_prefix(len(entries))
            if kept:
                self.inner.append(entries[:kept])
            raise self.faults.tear("append to", self.where)
        self.inner.append(entries)

    def compact(self, upto_index: int, upto_term: int) -> None:
        self._write("compact", lambda: self.inner.compact(upto_index, upto_term))

    def frees_segment(self, upto_index: int) -> bool:
        return self.inner.frees_segment(upto_index)

    def wait_for_removals(self) -> None:
        self.inner.wait_for_removals()

    def reset(self, base_index: int, base_term: int) -> None:
        self._write("reset", lambda: self.inner.reset(base_index, base_term))

    def restore_to_snapshot(self, index: int, term: int) -> None:
        self._write("restore", lambda: self.inner.restore_to_snapshot(index, term))

    def close(self) -> None:
        self.inner.close()

    def _write(self, action: str, write: Callable[[], None]) -> None:
        # Compactions and resets write their base last, atomically: torn, they did nothing.
        if self.faults.admit(action, self.where):
            raise self.faults.tear(action, self.where)
        write()


class FaultyHardState:
    """``HardStateStorage`` whose saves go through ``faults`` first."""

    def __init__(
        self, inner: HardStateStorage, faults: DiskFaults, where: str = "the hard state"
    ) -> None:
        self.inner = inner
        self.faults = faults
        self.where = where

    def load(self) -> tuple[HardState, Configuration | None]:
        return self.inner.load()

    def save(self, hard_state: HardState, config: Configuration | None = None) -> None:
        if self.faults.admit("save hard state to", self.where):
            raise self.faults.tear("save hard state to", self.where)  # the old copy rules
        self.inner.save(hard_state, config)


class FaultySnapshots:
    """``SnapshotStorage`` whose snapshots are made and installed through ``faults``."""

    def __init__(
        self, inner: SnapshotStorage, faults: DiskFaults, where: str = "the snapshots"
    ) -> None:
        self.inner = inner
        self.faults = faults
        self.where = where

    def latest(self) -> LatestSnapshot | None:
        return self.inner.latest()

    def verify(self, path: str) -> None:
        self.inner.verify(path)

    def list_files(self, path: str) -> list[tuple[str, int]]:
        return self.inner.list_files(path)

    def create(
        self,
        meta: SnapshotMeta,
        writer: Callable[[str], None],
        extra: dict[str, Any] | None = None,
    ) -> str:
        if self.faults.admit("write snapshot into", self.where):
            raise self.faults.tear("write snapshot into", self.where)  # published atomically
        return self.inner.create(meta, writer, extra)

    def begin_install(self) -> str:
        return self.inner.begin_install()

    def finish_install(self, tmpdir: str) -> LatestSnapshot:
        try:
            torn = self.faults.admit("install snapshot from", self.where)
        except StorageError:
            self.inner.abort_install(tmpdir)  # as the real store discards a failed install
            raise
        if torn:
            self.inner.abort_install(tmpdir)
            raise self.faults.tear("install snapshot from", self.where)
        return self.inner.finish_install(tmpdir)

    def abort_install(self, tmpdir: str) -> None:
        self.inner.abort_install(tmpdir)

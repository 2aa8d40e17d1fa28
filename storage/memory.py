"""In-memory twins of the log, the hard state and the snapshot store (hashicorp/raft's
``InmemStore``), for the simulation and for tests that need no disk.

What is durable lives in a ``MemoryVolume``: the stores opened over it are the process,
the volume is the disk. A simulated crash drops the store objects (``MemoryVolume.crash``
releases the log's lock as the kernel does for a dead process) and new stores opened over
the same volume see exactly what the real stores would recover from files: every call
that returned, nothing of a call that raised. The contract suite
(tests/storage/test_storage_contracts.py) holds the twins and the real stores to the same tests.

Snapshots are directories to their callers (backends write files, the stream sends them),
so ``MemorySnapshotStore`` keeps the published snapshots' bytes in the volume and lays each
one out in a scratch directory when it is asked for a path.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from zraft.core.types import Configuration, Entry, HardState, SnapshotMeta

from .errors import CorruptSnapshotError, LogLockedError, StorageError, translate_os_error
from .protocols import LatestSnapshot, check_append_start
from .snapshots import (
    META_NAME,
    check_files,
    data_files,
    encode_meta,
    read_meta,
    snapshot_dir_name,
    snapshot_files,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _StoredSnapshot:
    meta: SnapshotMeta
    extra: dict[str, Any]
    files: dict[str, bytes]  # relative path -> contents, the meta file included


@dataclass
class MemoryVolume:
    """What survives a crash of the stores opened over it."""

    name: str = "memory"
    log_base: tuple[int, int] = (0, 0)
    log_entries: list[Entry] = field(default_factory=list)  # base_index + 1 onwards
    hard_state: HardState = field(default_factory=HardState)
    config: Configuration | None = None
    snapshot: _StoredSnapshot | None = None
    log_open: bool = False  # the lock a running log holds

    def crash(self) -> None:
        """The owning process died: its log's lock goes with it."""
        self.log_open = False


class MemoryLog:
    """``LogStorage`` over a ``MemoryVolume``: the entries are the volume's list."""

    def __init__(self, volume: MemoryVolume) -> None:
        if volume.log_open:
            raise LogLockedError(volume.name)
        volume.log_open = True
        self._volume = volume
        self._closed = False

    @property
    def base_index(self) -> int:
        return self._volume.log_base[0]

    @property
    def base_term(self) -> int:
        return self._volume.log_base[1]

    @property
    def first_index(self) -> int:
        return self._volume.log_base[0] + 1

    @property
    def last_index(self) -> int:
        return self._volume.log_base[0] + len(self._volume.log_entries)

    @property
    def last_term(self) -> int:
        entries = self._volume.log_entries
        return entries[-1].term if entries else self._volume.log_base[1]

    def term(self, index: int) -> int | None:
        base_index, base_term = self._volume.log_base
        if index == base_index:
            return base_term
        found = self.entry(index)
        return None if found is None else found.term

    def entry(self, index: int) -> Entry | None:
        offset = index - self.first_index
        if offset < 0 or offset >= len(self._volume.log_entries):
            return None
        return self._volume.log_entries[offset]

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        self._check_usable()
        first = self.first_index
        chosen = self._volume.log_entries[max(lo, first) - first : max(0, hi - first)]
        if max_bytes is None:
            return chosen
        out: list[Entry] = []
        total = 0
        for entry in chosen:
            total += entry.size()
            if out and total > max_bytes:
                break
            out.append(entry)
        return out

    def append(self, entries: Sequence[Entry]) -> None:
        self._check_usable()
        if not entries:
            return
        first = entries[0].index
        check_append_start(first, self.base_index, self.last_index)
        for pos, entry in enumerate(entries):  # checked before anything is replaced
            if entry.index != first + pos:
                raise ValueError(
                    f"batch indexes are not contiguous: entry {pos} has index {entry.index}, "
                    f"expected {first + pos}"
                )
        stored = self._volume.log_entries
        del stored[first - self.first_index :]
        stored.extend(entries)

    def compact(self, upto_index: int, upto_term: int) -> None:
        self._check_usable()
        if upto_index <= self.base_index:
            return
        if upto_index > self.last_index:
            self.reset(upto_index, upto_term)
            return
        have = self.term(upto_index)
        if have != upto_term:
            raise ValueError(
                f"cannot compact to index {upto_index} term {upto_term}: the log has term "
                f"{have} there (use reset or restore_to_snapshot)"
            )
        del self._volume.log_entries[: upto_index - self.base_index]
        self._volume.log_base = (upto_index, upto_term)

    def frees_segment(self, upto_index: int) -> bool:
        # Memory is freed by any compaction, and a compaction costs no sync here.
        return upto_index > self.base_index

    def wait_for_removals(self) -> None:
        """Nothing to wait for: compactions free memory at once."""

    def reset(self, base_index: int, base_term: int) -> None:
        self._check_usable()
        if base_index < 0 or base_term < 0:
            raise ValueError("base index and term must not be negative")
        self._volume.log_entries = []
        self._volume.log_base = (base_index, base_term)

    def restore_to_snapshot(self, index: int, term: int) -> None:
        if index < self.base_index:
            raise ValueError(f"snapshot at {index} is older than the log's base {self.base_index}")
        if self.term(index) == term:
            self.compact(index, term)
        else:
            self.reset(index, term)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._volume.log_open = False

    def _check_usable(self) -> None:
        if self._closed:
            raise StorageError(f"log {self._volume.name} is closed")

    def __repr__(self) -> str:
        return f"MemoryLog({self._volume.name!r}, first={self.first_index}, last={self.last_index})"


class MemoryHardState:
    """``HardStateStorage`` over a ``MemoryVolume``."""

    def __init__(self, volume: MemoryVolume) -> None:
        self._volume = volume

    def load(self) -> tuple[HardState, Configuration | None]:
        return self._volume.hard_state, self._volume.config

    def save(self, hard_state: HardState, config: Configuration | None = None) -> None:
        self._volume.hard_state, self._volume.config = hard_state, config


class MemorySnapshotStore:
    """``SnapshotStorage`` over a ``MemoryVolume``; ``scratch`` is a directory of its own
    where snapshots are laid out as files for the callers and received into."""

    def __init__(self, volume: MemoryVolume, scratch: str | os.PathLike[str]) -> None:
        self._volume = volume
        self._scratch = os.path.abspath(scratch)
        os.makedirs(self._scratch, exist_ok=True)
        self._active: set[str] = set()  # temp dirs being filled right now
        self._laid_out: dict[tuple[int, int], str] = {}  # by this store, since it opened

    def latest(self) -> LatestSnapshot | None:
        self._remove_stale_temps()
        stored = self._volume.snapshot
        if stored is None:
            return None
        return stored.meta, self._lay_out(stored), dict(stored.extra)

    def verify(self, path: str) -> None:
        _, _, files = read_meta(path)
        check_files(path, files, with_crc=True)

    def list_files(self, path: str) -> list[tuple[str, int]]:
        return snapshot_files(path)

    def create(
        self,
        meta: SnapshotMeta,
        writer: Callable[[str], None],
        extra: dict[str, Any] | None = None,
    ) -> str:
        tmp = self._make_temp("tmp-create-")
        try:
            writer(tmp)
            files = {rel: _read(tmp, rel) for rel in data_files(tmp)}
            listed = {rel: [len(data), zlib.crc32(data)] for rel, data in files.items()}
            files[META_NAME] = encode_meta(meta, dict(extra or {}), listed)
            return self._publish(_StoredSnapshot(meta, dict(extra or {}), files))
        except OSError as exc:  # as the real store reports it
            raise translate_os_error(exc, tmp, "write snapshot into") from exc
        finally:
            self._discard(tmp)

    def begin_install(self) -> str:
        return self._make_temp("tmp-install-")

    def finish_install(self, tmpdir: str) -> LatestSnapshot:
        tmpdir = os.path.abspath(tmpdir)
        if tmpdir not in self._active:
            raise ValueError(f"{tmpdir} was not returned by begin_install")
        try:
            meta, extra, listed = read_meta(tmpdir)
            check_files(tmpdir, listed, with_crc=True)
            present = data_files(tmpdir)
            unexpected = sorted(set(present) - set(listed))
            if unexpected:
                raise CorruptSnapshotError(f"received snapshot has unlisted files {unexpected}")
            current = self._volume.snapshot
            if current is not None and current.meta.index > meta.index:
                raise ValueError(
                    f"snapshot at index {meta.index} is older than the current one at "
                    f"{current.meta.index}"
                )
            files = {rel: _read(tmpdir, rel) for rel in [*present, META_NAME]}
            path = self._publish(_StoredSnapshot(meta, extra, files))
        except OSError as exc:
            raise translate_os_error(exc, tmpdir, "install snapshot from") from exc
        finally:
            self._discard(tmpdir)
        return meta, path, extra

    def abort_install(self, tmpdir: str) -> None:
        self._discard(os.path.abspath(tmpdir))

    def _publish(self, snapshot: _StoredSnapshot) -> str:
        current = self._volume.snapshot
        if current is not None and current.meta.index > snapshot.meta.index:
            raise ValueError(
                f"snapshot at index {snapshot.meta.index} is older than the latest at "
                f"{current.meta.index}"
            )
        key = (snapshot.meta.index, snapshot.meta.term)
        if current is not None and (current.meta.index, current.meta.term) == key:
            # Same index and term means the same state (the state machine is deterministic).
            log.info("snapshot %s already exists; discarding the new copy", key)
        else:
            self._volume.snapshot = snapshot  # the one durable step: older ones are retired
        for old_key in [k for k in self._laid_out if k != key]:
            shutil.rmtree(self._laid_out.pop(old_key), ignore_errors=True)
        stored = self._volume.snapshot
        assert stored is not None
        return self._lay_out(stored)

    def _lay_out(self, snapshot: _StoredSnapshot) -> str:
        key = (snapshot.meta.index, snapshot.meta.term)
        path = self._laid_out.get(key)
        if path is not None:
            return path
        path = os.path.join(self._scratch, snapshot_dir_name(*key))
        shutil.rmtree(path, ignore_errors=True)  # left by a store open before a crash
        for rel, data in snapshot.files.items():
            target = os.path.join(path, *rel.split("/"))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target, "wb") as f:
                f.write(data)
        self._laid_out[key] = path
        return path

    def _make_temp(self, prefix: str) -> str:
        tmp = os.path.abspath(tempfile.mkdtemp(prefix=prefix, dir=self._scratch))
        self._active.add(tmp)
        return tmp

    def _discard(self, tmp: str) -> None:
        self._active.discard(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    def _remove_stale_temps(self) -> None:
        for name in os.listdir(self._scratch):
            path = os.path.join(self._scratch, name)
            if name.startswith("tmp-") and path not in self._active:
                shutil.rmtree(path, ignore_errors=True)


def _read(root: str, rel: str) -> bytes:
    with open(os.path.join(root, *rel.split("/")), "rb") as f:
        return f.read()

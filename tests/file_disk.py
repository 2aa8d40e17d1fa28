"""A simulation disk backed by the real storage classes, reopened from files on restart."""

from __future__ import annotations

from pathlib import Path

import msgpack

from zraft.core import Configuration, Entry, EntryKind, Ready, SnapshotMeta
from zraft.sim import Disk
from zraft.storage import HardStateFile, SegmentedLog, SnapshotStore

_STATE_FILE = "state"


def _encode_state(entries: tuple[Entry, ...]) -> bytes:
    rows = []
    for e in entries:
        data = e.data.to_wire() if e.kind is EntryKind.CONFIG else e.data
        rows.append([e.index, e.term, int(e.kind), data])
    return msgpack.packb(rows, use_bin_type=True)


def _decode_state(raw: bytes) -> tuple[Entry, ...]:
    out = []
    for index, term, kind, data in msgpack.unpackb(raw, raw=False):
        kind = EntryKind(kind)
        value = Configuration.from_wire(data) if kind is EntryKind.CONFIG else data
        out.append(Entry(index, term, kind, value))
    return tuple(out)


class FileDisk(Disk):
    """What a restarted peer sees is exactly what the storage layer recovers from disk.

    Writes go through SegmentedLog, HardStateFile and SnapshotStore; a crash is the
    simulation dropping writes it had not flushed, then ``reopen`` recovering from files.
    fsync is off: the simulated crash loses unflushed writes, not the page cache (the
    SIGKILL and fault-injection tests cover the disk itself).
    """

    def __init__(self, root: Path, peer: str, bootstrap: SnapshotMeta) -> None:
        super().__init__(snapshot=bootstrap)
        self.root = root / peer
        self.bootstrap = bootstrap
        self.log: SegmentedLog | None = None
        self.hard_file = HardStateFile(self.root / "hard", fsync=False)
        self.store = SnapshotStore(self.root / "snapshots", fsync=False)

    def reopen(self) -> None:
        if self.log is not None:
            self.log.close()
        (self.root / "hard").mkdir(parents=True, exist_ok=True)
        self.log = SegmentedLog(self.root / "log", max_segment_size=2048, fsync=False)
        self.hard_file = HardStateFile(self.root / "hard", fsync=False)
        self.hard_state, _ = self.hard_file.load()
        latest = self.store.latest()
        if latest is None:
            self.snapshot, self.snapshot_data = self.bootstrap, ()
        else:
            meta, path, _ = latest
            self.snapshot = meta
            self.snapshot_data = _decode_state((Path(path) / _STATE_FILE).read_bytes())
            self.log.restore_to_snapshot(meta.index, meta.term)
        log = self.log
        self.entries = log.entries(log.first_index, log.last_index + 1)

    def _save_snapshot(self, meta: SnapshotMeta, data: tuple[Entry, ...]) -> None:
        payload = _encode_state(data)
        self.store.create(meta, lambda d: (Path(d) / _STATE_FILE).write_bytes(payload))

    def write(self, ready: Ready, snapshot_data: tuple[Entry, ...] | None) -> None:
        assert self.log is not None
        if ready.snapshot is not None:
            self._save_snapshot(ready.snapshot, snapshot_data or ())
            self.log.restore_to_snapshot(ready.snapshot.index, ready.snapshot.term)
        if ready.entries:
            self.log.append(ready.entries)
        if ready.hard_state is not None:
            self.hard_file.save(ready.hard_state)
        super().write(ready, snapshot_data)

    def compact(self, meta: SnapshotMeta, data: tuple[Entry, ...]) -> None:
        assert self.log is not None
        self._save_snapshot(meta, data)
        self.log.compact(meta.index, meta.term)
        super().compact(meta, data)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
            self.log = None

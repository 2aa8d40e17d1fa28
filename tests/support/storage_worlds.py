"""The real stores and their in-memory twins behind one interface, for the tests that hold
both to the same contract (test_storage_contracts.py, test_storage_faults.py).

A "world" opens a store and crashes it. A crash drops the store object the way a dying
process does: the real stores have nothing unsynced to lose between calls (every call
syncs before it returns), so the kernel closing their descriptors (their lock with them)
is all a crash does to them; a twin's volume releases the log's lock. What a crash *inside*
a call leaves is the fault wrappers' business (zraft.chaos.storage_faults).
"""

from __future__ import annotations

from pathlib import Path

from zraft.storage import (
    HardStateFile,
    HardStateStorage,
    LogStorage,
    MemoryHardState,
    MemoryLog,
    MemorySnapshotStore,
    MemoryVolume,
    SegmentedLog,
    SnapshotStorage,
    SnapshotStore,
)

KINDS = ("disk", "memory")


class StorageWorld:
    """One peer's storage, on disk or in a ``MemoryVolume``, opened and crashed at will."""

    def __init__(self, kind: str, root: Path) -> None:
        assert kind in KINDS
        self.kind = kind
        self.root = root
        self.volume = MemoryVolume(name=str(root))

    def open_log(self) -> LogStorage:
        if self.kind == "disk":
            # Small segments and cache: rollover and reads from disk happen in short tests.
            return SegmentedLog(self.root / "log", max_segment_size=2500, cache_entries=7)
        return MemoryLog(self.volume)

    def open_hard_state(self) -> HardStateStorage:
        if self.kind == "disk":
            return HardStateFile(self.root / "hard_state")
        return MemoryHardState(self.volume)

    def open_snapshots(self) -> SnapshotStorage:
        if self.kind == "disk":
            return SnapshotStore(self.root / "snapshots")
        return MemorySnapshotStore(self.volume, self.root / "scratch")

    def crash(self, raft_log: LogStorage | None = None) -> None:
        """The process owning the stores died (between calls)."""
        if raft_log is not None:
            if isinstance(raft_log, SegmentedLog):
                raft_log.close()  # what the kernel does to a dead process's descriptors
            else:
                self.volume.crash()

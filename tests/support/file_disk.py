"""A simulated peer's disk made of the real stores (``SegmentedLog``, ``HardStateFile``,
``SnapshotStore``) in a directory: what a restarted peer sees is exactly what they recover.

fsync is off: the simulated crash loses what was never handed to the stores, not the page
cache (the SIGKILL and fault-injection tests cover the disk itself).
"""

from __future__ import annotations

from pathlib import Path

from zraft.storage import (
    HardStateFile,
    HardStateStorage,
    LogStorage,
    SegmentedLog,
    SnapshotStorage,
    SnapshotStore,
)


class FileDisk:
    """``zraft.sim.PeerDisk`` on real files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.store: SnapshotStore | None = None
        (root / "hard").mkdir(parents=True, exist_ok=True)

    def open_log(self) -> LogStorage:
        # Small segments: rollover and compaction of whole segments happen in short runs.
        return SegmentedLog(self.root / "log", max_segment_size=2048, fsync=False)

    def open_hard_state(self) -> HardStateStorage:
        return HardStateFile(self.root / "hard", fsync=False)

    def open_snapshots(self) -> SnapshotStorage:
        self.store = SnapshotStore(self.root / "snapshots", fsync=False)
        return self.store

    def crash(self, raft_log: LogStorage | None = None) -> None:
        if raft_log is not None:
            raft_log.close()  # what the kernel does to a dead process's descriptors

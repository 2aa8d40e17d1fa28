"""Durable storage for a zraft peer: the segmented log, the hard state and snapshots.

Plain synchronous classes that do their own fsyncs; the actor layer owns one instance of
each and calls them from a single thread. Callers name the protocols (``LogStorage``,
``HardStateStorage``, ``SnapshotStorage``); the in-memory twins (``MemoryLog``,
``MemoryHardState``, ``MemorySnapshotStore`` over a ``MemoryVolume``) behave the same.
"""

from .errors import (
    CorruptHardStateError,
    CorruptLogError,
    CorruptRecordError,
    CorruptSnapshotError,
    LogBrokenError,
    LogLockedError,
    MissingSegmentError,
    ReadOnlyStorageError,
    RecordError,
    StorageError,
    StorageFullError,
    TornRecordError,
)
from .hard_state import HardStateFile
from .log import SegmentedLog
from .memory import MemoryHardState, MemoryLog, MemorySnapshotStore, MemoryVolume
from .protocols import HardStateStorage, LatestSnapshot, LogStorage, SnapshotStorage
from .snapshots import SnapshotStore

__all__ = [
    "CorruptHardStateError",
    "CorruptLogError",
    "CorruptRecordError",
    "CorruptSnapshotError",
    "HardStateFile",
    "HardStateStorage",
    "LatestSnapshot",
    "LogBrokenError",
    "LogLockedError",
    "LogStorage",
    "MemoryHardState",
    "MemoryLog",
    "MemorySnapshotStore",
    "MemoryVolume",
    "MissingSegmentError",
    "ReadOnlyStorageError",
    "RecordError",
    "SegmentedLog",
    "SnapshotStorage",
    "SnapshotStore",
    "StorageError",
    "StorageFullError",
    "TornRecordError",
]

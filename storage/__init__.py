"""Durable storage for a zraft peer: the segmented log, the hard state and snapshots.

Plain synchronous classes that do their own fsyncs; the actor layer owns one instance of
each and calls them from a single thread.
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
from .snapshots import SnapshotStore

__all__ = [
    "CorruptHardStateError",
    "CorruptLogError",
    "CorruptRecordError",
    "CorruptSnapshotError",
    "HardStateFile",
    "LogBrokenError",
    "LogLockedError",
    "MissingSegmentError",
    "ReadOnlyStorageError",
    "RecordError",
    "SegmentedLog",
    "SnapshotStore",
    "StorageError",
    "StorageFullError",
    "TornRecordError",
]

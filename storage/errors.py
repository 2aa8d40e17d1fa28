"""Errors raised by the durable storage layer.

Every failure the storage layer reports is a ``StorageError`` so drivers can catch one type.
OS errors that mean "the disk cannot take more" or "the disk refuses writes" are translated
into their own classes, because a driver reacts to them differently (stop accepting writes,
alert an operator) than to corruption (refuse to start).
"""

from __future__ import annotations

import errno
import os

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_READ_ONLY_ERRNOS = frozenset({errno.EROFS, errno.EACCES, errno.EPERM})


class StorageError(Exception):
    """Base class of every storage failure."""


class CorruptLogError(StorageError):
    """A log file holds bytes that cannot be what this library wrote, at a known place."""

    def __init__(self, path: str | os.PathLike[str], offset: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.offset = offset
        self.reason = reason
        super().__init__(f"corrupt log file {self.path} at offset {offset}: {reason}")


class MissingSegmentError(CorruptLogError):
    """The segment files do not cover a contiguous range of indexes (a file was lost)."""


class CorruptHardStateError(StorageError):
    """No copy of the hard state (term, vote, commit) can be read back intact."""


class CorruptSnapshotError(StorageError):
    """A snapshot directory's meta file or data files fail validation."""


class LogLockedError(StorageError):
    """The log directory is locked: another process (a running peer) has it open."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        super().__init__(f"log directory {self.path} is already open elsewhere")


class LogBrokenError(StorageError):
    """A write failed and could not be rolled back; the log must be reopened to recover."""


class RecordError(StorageError):
    """A single log record failed to decode (see the two subclasses)."""

    def __init__(self, offset: int, reason: str) -> None:
        self.offset = offset
        self.reason = reason
        super().__init__(f"bad record at offset {offset}: {reason}")


class TornRecordError(RecordError):
    """The buffer ends inside the record: what a write interrupted by a crash leaves."""


class CorruptRecordError(RecordError):
    """The record is complete but its contents are wrong (checksum, kind, bounds, payload)."""


class StorageFullError(StorageError):
    """The file system has no space left (ENOSPC or EDQUOT)."""

    def __init__(self, path: str, action: str, cause: OSError) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"no space left on device while trying to {action} {path}: {cause}")


class ReadOnlyStorageError(StorageError):
    """The file system or the file refuses writes (EROFS, EACCES or EPERM)."""

    def __init__(self, path: str, action: str, cause: OSError) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"storage is read-only or not writable; cannot {action} {path}: {cause}")


def translate_os_error(exc: OSError, path: str | os.PathLike[str], action: str) -> StorageError:
    """Map an OSError to the storage error a driver should see.

    ``action`` is a verb phrase ("append to", "create") used in the message.
    """
    where = os.fspath(path)
    if exc.errno in _FULL_ERRNOS:
        return StorageFullError(where, action, exc)
    if exc.errno in _READ_ONLY_ERRNOS:
        return ReadOnlyStorageError(where, action, exc)
    name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return StorageError(f"I/O error ({name}) while trying to {action} {where}: {exc}")

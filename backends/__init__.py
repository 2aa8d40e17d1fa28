"""State machine backends: the protocol and the bundled implementations.

See ``docs/backends.md``. ``base`` holds the protocol (:class:`Backend`), its result and
error types, the apply-layer helpers and :func:`load_backend`; ``kv`` the key-value backend.
"""

from .base import (
    ApplyResult,
    Backend,
    BackendError,
    BackendFailure,
    BackendLoadError,
    CommandRejected,
    Failure,
    InvalidSnapshot,
    NotSupported,
    QueryResult,
    SnapshotWriter,
    WatchSpec,
    checked_apply,
    checked_expire,
    checked_query,
    load_backend,
)
from .kv import KeyValueBackend

__all__ = [
    "ApplyResult",
    "Backend",
    "BackendError",
    "BackendFailure",
    "BackendLoadError",
    "CommandRejected",
    "Failure",
    "InvalidSnapshot",
    "KeyValueBackend",
    "NotSupported",
    "QueryResult",
    "SnapshotWriter",
    "WatchSpec",
    "checked_apply",
    "checked_expire",
    "checked_query",
    "load_backend",
]

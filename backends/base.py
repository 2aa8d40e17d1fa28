"""The backend protocol: the replicated state machine that committed commands are applied to.

A backend is zraft's state machine. Every peer holds one instance and applies the same
committed commands to it in the same order; Raft guarantees the order, the backend must
guarantee the rest: **applying the same commands in the same order from the same state must
produce the same state and the same results on every peer**. Otherwise peers diverge
silently, a read on one peer disagrees with a read on another, and a snapshot sent by the
leader does not match the state a follower built from the log. So ``apply``,
``apply_session``, ``expire_session``, ``install`` and the snapshot writer must not depend on:

* wall clocks or timers (``time.time()``, ``datetime.now()``): the entry is applied at
  different moments on different peers, and again after a restart;
* randomness (``random``, ``uuid4``, ``os.urandom``) unless seeded from the command itself;
* iteration order of unordered containers leaking into results or state (``set`` order of
  strings changes between processes with hash randomization): sort first;
* I/O whose outcome can differ between peers (network calls, reading files other than the
  backend's own snapshot, environment variables, the peer id);
* ``id()``, ``hash()`` of str/bytes, object ``repr`` with addresses, or floating point
  results that depend on the platform's libm beyond IEEE basic operations.

Commands, queries and results travel as msgpack: they must be built from ``dict``, ``list``,
``str``, ``bytes``, ``int`` (64-bit), ``float``, ``bool`` and ``None`` (tuples arrive as
lists). Results are computed on every peer but only the one answering the client sends them.

Errors: a command that is malformed or not allowed in the current state is *rejected*, by
raising :class:`CommandRejected` before changing anything. The apply layer
(:func:`checked_apply`) turns that, and any other ordinary exception, into a
:class:`Failure` result in the same way on every peer, so an error is itself a deterministic
outcome and never stops the apply loop. Failures that may differ between peers
(``MemoryError``, ``RecursionError``, ``OSError``) are not turned into results: they raise
:class:`BackendFailure`, and the peer must stop (it recovers from its snapshot and log).
"""

from __future__ import annotations

import abc
import importlib
import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = [
    "ApplyResult",
    "Backend",
    "BackendError",
    "BackendFailure",
    "BackendLoadError",
    "CommandRejected",
    "Failure",
    "InvalidSnapshot",
    "NotSupported",
    "QueryResult",
    "SnapshotWriter",
    "WatchSpec",
    "checked_apply",
    "checked_expire",
    "checked_query",
    "load_backend",
]


# --------------------------------------------------------------------------- errors


class BackendError(Exception):
    """Base class of every error the backend layer raises."""


class CommandRejected(BackendError):
    """A command or query is malformed or not allowed; nothing was changed.

    ``reason`` is part of the replicated result, so it must be deterministic: build it from
    the command and the state only (no addresses, times or peer ids).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSupported(BackendError):
    """The backend does not offer this operation (e.g. temporary data, watches)."""

    def __init__(self, operation: str, backend: str = "") -> None:
        where = f" by {backend}" if backend else ""
        super().__init__(f"{operation} is not supported{where}")
        self.operation = operation
        self.reason = str(self)


class InvalidSnapshot(BackendError):
    """A snapshot directory or file is missing, damaged or in an unknown format."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"invalid snapshot {os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason


class BackendLoadError(BackendError):
    """``load_backend`` could not turn an import path into a Backend class."""


class BackendFailure(BackendError):
    """An environment-dependent failure inside the backend: the peer must stop.

    Raised by the ``checked_*`` helpers instead of turning the error into a result, because
    another peer applying the same command may well have succeeded.
    """


# --------------------------------------------------------------------------- results


def _key_set(value: Iterable[str], what: str) -> frozenset[str]:
    if type(value) is frozenset and len(value) == 1:
        (key,) = value  # the usual result: one key, checked without building anything
        if type(key) is str:
            return value
    if isinstance(value, str | bytes):
        raise TypeError(f"{what} must be a collection of str, not a single {type(value).__name__}")
    keys = frozenset(value)
    for key in keys:
        if not isinstance(key, str):
            raise TypeError(f"{what} must contain str, found {type(key).__name__}")
    return keys


@dataclass(frozen=True, slots=True)
class WatchSpec:
    """What a one-shot watch listens to: exact keys and key prefixes.

    A write fires the watch when one of its trigger keys is in ``keys`` or starts with one of
    ``prefixes`` (the prefix ``""`` matches every key).
    """

    keys: frozenset[str] = frozenset()
    prefixes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        object.__setattr__(self, "keys", _key_set(self.keys, "watch keys"))
        object.__setattr__(self, "prefixes", _key_set(self.prefixes, "watch prefixes"))

    def matches(self, trigger_keys: Iterable[str]) -> bool:
        for key in trigger_keys:
            if key in self.keys:
                return True
            for prefix in self.prefixes:
                if key.startswith(prefix):
                    return True
        return False


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The answer to a query.

    ``watch_keys`` are the keys the answer was read from, and ``watch_prefixes`` the key
    ranges (by prefix) it covers, e.g. a listing; a write touching any of them fires a watch
    set with this query. ``watch_keys=None`` means the backend cannot name what it read, so
    a watch cannot be set for this query (the client is told watches are not supported).
    """

    data: Any
    watch_keys: frozenset[str] | None = None
    watch_prefixes: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.watch_keys is None:
            if self.watch_prefixes:
                raise ValueError("watch_prefixes need watch_keys (use an empty set)")
            return
        object.__setattr__(self, "watch_keys", _key_set(self.watch_keys, "watch_keys"))
        object.__setattr__(self, "watch_prefixes", _key_set(self.watch_prefixes, "watch_prefixes"))

    @property
    def watch(self) -> WatchSpec | None:
        """The watch this answer supports, or None if watches are not supported."""
        if self.watch_keys is None:
            return None
        return WatchSpec(self.watch_keys, self.watch_prefixes)


@dataclass(frozen=True, slots=True, init=False)
class ApplyResult:
    """The result of one applied command, and the keys it changed (which fire watches)."""

    result: Any = None
    trigger_keys: frozenset[str] = frozenset()

    def __init__(self, result: Any = None, trigger_keys: Iterable[str] = frozenset()) -> None:
        # One is made per write on every peer: set the slots directly rather than through
        # the frozen dataclass's generated __init__ and a __post_init__ (a third of the cost).
        _set_result(self, result)
        _set_trigger_keys(self, _key_set(trigger_keys, "trigger_keys"))

    def __post_init__(self) -> None:
        # Not called by the __init__ above; a dataclass subclass's generated __init__ calls
        # it, so a subclass's trigger keys are checked too.
        _set_trigger_keys(self, _key_set(self.trigger_keys, "trigger_keys"))


_set_result = ApplyResult.result.__set__  # type: ignore[attr-defined]
_set_trigger_keys = ApplyResult.trigger_keys.__set__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Failure:
    """A command or query that failed; a deterministic, replicated outcome.

    ``code`` is ``"rejected"`` (CommandRejected), ``"not_supported"`` (NotSupported) or
    ``"backend_error"`` (any other exception: a bug in the backend; only the exception's type
    is kept, since its message may hold addresses or other per-process text).
    """

    code: str
    reason: str

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "reason": self.reason}

    @staticmethod
    def from_wire(raw: Any) -> Failure:
        if (
            not isinstance(raw, dict)
            or set(raw) != {"code", "reason"}
            or not isinstance(raw["code"], str)
            or not isinstance(raw["reason"], str)
        ):
            raise ValueError(f"not a failure: {raw!r}")
        return Failure(raw["code"], raw["reason"])


@dataclass(frozen=True, slots=True)
class SnapshotWriter:
    """What :meth:`Backend.snapshot` returns: a one-shot job writing the state's files.

    ``write(directory)`` writes the backend's files into ``directory`` (an existing, empty
    directory; the storage layer fsyncs and publishes it afterwards, see
    ``zraft.storage.SnapshotStore.create``). It is called exactly once.

    ``background=False``: the job reads the live state, so the driver runs it before it
    applies anything else to the backend. ``background=True``: ``snapshot()`` already took a
    private copy of everything the job needs, synchronously, so the driver may run the job in
    another thread while applying later entries.
    """

    write: Callable[[Path], None] = field(repr=False)
    background: bool = False

    def __call__(self, directory: str | os.PathLike[str]) -> None:
        self.write(Path(directory))


# --------------------------------------------------------------------------- the protocol


class Backend(abc.ABC):
    """A replicated state machine. See the module docstring for the determinism rules.

    Lifecycle, all calls from one thread (the peer's apply actor):
    ``Backend()`` (no arguments) → ``init(peer_id)`` → possibly ``install(dir)`` (the latest
    snapshot) → ``apply``/``apply_session``/``expire_session``/``query``/``snapshot``, any
    number of times, with ``install`` again whenever a leader sends a snapshot → ``close()``.
    """

    def init(self, peer_id: str) -> None:  # noqa: B027 (optional hook, empty on purpose)
        """Called once before anything else. The state must not depend on ``peer_id``."""

    @abc.abstractmethod
    def query(self, query: Any) -> QueryResult:
        """Answer a read without changing anything. Raise CommandRejected for a bad query."""

    @abc.abstractmethod
    def apply(self, command: Any) -> ApplyResult:
        """Apply one committed command. Validate fully before changing anything: a
        CommandRejected must leave the state as it was."""

    def apply_session(self, command: Any, session_id: str) -> ApplyResult:
        """Apply a command whose new data belongs to ``session_id`` (temporary data).

        The data lives until ``expire_session(session_id)``. Backends without temporary data
        keep this default, which refuses.
        """
        raise NotSupported("temporary (session-owned) data", type(self).__name__)

    def expire_session(self, session_id: str) -> frozenset[str]:
        """Delete everything ``session_id`` owns; return the keys that changed.

        Called when a session expires or closes. Unknown sessions own nothing.
        """
        return frozenset()

    @abc.abstractmethod
    def snapshot(self) -> SnapshotWriter:
        """Capture the current state for a snapshot (see :class:`SnapshotWriter`).

        Anything a background writer needs must be copied here, before returning: the next
        ``apply`` may run while the writer is still working.
        """

    def snapshot_done(self) -> None:  # noqa: B027 (optional hook)
        """The last snapshot is durable (e.g. release copy-on-write resources)."""

    def snapshot_failed(self, error: BaseException) -> None:  # noqa: B027 (optional hook)
        """Writing the last snapshot failed; the driver will try again later."""

    @abc.abstractmethod
    def install(self, directory: Path) -> None:
        """Replace the whole state with the snapshot in ``directory``, discarding the old one.

        Raise InvalidSnapshot for a missing or damaged snapshot; the state must then be
        left as it was (read everything first, swap at the end).
        """

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release resources; the instance is not used again."""


# --------------------------------------------------------------------------- apply layer

# Failures whose occurrence can differ between peers running the same command.
_ENVIRONMENTAL: tuple[type[BaseException], ...] = (MemoryError, RecursionError, OSError)


def _failure(exc: Exception, what: str, backend: Backend) -> Failure:
    if isinstance(exc, CommandRejected):
        return Failure("rejected", exc.reason)
    if isinstance(exc, NotSupported):
        return Failure("not_supported", exc.reason)
    if isinstance(exc, _ENVIRONMENTAL):
        raise BackendFailure(f"{type(backend).__name__}.{what} failed: {exc!r}") from exc
    log.error("%s.%s raised; answering backend_error", type(backend).__name__, what, exc_info=exc)
    return Failure("backend_error", f"{what} raised {type(exc).__name__}")


def checked_apply(
    backend: Backend, command: Any, session_id: str | None = None
) -> ApplyResult | Failure:
    """Apply a committed command the same way on every peer: errors become a Failure.

    ``session_id`` routes the command to ``apply_session`` (temporary data). Raises
    BackendFailure for environment-dependent errors: the caller must stop the peer.
    """
    what = "apply" if session_id is None else "apply_session"
    try:
        if session_id is None:
            outcome = backend.apply(command)
        else:
            outcome = backend.apply_session(command, session_id)
    except Exception as exc:
        return _failure(exc, what, backend)
    if not isinstance(outcome, ApplyResult):
        log.error("%s.%s returned %s", type(backend).__name__, what, type(outcome).__name__)
        return Failure("backend_error", f"{what} returned {type(outcome).__name__}")
    return outcome


def checked_query(backend: Backend, query: Any) -> QueryResult | Failure:
    """Run a query; errors become a Failure (queries run on one peer, nothing diverges)."""
    try:
        outcome = backend.query(query)
    except Exception as exc:
        if isinstance(exc, _ENVIRONMENTAL):
            log.error("%s.query raised", type(backend).__name__, exc_info=exc)
            return Failure("backend_error", f"query raised {type(exc).__name__}")
        return _failure(exc, "query", backend)
    if not isinstance(outcome, QueryResult):
        log.error("%s.query returned %s", type(backend).__name__, type(outcome).__name__)
        return Failure("backend_error", f"query returned {type(outcome).__name__}")
    return outcome


def checked_expire(backend: Backend, session_id: str) -> frozenset[str]:
    """Expire a session's data; a deterministic error is logged and touches no keys."""
    try:
        keys = backend.expire_session(session_id)
        return _key_set(keys, "expire_session result")
    except Exception as exc:
        failure = _failure(exc, "expire_session", backend)
        log.warning("expiring session %r failed: %s", session_id, failure.reason)
        return frozenset()


# --------------------------------------------------------------------------- loading

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_IMPORT_PATH = re.compile(rf"^({_DOTTED}):({_DOTTED})$")


def load_backend(path: str) -> type[Backend]:
    """Import ``package.module:Class`` and check that it is a concrete Backend subclass."""
    if not isinstance(path, str):
        raise BackendLoadError(f"backend must be a str 'package.module:Class', got {path!r}")
    match = _IMPORT_PATH.match(path.strip())
    if match is None:
        raise BackendLoadError(
            f"backend {path!r} is not an import path of the form 'package.module:Class'"
        )
    module_name, attr_path = match[1], match[2]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        parts = module_name.split(".")
        prefixes = {".".join(parts[: i + 1]) for i in range(len(parts))}
        if exc.name in prefixes:
            raise BackendLoadError(f"backend {path!r}: module {module_name!r} not found") from exc
        raise BackendLoadError(
            f"backend {path!r}: importing {module_name!r} failed: {exc}"
        ) from exc
    except Exception as exc:
        raise BackendLoadError(
            f"backend {path!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}"
        ) from exc
    target: Any = module
    for part in attr_path.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise BackendLoadError(
                f"backend {path!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    if not inspect.isclass(target) or not issubclass(target, Backend):
        raise BackendLoadError(
            f"backend {path!r}: {attr_path} is not a subclass of zraft.backends.Backend"
        )
    if inspect.isabstract(target):
        missing = ", ".join(sorted(getattr(target, "__abstractmethods__", ())))
        raise BackendLoadError(
            f"backend {path!r}: {attr_path} is abstract (does not implement {missing})"
        )
    return target

"""The storage seams: what a peer needs from its log, its hard state and its snapshots.

Each protocol has a real implementation on disk (``SegmentedLog``, ``HardStateFile``,
``SnapshotStore``) and an in-memory twin (``storage.memory``) that behaves the same in
everything a caller may rely on, which one contract suite checks for both
(tests/storage/test_storage_contracts.py). Callers (the actors, founding, the runtime) name these
protocols, never a class, so the simulation can run them over the twins and the fault suite
can wrap them (``zraft.chaos.storage_faults``) without code of its own in ``storage/``.

Durability is part of the contract: a mutating call that returns has made its effect
durable, a call that raises has changed nothing that a later open would see except where
its docstring says otherwise, and reopening after a crash shows exactly what was durable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from zraft.core.types import Configuration, Entry, HardState, SnapshotMeta

# (meta, path of a directory holding the snapshot's files, extra) of a published snapshot.
LatestSnapshot = tuple[SnapshotMeta, str, dict[str, Any]]


def check_append_start(first: int, base_index: int, last_index: int) -> None:
    """What every log's ``append`` accepts: a batch starting after the snapshot's index and
    at most one past the last entry (an earlier start replaces that suffix)."""
    if first <= base_index:
        raise ValueError(
            f"cannot append at index {first}: entries up to {base_index} are "
            "compacted into a snapshot"
        )
    if first > last_index + 1:
        raise ValueError(
            f"cannot append at index {first}: it would leave a gap after last index {last_index}"
        )


class LogStorage(Protocol):
    """The entries after the latest snapshot.

    ``first_index`` is ``base_index + 1`` where the base is the (index, term) the log was
    last compacted or reset to ((0, 0) for a new log); ``term(base_index)`` answers from
    the base. ``term`` and ``entry`` return None outside ``base_index .. last_index``.
    Calls on a closed log that read ranges or change the log raise ``StorageError``.
    One owner calls it; not thread-safe.
    """

    @property
    def base_index(self) -> int: ...

    @property
    def base_term(self) -> int: ...

    @property
    def first_index(self) -> int: ...

    @property
    def last_index(self) -> int: ...

    @property
    def last_term(self) -> int: ...

    def term(self, index: int) -> int | None: ...

    def entry(self, index: int) -> Entry | None: ...

    def entries(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries ``lo .. hi-1`` clamped to the log; with ``max_bytes`` it stops before the
        total ``Entry.size()`` would pass it, but holds at least one entry when any is in
        range."""
        ...

    def append(self, entries: Sequence[Entry]) -> None:
        """Append a contiguous batch, replacing the suffix from ``entries[0].index`` on;
        durable when it returns. Appending at or below the base, or past ``last_index + 1``,
        raises ValueError and loses nothing."""
        ...

    def compact(self, upto_index: int, upto_term: int) -> None:
        """Forget entries up to (index, term), which a snapshot now covers; past the end it
        resets instead. A term that disagrees with the log's raises ValueError."""
        ...

    def frees_segment(self, upto_index: int) -> bool:
        """Whether ``compact(upto_index, ...)`` now would free storage, so is worth its syncs."""
        ...

    def wait_for_removals(self) -> None:
        """Until storage freed by compactions so far is actually released."""
        ...

    def reset(self, base_index: int, base_term: int) -> None:
        """Drop every entry and restart the log after (base_index, base_term)."""
        ...

    def restore_to_snapshot(self, index: int, term: int) -> None:
        """Keep the suffix after (index, term) if the log holds that entry with that term,
        else drop everything; safe to repeat after a crash."""
        ...

    def close(self) -> None:
        """Release the log (its lock: another owner may open it now). Idempotent."""
        ...


class HardStateStorage(Protocol):
    """Term, vote, commit and the configuration saved with them."""

    def load(self) -> tuple[HardState, Configuration | None]:
        """The last saved state; ``(HardState(), None)`` if nothing was ever saved."""
        ...

    def save(self, hard_state: HardState, config: Configuration | None = None) -> None:
        """Durably replace the state; one that raises leaves the previous state in force."""
        ...


class SnapshotStorage(Protocol):
    """The peer's latest snapshot, its creation and its installation from a leader.

    Snapshots are handed around as directories, because backends write and read their
    state as files and the snapshot stream sends files: ``list_files`` names them, data
    files first and the ``meta`` file (storage/snapshots.py's format) last.
    """

    def latest(self) -> LatestSnapshot | None: ...

    def verify(self, path: str) -> None:
        """Check a snapshot's data files against the sizes and CRCs of its meta."""
        ...

    def list_files(self, path: str) -> list[tuple[str, int]]: ...

    def create(
        self,
        meta: SnapshotMeta,
        writer: Callable[[str], None],
        extra: dict[str, Any] | None = None,
    ) -> str:
        """``writer(dirpath)`` writes the backend's files; returns the snapshot's path once
        it is durable and the latest (every other snapshot retired). One older than the
        latest raises ValueError and changes nothing (a worker's snapshot may finish after
        a newer one arrived from the leader)."""
        ...

    def begin_install(self) -> str:
        """A fresh directory to receive a leader's snapshot files into."""
        ...

    def finish_install(self, tmpdir: str) -> LatestSnapshot:
        """Validate received files and make them the latest snapshot, atomically; a damaged
        transfer raises ``CorruptSnapshotError``, one older than the latest ValueError."""
        ...

    def abort_install(self, tmpdir: str) -> None: ...

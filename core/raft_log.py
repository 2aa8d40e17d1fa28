"""The in-memory view of a peer's log above its latest snapshot."""

from __future__ import annotations

from collections.abc import Sequence

from .types import Entry, SnapshotMeta


class RaftLog:
    """Entries ``snap_index+1 .. last_index``; the snapshot stands in for everything before.

    The core reads only through this class, so a later form can keep a bounded window in
    memory and fetch older entries from storage without the core noticing.
    """

    # ``last_index`` is kept as a plain attribute, not computed: the core reads it several
    # times per message.
    __slots__ = ("snap_index", "snap_term", "_entries", "last_index")

    def __init__(self, snapshot: SnapshotMeta, entries: Sequence[Entry] = ()) -> None:
        self.snap_index = snapshot.index
        self.snap_term = snapshot.term
        self._entries: list[Entry] = []
        expected = snapshot.index + 1
        for entry in entries:
            if entry.index <= snapshot.index:
                continue  # storage may still hold entries the snapshot already covers
            if entry.index != expected:
                raise ValueError(f"log gap: expected index {expected}, got {entry.index}")
            self._entries.append(entry)
            expected += 1
        self.last_index = self.snap_index + len(self._entries)

    @property
    def first_index(self) -> int:
        return self.snap_index + 1

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.snap_term

    def term(self, index: int) -> int | None:
        """The term of ``index``, or None when it is compacted away or beyond the end."""
        if index == self.snap_index:
            return self.snap_term
        offset = index - self.snap_index - 1
        if 0 <= offset < len(self._entries):
            return self._entries[offset].term
        return None

    def entry(self, index: int) -> Entry | None:
        offset = index - self.snap_index - 1
        if 0 <= offset < len(self._entries):
            return self._entries[offset]
        return None

    def slice(
        self, lo: int, hi: int, max_count: int | None = None, max_bytes: int | None = None
    ) -> list[Entry]:
        """Entries ``lo .. hi-1`` (clamped to what is held), cut by count and size limits.

        At least one entry is returned when any is available, whatever its size, so a
        single large entry can never stall replication.
        """
        start = max(lo, self.first_index) - self.snap_index - 1
        stop = min(hi, self.last_index + 1) - self.snap_index - 1
        if stop <= start:
            return []
        if max_count is not None:
            stop = min(stop, start + max(1, max_count))
        if max_bytes is None:
            return self._entries[start:stop]
        out: list[Entry] = []
        total = 0
        for entry in self._entries[start:stop]:
            total += entry.size()
            if out and total > max_bytes:
                break
            out.append(entry)
        return out

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """Raft's election restriction: is a log ending at (last_index, last_term) at least ours."""
        my_term = self.last_term
        return last_term > my_term or (last_term == my_term and last_index >= self.last_index)

    def find_conflict_by_term(self, index: int, term: int) -> int:
        """The largest index <= ``index`` whose term is <= ``term`` (a rejection hint)."""
        index = min(index, self.last_index)
        while index > self.snap_index:
            entry_term = self.term(index)
            if entry_term is not None and entry_term <= term:
                return index
            index -= 1
        return self.snap_index

    def append(self, entries: Sequence[Entry]) -> None:
        if entries and entries[0].index != self.last_index + 1:
            raise ValueError(
                f"append at {entries[0].index} does not follow last index {self.last_index}"
            )
        self._entries.extend(entries)
        self.last_index += len(entries)

    def truncate_from(self, index: int) -> None:
        """Drop ``index`` and everything after it."""
        if index <= self.snap_index:
            raise ValueError(f"cannot truncate at {index}: covered by snapshot {self.snap_index}")
        del self._entries[index - self.snap_index - 1 :]
        self.last_index = self.snap_index + len(self._entries)

    def compact(self, index: int) -> None:
        """Forget entries up to ``index``, which a snapshot now covers."""
        term = self.term(index)
        if term is None or index <= self.snap_index:
            raise ValueError(f"cannot compact to {index}: not in the log")
        del self._entries[: index - self.snap_index]
        self.snap_index, self.snap_term = index, term

    def restore(self, snapshot: SnapshotMeta) -> None:
        """Replace the whole log by a snapshot (a follower far behind its leader)."""
        self._entries = []
        self.snap_index, self.snap_term = snapshot.index, snapshot.term
        self.last_index = snapshot.index

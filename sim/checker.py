"""Raft's safety properties, checked incrementally as a simulated cluster runs."""

from __future__ import annotations

from typing import Any

from zraft.core import Entry, Node, Role


class SafetyViolation(AssertionError):
    """A Raft safety property failed; the message says which and where."""


class SafetyChecker:
    """Checks after every step; each check is incremental so schedules stay cheap.

    - election safety: at most one leader per term;
    - leader append-only: a leader never removes or rewrites an entry while it leads;
    - log matching: an (index, term) pair names one entry, whose predecessor has one term
      (by induction, logs that share an (index, term) are identical up to it);
    - leader completeness: every committed entry is in the log of every later leader;
    - state machine safety: no two peers apply different entries at one index;
    - reads: a read returns a state that includes every write committed before it began.
    """

    def __init__(self) -> None:
        self.leaders: dict[int, str] = {}
        self.entries: dict[tuple[int, int], tuple[Any, Any, int | None]] = {}
        self.committed: dict[int, int] = {}
        self.max_commit = 0
        self.applied: dict[int, tuple[int, Any, Any]] = {}
        self._leader_tail: dict[str, tuple[int, int, Entry | None]] = {}
        self._checked_commit: dict[str, int] = {}
        self.checks = 0

    def fail(self, text: str) -> None:
        raise SafetyViolation(text)

    def observe_appended(self, node: Node, entries: list[Entry]) -> None:
        for entry in entries:
            prev_term = node.log.term(entry.index - 1)
            key = (entry.index, entry.term)
            seen = self.entries.get(key)
            value = (entry.kind, entry.data, prev_term)
            if seen is None:
                self.entries[key] = value
            elif seen != value:
                self.fail(
                    f"log matching: {node.id} holds {entry} after term {prev_term}, "
                    f"but ({entry.index}, {entry.term}) was {seen}"
                )
        self.checks += 1

    def observe_node(self, node: Node) -> None:
        """Election safety, leader append-only, commit bookkeeping, leader completeness."""
        self.checks += 1
        if node.commit > self._checked_commit.get(node.id, 0):
            self._record_commits(node)
        if node.role is not Role.LEADER:
            self._leader_tail.pop(node.id, None)
            return
        holder = self.leaders.setdefault(node.term, node.id)
        if holder != node.id:
            self.fail(f"election safety: {holder} and {node.id} both lead term {node.term}")
        tail = self._leader_tail.get(node.id)
        if tail is None or tail[0] != node.term:
            self._check_completeness(node)
        else:
            _, last_index, last_entry = tail
            if last_index > node.log.snap_index and node.log.entry(last_index) is not last_entry:
                self.fail(
                    f"leader append-only: {node.id} (term {node.term}) changed index {last_index}"
                )
        self._leader_tail[node.id] = (
            node.term,
            node.log.last_index,
            node.log.entry(node.log.last_index),
        )

    def _record_commits(self, node: Node) -> None:
        start = max(node.log.snap_index, self._checked_commit.get(node.id, 0)) + 1
        for index in range(start, node.commit + 1):
            term = node.log.term(index)
            if term is None:
                continue
            known = self.committed.setdefault(index, term)
            if known != term:
                self.fail(
                    f"commit safety: {node.id} commits ({index}, {term}) "
                    f"but ({index}, {known}) was committed"
                )
        self.max_commit = max(self.max_commit, node.commit)
        self._checked_commit[node.id] = node.commit

    def _check_completeness(self, leader: Node) -> None:
        for index, term in self.committed.items():
            if index <= leader.log.snap_index:
                continue
            if leader.log.term(index) != term:
                self.fail(
                    f"leader completeness: {leader.id} leads term {leader.term} without "
                    f"committed entry ({index}, {term})"
                )

    def observe_applied(self, peer: str, entry: Entry) -> None:
        value = (entry.term, entry.kind, entry.data)
        known = self.applied.setdefault(entry.index, value)
        if known != value:
            self.fail(
                f"state machine safety: {peer} applied {value} at {entry.index}, "
                f"another peer applied {known}"
            )

    def check_read(self, peer: str, started_after: int, served_at: int) -> None:
        self.checks += 1
        if served_at < started_after:
            self.fail(
                f"stale read at {peer}: served at index {served_at}, but index "
                f"{started_after} was committed before the read began"
            )

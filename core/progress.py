"""What a leader knows about each follower's log, and the flow control it applies."""

from __future__ import annotations

from collections import deque
from enum import IntEnum


class ReplicationState(IntEnum):
    PROBE = 0  # one AppendEntries at a time until the match point is found
    REPLICATE = 1  # optimistic pipelining, bounded by the in-flight window
    SNAPSHOT = 2  # a snapshot is travelling; send nothing else

    def __str__(self) -> str:
        return self.name.lower()


class Progress:
    __slots__ = (
        "match",
        "next",
        "state",
        "probe_sent",
        "inflight",
        "max_inflight",
        "pending_snapshot",
        "recent_active",
        "read_ack",
        "commit_sent",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match = 0
        self.next = next_index
        self.state = ReplicationState.PROBE
        self.probe_sent = False
        self.inflight: deque[int] = deque()  # last index carried by each unacknowledged append
        self.max_inflight = max_inflight
        self.pending_snapshot = 0
        self.recent_active = False
        self.read_ack = 0  # highest ReadIndex round this peer acknowledged
        self.commit_sent = 0  # highest commit index we told this peer

    def paused(self) -> bool:
        if self.state is ReplicationState.PROBE:
            return self.probe_sent
        if self.state is ReplicationState.REPLICATE:
            return len(self.inflight) >= self.max_inflight
        return True

    def become_probe(self) -> None:
        if self.state is ReplicationState.SNAPSHOT:
            self.next = max(self.match + 1, self.pending_snapshot + 1)
            self.pending_snapshot = 0
        else:
            self.next = self.match + 1
        self.state = ReplicationState.PROBE
        self.probe_sent = False
        self.inflight.clear()

    def become_replicate(self) -> None:
        self.state = ReplicationState.REPLICATE
        self.next = self.match + 1
        self.probe_sent = False
        self.inflight.clear()

    def become_snapshot(self, index: int) -> None:
        self.state = ReplicationState.SNAPSHOT
        self.pending_snapshot = index
        self.probe_sent = False
        self.inflight.clear()

    def sent(self, last_index: int, count: int) -> None:
        """Record an append just sent whose last entry is ``last_index``."""
        if self.state is ReplicationState.REPLICATE:
            if count:
                self.next = last_index + 1
                self.inflight.append(last_index)
        elif self.state is ReplicationState.PROBE:
            self.probe_sent = True

    def acknowledge(self, index: int) -> bool:
        """A successful response up to ``index``; returns whether the match point moved."""
        while self.inflight and self.inflight[0] <= index:
            self.inflight.popleft()
        self.probe_sent = False
        if index > self.match:
            self.match = index
            self.next = max(self.next, index + 1)
            return True
        return False

    def reject(self, rejected: int, hint: int) -> bool:
        """A rejection of the append at ``rejected``; returns False when it is stale."""
        if self.state is ReplicationState.REPLICATE:
            if rejected <= self.match:
                return False
            self.state = ReplicationState.PROBE
            self.inflight.clear()
            self.next = max(self.match + 1, min(rejected, hint + 1))
            self.probe_sent = False
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(self.match + 1, min(rejected, hint + 1))
        self.probe_sent = False
        return True

    def __repr__(self) -> str:
        return (
            f"Progress(match={self.match}, next={self.next}, state={self.state}, "
            f"inflight={len(self.inflight)})"
        )

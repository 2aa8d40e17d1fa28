"""Messages exchanged between peers' cores. Frozen, so they can cross threads uncopied."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .types import Entry, SnapshotMeta


@dataclass(frozen=True, slots=True)
class Message:
    term: int
    src: str
    dst: str


@dataclass(frozen=True, slots=True)
class AppendEntries(Message):
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendResponse(Message):
    """``index`` is the follower's match index on success, the rejected prev_index otherwise.

    On rejection ``hint_index``/``hint_term`` let the leader skip a whole conflicting term at
    once instead of probing one index per round trip.
    """

    success: bool
    index: int
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class RequestVote(Message):
    """A vote or pre-vote request. A pre-vote carries the term the candidate *would* use."""

    last_index: int
    last_term: int
    pre_vote: bool = False
    transfer: bool = False  # a leadership transfer: voters skip leader stickiness


@dataclass(frozen=True, slots=True)
class VoteResponse(Message):
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class Heartbeat(Message):
    """Keeps followers quiet; ``round`` confirms leadership for ReadIndex batches."""

    commit: int
    round: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse(Message):
    round: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot(Message):
    """Tells a follower to install the snapshot ``meta``; the driver moves the bytes."""

    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class TimeoutNow(Message):
    """Leadership transfer: campaign at once, without waiting for an election timeout."""


@dataclass(frozen=True, slots=True)
class ReadIndexRequest(Message):
    """A follower forwards a linearizable read to the leader."""

    context: Any


@dataclass(frozen=True, slots=True)
class ReadIndexResponse(Message):
    context: Any
    index: int
    ok: bool = True


MESSAGE_TYPES: tuple[type[Message], ...] = (
    AppendEntries,
    AppendResponse,
    RequestVote,
    VoteResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    TimeoutNow,
    ReadIndexRequest,
    ReadIndexResponse,
)

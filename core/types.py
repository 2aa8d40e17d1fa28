"""Plain immutable values shared by the consensus core and its drivers.

Nothing here performs I/O. Entries and configurations are frozen so that actors can pass
them between threads without copying (pykka does not copy messages).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, NamedTuple


class EntryKind(IntEnum):
    """What a log entry carries."""

    NORMAL = 0  # application data, opaque to the core
    NOOP = 1  # appended by every new leader so it can commit entries of earlier terms
    CONFIG = 2  # a membership configuration (data is a Configuration)


@dataclass(frozen=True, slots=True)
class Configuration:
    """A cluster membership.

    ``voters`` is the incoming (or only) voter set. ``outgoing`` is non-empty only while a
    joint configuration C_old,new is in force; decisions then need a majority of both.
    Learners receive the log but never vote and never campaign.
    """

    voters: frozenset[str] = frozenset()
    outgoing: frozenset[str] = frozenset()
    learners: frozenset[str] = frozenset()

    @staticmethod
    def of(
        voters: Iterable[str], learners: Iterable[str] = (), outgoing: Iterable[str] = ()
    ) -> Configuration:
        return Configuration(frozenset(voters), frozenset(outgoing), frozenset(learners))

    @property
    def joint(self) -> bool:
        return bool(self.outgoing)

    @property
    def all_voters(self) -> frozenset[str]:
        return self.voters | self.outgoing

    @property
    def members(self) -> frozenset[str]:
        return self.voters | self.outgoing | self.learners

    def is_voter(self, peer: str) -> bool:
        return peer in self.voters or peer in self.outgoing

    def to_wire(self) -> dict[str, list[str]]:
        """A msgpack/JSON friendly form, sorted so equal configurations encode equally."""
        return {
            "voters": sorted(self.voters),
            "outgoing": sorted(self.outgoing),
            "learners": sorted(self.learners),
        }

    @staticmethod
    def from_wire(raw: Any) -> Configuration:
        if not isinstance(raw, dict):
            raise ValueError(f"configuration must be a mapping, got {type(raw).__name__}")
        parts: dict[str, frozenset[str]] = {}
        for key in ("voters", "outgoing", "learners"):
            value = raw.get(key, [])
            if not isinstance(value, list | tuple) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"configuration field {key!r} must be a list of peer ids")
            parts[key] = frozenset(value)
        unknown = set(raw) - {"voters", "outgoing", "learners"}
        if unknown:
            raise ValueError(f"configuration has unknown fields {sorted(unknown)}")
        # An outgoing voter may be demoted to learner by a change; incoming voters may not.
        if parts["learners"] & parts["voters"]:
            raise ValueError("a peer cannot be both a voter and a learner")
        return Configuration(parts["voters"], parts["outgoing"], parts["learners"])

    def __str__(self) -> str:
        text = "voters=(" + " ".join(sorted(self.voters)) + ")"
        if self.outgoing:
            text += "&&(" + " ".join(sorted(self.outgoing)) + ")"
        if self.learners:
            text += " learners=(" + " ".join(sorted(self.learners)) + ")"
        return text


class Entry(NamedTuple):
    """One log entry. ``data`` is bytes for NORMAL, b"" for NOOP, a Configuration for CONFIG.

    A named tuple rather than a frozen dataclass: entries are made by the million (every
    proposal, every decoded append) and a tuple is several times cheaper to build.
    """

    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: Any = b""

    def size(self) -> int:
        """Approximate encoded size, for batching limits."""
        data = self.data
        if type(data) is bytes or isinstance(data, bytearray | memoryview):  # bytes: usual
            return 16 + len(data)
        return 64


@dataclass(frozen=True, slots=True)
class HardState:
    """What must be durable before any message that depends on it leaves the peer."""

    term: int = 0
    vote: str | None = None
    commit: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Identifies a snapshot; the bytes of the state itself travel outside the core."""

    index: int = 0
    term: int = 0
    config: Configuration = field(default_factory=Configuration)


class Role(IntEnum):
    FOLLOWER = 0
    PRE_CANDIDATE = 1
    CANDIDATE = 2
    LEADER = 3

    def __str__(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the local state machine has applied ``index``."""

    context: Any
    index: int


@dataclass(frozen=True, slots=True)
class ReadFailed:
    """A read request that cannot be confirmed here (no leader known, or leadership lost)."""

    context: Any
    reason: str

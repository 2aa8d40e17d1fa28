"""Majority arithmetic, aware of joint configurations."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

from .types import Configuration

_UNBOUNDED = 1 << 62  # an empty voter set never holds a decision back


def majority_value(voters: frozenset[str], values: Mapping[str, int]) -> int:
    """The largest value that a majority of ``voters`` has reached (missing counts as 0)."""
    if not voters:
        return _UNBOUNDED
    ranked = sorted([values.get(peer, 0) for peer in voters], reverse=True)
    return ranked[len(ranked) // 2]


def joint_value(config: Configuration, values: Mapping[str, int]) -> int:
    """The largest value a majority of *each* voter set has reached."""
    value = majority_value(config.voters, values)
    if config.outgoing:
        value = min(value, majority_value(config.outgoing, values))
    return value


class VoteResult(Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def _tally(voters: frozenset[str], votes: Mapping[str, bool]) -> VoteResult:
    if not voters:
        return VoteResult.WON
    granted = sum(1 for peer in voters if votes.get(peer) is True)
    rejected = sum(1 for peer in voters if votes.get(peer) is False)
    need = len(voters) // 2 + 1
    if granted >= need:
        return VoteResult.WON
    if rejected > len(voters) - need:
        return VoteResult.LOST
    return VoteResult.PENDING


def vote_result(config: Configuration, votes: Mapping[str, bool]) -> VoteResult:
    incoming = _tally(config.voters, votes)
    outgoing = _tally(config.outgoing, votes) if config.outgoing else VoteResult.WON
    if VoteResult.LOST in (incoming, outgoing):
        return VoteResult.LOST
    if incoming is VoteResult.WON and outgoing is VoteResult.WON:
        return VoteResult.WON
    return VoteResult.PENDING

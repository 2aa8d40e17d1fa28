"""Which founding of the cluster a session talks to, and refusing any other.

A peer whose directory was wiped and that founded again on its own (``--peers`` naming only
itself, ``create`` run twice) is a leader of another cluster under the same cluster id: the
members refuse its frames, but a client would not know, and a write it acknowledged would
be lost to the real cluster. So a session pins a founding (the cluster uuid every founded
peer reports) before its first request that needs one: the one its listed peers settle on
(``agreed_founding``), or the one it was given (``cluster_uuid=``). Its frames then carry
the pin, and a peer of another founding refuses their requests before doing anything
(``other_founding``); the session skips that peer, with one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from zraft.transport import FOUNDING_FREE_OPS
from zraft.transport.codec import MAX_ORIGIN_PART_LEN

from .errors import OtherFounding

log = logging.getLogger(__name__)

# How long one round of asking the listed peers their founding waits for answers.
FOUNDING_ROUND = 0.5


# At most this many peers a session asks beyond its list (members the answers name).
MAX_NAMED_PEERS = 64


def _founding_of(answer: Any) -> str:
    uuid = answer.get("cluster_uuid") if isinstance(answer, dict) else None
    return uuid if isinstance(uuid, str) else ""


def _named_members(answer: Any) -> set[str]:
    members = answer.get("members") if isinstance(answer, dict) else None
    return {p for p in members if isinstance(p, str)} if isinstance(members, dict) else set()


def peers_to_ask(answers: Mapping[str, Any], listed: Sequence[str]) -> list[str]:
    """The listed peers, and the members founded answers name, not yet known founded."""
    named: set[str] = set()
    for answer in answers.values():
        if _founding_of(answer):
            named |= _named_members(answer)
    extra = sorted(named - set(listed))[:MAX_NAMED_PEERS]
    return [p for p in dict.fromkeys([*listed, *extra]) if not _founding_of(answers.get(p))]


def agreed_founding(answers: Mapping[str, Any], listed: Sequence[str]) -> str | None:
    """The founding the ``identity`` answers (by peer) settle on, or None.

    A founding F is settled when both hold:

    * more than half of its members answered F (its members: those that answered F and
      the members they name), so F is a live cluster, not one peer's claim about others;
    * more than half of the listed peers and F's members together answered F, or every
      one of them answered (a peer that answers "not founded" holds no state: a joiner,
      as when a cluster founded by one peer grows) and F has more of them than any other.

    A peer wiped and founded again alone names no other member, so it settles nothing
    while the others are silent; a cluster with a member down, listed with it, settles.
    A session given one peer only believes it (its user chose it; it may speak for a
    cluster most of which is down, say to an operator's ``members`` or ``query_local``).
    """
    said = {peer: answer for peer, answer in answers.items() if isinstance(answer, dict)}
    if len(set(listed)) == 1 and (uuid := _founding_of(said.get(listed[0]))):
        return uuid
    backers: dict[str, set[str]] = {}
    for peer, answer in said.items():
        if uuid := _founding_of(answer):
            backers.setdefault(uuid, set()).add(peer)
    for uuid, backing in backers.items():
        members = set(backing)
        for peer in backing:
            members |= _named_members(said[peer])
        if len(backing) * 2 <= len(members):
            continue
        everyone = members | set(listed)
        if len(backing) * 2 > len(everyone):
            return uuid
        rivals = (len(b) for u, b in backers.items() if u != uuid)
        if everyone <= said.keys() and all(len(backing) > n for n in rivals):
            return uuid
    return None


def describe_answers(answers: Mapping[str, Any], listed: Sequence[str]) -> str:
    """What each peer asked answered, for the error that no founding was settled on."""
    said = []
    for peer in dict.fromkeys([*listed, *answers]):
        answer = answers.get(peer)
        if isinstance(answer, dict):
            uuid = _founding_of(answer)
            said.append(f"{peer}: {uuid[:8] if uuid else 'not founded'}")
        else:
            said.append(f"{peer}: no answer")
    return ", ".join(said)


class FoundingPin:
    """A session's founding: empty until pinned, then fixed for the session's life."""

    def __init__(self, cluster_uuid: str | None = None) -> None:
        if cluster_uuid is not None and (
            not isinstance(cluster_uuid, str) or not 0 < len(cluster_uuid) <= MAX_ORIGIN_PART_LEN
        ):
            raise ValueError(
                f"cluster_uuid must be a string of 1 to {MAX_ORIGIN_PART_LEN} characters "
                "(a peer's founding, as `zraft status` shows it)"
            )
        self.uuid = cluster_uuid or ""
        self.others: dict[str, str] = {}  # peer -> the founding it refused us with

    def needed(self, op: str) -> bool:
        """Whether ``op`` must wait for a pin: anything but the founding-free ops."""
        return not self.uuid and op not in FOUNDING_FREE_OPS

    def refused_by(self, peer: str, reason: str) -> OtherFounding:
        """``peer`` refused a request as of another founding: warn once, say why."""
        if peer not in self.others:
            log.warning(
                "%s belongs to another founding than this session's %s: skipping it (%s)",
                peer, self.uuid[:8], reason,
            )  # fmt: skip
        self.others[peer] = reason
        return OtherFounding(f"{peer}: {reason}")

    def all_refused(self) -> OtherFounding:
        """Every listed peer refused us: the founding this session talked to is gone."""
        return OtherFounding(
            f"every listed peer belongs to another founding than this session's {self.uuid[:8]} "
            f"(was the cluster founded again?): {'; '.join(self.others.values())}"
        )

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
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

from zraft.transport import FOUNDING_FREE_OPS

from .errors import OtherFounding

log = logging.getLogger(__name__)

# How long one round of asking the listed peers their founding waits for answers.
FOUNDING_ROUND = 0.5


def agreed_founding(
    answers: Mapping[str, Any], listed: Sequence[str], final: bool = False
) -> str | None:
    """The founding the ``listed`` peers' ``identity`` answers (by peer) settle on, or None.

    Settled at once when more than half of the listed peers answered with one founding.
    Peers that answer "not founded" hold no state (joiners about to be added, say, to a
    cluster founded by one peer), so once every listed peer answered, or the asking is over
    (``final``), it is also settled when more than half of the listed peers answered at all
    and more than half of the founded ones answered with one founding.
    """
    members = set(listed)
    said = {peer: a for peer, a in answers.items() if peer in members and isinstance(a, dict)}
    counts = Counter(a.get("cluster_uuid") for a in said.values())
    counts.pop("", None)
    counts.pop(None, None)
    if not counts:
        return None
    ((uuid, count),) = counts.most_common(1)
    if not isinstance(uuid, str):
        return None
    if count > len(members) // 2:
        return uuid
    if not (final or len(said) == len(members)):
        return None
    if len(said) > len(members) // 2 and count > sum(counts.values()) // 2:
        return uuid
    return None


def describe_answers(answers: Mapping[str, Any], listed: Sequence[str]) -> str:
    """What each listed peer answered, for the error that no founding was agreed on."""
    said = []
    for peer in listed:
        answer = answers.get(peer)
        if isinstance(answer, dict):
            uuid = answer.get("cluster_uuid")
            said.append(f"{peer}: {str(uuid)[:8] if uuid else 'not founded'}")
        else:
            said.append(f"{peer}: no answer")
    return ", ".join(said)


class FoundingPin:
    """A session's founding: empty until pinned, then fixed for the session's life."""

    def __init__(self, cluster_uuid: str | None = None) -> None:
        if cluster_uuid is not None and (not isinstance(cluster_uuid, str) or not cluster_uuid):
            raise ValueError("cluster_uuid must be a non-empty string (see `zraft status`)")
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

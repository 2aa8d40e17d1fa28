"""Which peer to ask next: the believed leader first, skipping peers that failed lately.

The rules of zraft's light session: the head of the list is the believed leader; a peer
that failed (down, unreachable, silent) is skipped for ``fail_timeout``; a peer that said
"not leader" is skipped for ``election_timeout``, and the leader it named moves to the head.
Both go to the back of the list, so the search rotates through every peer instead of
cycling among a few dead ones whose stamps expire in turn.
Unlike the original, a hint naming a peer that failed lately is not followed: followers keep
naming a dead or paused leader until they elect a new one, and following them would send
us straight back to it (zraft_lib issue #33).

Pure: the clock is injected, so tests drive it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class LeaderTracker:
    def __init__(
        self,
        peers: Iterable[str],
        fail_timeout: float,
        election_timeout: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peers: list[str] = list(dict.fromkeys(peers))
        if not self.peers:
            raise ValueError("a session needs at least one peer")
        self.fail_timeout = fail_timeout
        self.election_timeout = election_timeout
        self.clock = clock
        self.failed_until: dict[str, float] = {}
        self.not_leader_until: dict[str, float] = {}

    @property
    def leader(self) -> str:
        """The believed leader (a guess until a request succeeds)."""
        return self.peers[0]

    def _failed(self, peer: str, now: float) -> bool:
        return self.failed_until.get(peer, 0.0) > now

    def _not_leader(self, peer: str, now: float) -> bool:
        return self.not_leader_until.get(peer, 0.0) > now

    def choose(self) -> str | None:
        """The peer to ask now, or None if every peer is to be skipped for a while."""
        if not self.failed_until and not self.not_leader_until:
            return self.peers[0]  # the usual case, once per request: no clock needed
        now = self.clock()
        for peer in self.peers:
            if not self._failed(peer, now) and not self._not_leader(peer, now):
                return peer
        return None

    def all_failed(self) -> bool:
        now = self.clock()
        return all(self._failed(peer, now) for peer in self.peers)

    def wait_time(self) -> float:
        """How long until some peer may be asked again (0 if one may be asked now)."""
        now = self.clock()
        soonest = min(
            max(self.failed_until.get(p, 0.0), self.not_leader_until.get(p, 0.0))
            for p in self.peers
        )
        return max(0.0, soonest - now)

    def succeeded(self, peer: str) -> None:
        if self.failed_until:
            self.failed_until.pop(peer, None)
        if self.not_leader_until:
            self.not_leader_until.pop(peer, None)
        if self.peers[0] != peer:  # once per request: usually the head already
            self._to_head(peer)

    def failed(self, peer: str) -> None:
        self.failed_until[peer] = self.clock() + self.fail_timeout
        self._to_tail(peer)  # rotate: never cycle among a few dead peers at the head

    def not_leader(self, peer: str, hint: str | None) -> None:
        now = self.clock()
        self.not_leader_until[peer] = now + self.election_timeout
        self._to_tail(peer)
        if hint is None or hint == peer or self._failed(hint, now):
            return
        self.not_leader_until.pop(hint, None)
        self._to_head(hint)

    def set_peers(self, peers: Iterable[str]) -> None:
        """The membership changed: keep the order of known peers, append new ones."""
        wanted = list(dict.fromkeys(peers))
        if not wanted:
            return
        kept = [p for p in self.peers if p in wanted]
        self.peers = kept + [p for p in wanted if p not in kept]

    def _to_tail(self, peer: str) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
            self.peers.append(peer)

    def _to_head(self, peer: str) -> None:
        if peer in self.peers:
            self.peers.remove(peer)
        self.peers.insert(0, peer)

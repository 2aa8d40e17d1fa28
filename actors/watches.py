"""One-shot watches, kept on the leader only (like ZooKeeper's, which live on the server a
client is connected to). Plain and synchronous; the state machine actor drives it.

A watch is armed by a linearizable query at the moment the query is evaluated, so no write
between the read and the arming is missed. A committed write (or a session expiry) whose
trigger keys match fires it once, with reason ``change``; losing leadership fires every
watch with ``change_leader`` and starts a new table (a new ``epoch``). Events wait, in
commit order, until the session's next poll takes them; a poll with nothing to take is
held until an event comes or its deadline passes (long polling: no server push needed).

Nothing here is replicated: each leader builds its own table from the queries it serves.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from zraft.backends.base import WatchSpec

log = logging.getLogger(__name__)

CHANGE = "change"
CHANGE_LEADER = "change_leader"

Identity = bytes
WatchRef = tuple[str, int]  # (session id, watch id)
# An event on the wire: [event seq, watch id, reason, key or None, log index (0: none)]
Event = list[Any]


@dataclass(slots=True)
class HeldPoll:
    identity: Identity
    request_id: int
    deadline: float


@dataclass(slots=True)
class PollAnswer:
    """A poll to answer now: ``events`` (possibly empty), or ``error`` for the session."""

    identity: Identity
    request_id: int
    epoch: str
    events: list[Event]
    error: str | None = None


class WatchTable:
    def __init__(self, peer_id: str, max_per_session: int = 100_000) -> None:
        self.peer_id = peer_id
        self.max_per_session = max_per_session
        self.fired = 0  # watches fired since start (a metric)
        self._epochs = itertools.count(1)
        # A process-unique part: a restarted peer must never reuse an earlier epoch.
        self._nonce = os.urandom(4).hex()
        self._reset()

    def _reset(self) -> None:
        self.epoch = f"{self.peer_id}/{self._nonce}/{next(self._epochs)}"
        self._specs: dict[WatchRef, WatchSpec] = {}
        self._per_session: dict[str, set[int]] = {}
        self._by_key: dict[str, set[WatchRef]] = {}
        self._by_prefix: dict[str, set[WatchRef]] = {}
        self._longest_prefix = -1
        self._events: dict[str, list[Event]] = {}
        self._polls: dict[str, HeldPoll] = {}
        self._event_seq = itertools.count(1)

    def __len__(self) -> int:
        return len(self._specs)

    @property
    def idle(self) -> bool:
        return not self._specs and not self._polls and not self._events

    # ------------------------------------------------------------------ arming

    def arm(self, session: str, watch_id: int, spec: WatchSpec) -> str | None:
        """Arm a watch; returns why not, or None. Arming an armed id again (a client's
        retry, whose first answer was lost) replaces it: the retry's read is the newer."""
        ids = self._per_session.setdefault(session, set())
        if watch_id in ids:
            self._disarm((session, watch_id))
            ids = self._per_session.setdefault(session, set())
        if len(ids) >= self.max_per_session:
            return f"a session may hold at most {self.max_per_session} watches"
        ref = (session, watch_id)
        ids.add(watch_id)
        self._specs[ref] = spec
        for key in spec.keys:
            self._by_key.setdefault(key, set()).add(ref)
        for prefix in spec.prefixes:
            self._by_prefix.setdefault(prefix, set()).add(ref)
            self._longest_prefix = max(self._longest_prefix, len(prefix))
        return None

    def _disarm(self, ref: WatchRef) -> None:
        spec = self._specs.pop(ref)
        for key in spec.keys:
            _discard(self._by_key, key, ref)
        for prefix in spec.prefixes:
            _discard(self._by_prefix, prefix, ref)
        ids = self._per_session.get(ref[0])
        if ids is not None:
            ids.discard(ref[1])
            if not ids:
                del self._per_session[ref[0]]

    # ------------------------------------------------------------------ firing

    def fire(self, index: int, keys: Iterable[str]) -> set[str]:
        """A write committed at ``index`` touched ``keys``: fire what watches them.
        Returns the sessions that got events."""
        if not self._specs:
            return set()
        fired: dict[WatchRef, str] = {}
        for key in sorted(keys):  # sorted: the reported key does not depend on set order
            for ref in self._by_key.get(key, ()):
                fired.setdefault(ref, key)
            if self._by_prefix:
                for length in range(min(len(key), self._longest_prefix) + 1):
                    for ref in self._by_prefix.get(key[:length], ()):
                        fired.setdefault(ref, key)
        touched = set()
        self.fired += len(fired)
        for ref, key in sorted(fired.items()):
            self._disarm(ref)
            self._push(ref[0], [next(self._event_seq), ref[1], CHANGE, key, index])
            touched.add(ref[0])
        return touched

    def _push(self, session: str, event: Event) -> None:
        self._events.setdefault(session, []).append(event)

    def end_session(self, session: str) -> list[PollAnswer]:
        """The session closed or expired: its watches go, a held poll hears why."""
        for watch_id in list(self._per_session.get(session, ())):
            self._disarm((session, watch_id))
        self._events.pop(session, None)
        held = self._polls.pop(session, None)
        if held is None:
            return []
        return [PollAnswer(held.identity, held.request_id, self.epoch, [], "session_expired")]

    def lose_leadership(self) -> list[PollAnswer]:
        """No longer leader: every watch fires ``change_leader``; held polls take their
        events now (the client moves to the new leader next); the table starts afresh."""
        self.fired += len(self._specs)
        for ref in sorted(self._specs):
            self._push(ref[0], [next(self._event_seq), ref[1], CHANGE_LEADER, None, 0])
        answers = [
            PollAnswer(held.identity, held.request_id, self.epoch, self._events.get(session, []))
            for session, held in self._polls.items()
        ]
        if self._specs:
            log.info("%s: leadership lost: %d watch(es) fired", self.peer_id, len(self._specs))
        self._reset()
        return answers

    # ------------------------------------------------------------------ polling

    def poll(
        self,
        session: str,
        identity: Identity,
        request_id: int,
        epoch: str,
        after: int,
        deadline: float,
    ) -> list[PollAnswer]:
        """Take the events after ``after`` (of this ``epoch``), or hold the poll until one
        comes or ``deadline``. A newer poll of the session answers the one it replaces."""
        answers = []
        previous = self._polls.pop(session, None)
        if previous is not None:
            answers.append(PollAnswer(previous.identity, previous.request_id, self.epoch, []))
        events = self._events.get(session)
        if events and epoch == self.epoch:
            # Events up to ``after`` reached the client: forget them.
            keep = [e for e in events if e[0] > after]
            if keep:
                self._events[session] = keep
            else:
                del self._events[session]
            events = keep
        if events:
            answers.append(PollAnswer(identity, request_id, self.epoch, list(events)))
        else:
            self._polls[session] = HeldPoll(identity, request_id, deadline)
        return answers

    def deliver(self, sessions: Iterable[str]) -> list[PollAnswer]:
        """Answer the held polls of ``sessions`` (which just got events)."""
        answers = []
        for session in sessions:
            held = self._polls.pop(session, None)
            if held is not None:
                events = list(self._events.get(session, ()))
                answers.append(PollAnswer(held.identity, held.request_id, self.epoch, events))
        return answers

    def expire_polls(self, now: float) -> list[PollAnswer]:
        """Held polls whose deadline passed are answered empty (the client polls again)."""
        due = [s for s, held in self._polls.items() if held.deadline <= now]
        answers = []
        for session in due:
            held = self._polls.pop(session)
            answers.append(PollAnswer(held.identity, held.request_id, self.epoch, []))
        return answers


def _discard(index: dict[str, set[WatchRef]], key: str, ref: WatchRef) -> None:
    refs = index.get(key)
    if refs is not None:
        refs.discard(ref)
        if not refs:
            del index[key]

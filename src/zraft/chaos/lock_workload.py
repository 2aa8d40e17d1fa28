"""The ``lock`` workload: long-lived sessions, temporary keys and a lock with fencing tokens.

Each client holds a :class:`~zraft.session.Session` (1.5 s timeout; a new one after an
expiry) with a temporary presence key, and loops: take ``Lock(session, "locks/chaos")``
with a holder name unique to the acquisition, append ``[token, holder]`` to a shared
fencing-aware resource (``fenced_append`` of :mod:`zraft.chaos.backend`, a plain
:class:`~zraft.session.LightSession` write: the resource is outside the lock's session),
release. Every 25th acquisition of a client plays a holder that loses its lock unawares:
its session ends under it, and it writes to the resource with its old token after a newer
holder did (the resource must refuse it). After an outcome it cannot know (a timeout
while taking or releasing the lock) the client closes its session, which drops whatever
the session may hold, and opens another: otherwise a lock taken unbeknownst to it would
stay taken by its own live session.

The check needs no log (it gets compacted, peers get wiped): the chaos backend audits the
lock key itself, in apply order (creations with their holder, removals, overwrites), and
the final read fetches that audit, the resource, and what temporary keys are left once
every session has ended. :func:`check_lock` then demands:

* no overwrite of a held lock;
* every acknowledged acquisition is a creation in the audit with its (unique) holder, no
  holder created twice, none created that was never invoked;
* acknowledged acquisitions ordered by token (the log index of the write that created the
  key; a retry reports its first copy's) follow the audit's creation order; every
  acknowledged release is the removal (by delete) of its holder's hold, the very next event
  on the key after its creation, and its index is above the token of every hold the audit
  puts before that removal;
* the resource's tokens never decrease, one token belongs to one holder, every
  acknowledged append is there exactly once, a refused one is absent, nothing is invented;
* no temporary key outlives its session (presence keys and the lock, after the clients
  closed their sessions).

Unknown outcomes may be present or absent.
"""

from __future__ import annotations

import itertools
import logging
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from zraft.backends import kv
from zraft.linearizability import Operation, Status
from zraft.session import ClientError, LightSession, Session, ZraftError
from zraft.session.recipes import Lock

from .backend import CREATED, DELETED, OVERWRITTEN, fenced_append, lock_audit
from .workloads import ClientContext, Verdict, Workload, _tally

log = logging.getLogger(__name__)

LOCK_KEY: Final = "locks/chaos"
RESOURCE: Final = "fenced/chaos"
PRESENCE: Final = "presence/"
SESSION_TIMEOUT: Final = 1.5  # seconds
ACQUIRE_TIMEOUT: Final = 4.0  # seconds one acquisition may wait
ZOMBIE_EVERY: Final = 25  # every 25th acquisition of a client loses its lock unawares
ZOMBIE_WAIT: Final = 2.0  # seconds such a holder waits for a newer one before writing
_LISTED: Final = 8  # items named in one anomaly line


class LockWorkload(Workload):
    """See the module docstring."""

    name = "lock"
    clients = 3

    def __init__(self, seed: int, history_path: Path | None = None) -> None:
        super().__init__(seed, history_path)
        self._numbers: dict[int, itertools.count[int]] = defaultdict(itertools.count)
        self._sessions: dict[int, Session | None] = {}
        # Filled by final_read (None: not read).
        self.audit: list[list[Any]] | None = None
        self.resource: list[Any] | None = None
        self.leftovers: list[str] | None = None

    # ------------------------------------------------------------------ clients

    def run_client(self, client: int, context: ClientContext, stop: threading.Event) -> None:
        rng = random.Random(f"{self.seed}-{self.name}-{client}")
        with context.session() as storage:
            try:
                while not stop.is_set():
                    if self._sessions.get(client) is None and not self._open(client, context, stop):
                        continue
                    try:
                        self.operate(client, storage, rng, context.op_timeout)
                    except Exception:  # a bug in the workload must not kill the run silently
                        log.exception("%s client %d", self.name, client)
                        self._abandon(client)
                        stop.wait(0.1)
            finally:
                self._abandon(client)

    def _open(self, client: int, context: ClientContext, stop: threading.Event) -> bool:
        """A new session with its presence key; False (after a pause) if none could open."""
        try:
            session = Session(
                list(context.peers),
                session_timeout=SESSION_TIMEOUT,
                cluster_id=context.cluster_id,
                election_timeout=context.election_timeout,
            )
        except ZraftError as error:  # no leader now, say: try again shortly
            log.debug("lock client %d: opening a session: %s", client, error)
            stop.wait(0.2)
            return False
        self._sessions[client] = session
        key = f"{PRESENCE}{client}"
        self.record(
            client, "presence", key,
            lambda: session.write(kv.put(key, session.session_id), context.op_timeout,
                                  temporary=True)["created"],
            value=session.session_id,
        )  # fmt: skip
        return True

    def _abandon(self, client: int) -> None:
        """Close the client's session (its temporary keys go with it): after an unknown
        outcome it may hold the lock without knowing."""
        session = self._sessions.pop(client, None)
        if session is None:
            return
        try:
            session.close()
        except ZraftError as error:  # it expires on its own
            log.debug("lock client %d: closing its session: %s", client, error)

    def operate(
        self, client: int, session: LightSession, rng: random.Random, timeout: float
    ) -> None:
        """One acquisition, a fenced append inside it, a release. ``session`` is the
        plain session used for the resource; the lock's session is the client's own."""
        own = self._sessions.get(client)
        if own is None:
            return
        holder = f"{client}-{next(self._numbers[client])}"
        lock = Lock(own, LOCK_KEY, holder=holder)
        tokens: list[int] = []

        def acquire() -> int:
            tokens.append(lock.acquire(timeout=ACQUIRE_TIMEOUT))
            return tokens[-1]

        status = self.record(client, "acquire", LOCK_KEY, acquire, value=holder)
        if status is not Status.OK:
            self._abandon(client)  # the lock may be ours; a new session lets go of it
            return
        token = tokens[0]
        if int(holder.split("-")[1]) % ZOMBIE_EVERY == ZOMBIE_EVERY - 1:
            self._zombie(client, session, token, holder, timeout)
            return
        time.sleep(rng.uniform(0.0, 0.03))  # work inside the hold: where a pause hurts
        self.record(
            client, "append", RESOURCE,
            lambda: session.write(fenced_append(RESOURCE, token, holder), timeout)["appended"],
            value=[token, holder],
        )  # fmt: skip
        status = self.record(client, "release", LOCK_KEY, lock.release, value=holder)
        if status is not Status.OK or own.expired:
            self._abandon(client)

    def _zombie(
        self, client: int, storage: LightSession, token: int, holder: str, timeout: float
    ) -> None:
        """A holder whose session ends under it (closed here, as an expiry would end it)
        and who then writes with its old token, once a newer holder wrote or after
        ``ZOMBIE_WAIT``: the resource must refuse it if a newer token got there first."""
        self._abandon(client)  # the hold ends with the session
        deadline = time.monotonic() + ZOMBIE_WAIT
        while time.monotonic() < deadline:
            try:
                current = storage.query(kv.get(RESOURCE), timeout)
            except ClientError:
                break
            if current["found"] and current["value"] and current["value"][-1][0] > token:
                break
            time.sleep(0.05)
        self.record(
            client, "append", RESOURCE,
            lambda: storage.write(fenced_append(RESOURCE, token, holder), timeout)["appended"],
            value=[token, holder],
        )  # fmt: skip

    # ------------------------------------------------------------------ after the run

    def final_read(self, session: LightSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            # Every client closed its session; one whose close was lost expires within its
            # timeout. Wait for their temporary keys to go, then read what stayed.
            leftovers = self._temporary_keys(session, deadline)
            while leftovers and time.monotonic() < deadline - timeout / 2:
                time.sleep(0.2)
                leftovers = self._temporary_keys(session, deadline)
            resource = session.query(kv.get(RESOURCE), _left(deadline))
            audit: list[list[Any]] = []
            more = True
            while more:
                page = session.query(lock_audit(audit[-1][0] if audit else 0), _left(deadline))
                audit.extend(page["events"])
                more = page["more"]
        except ClientError as error:
            log.warning("lock workload: final read failed: %s", error)
            return
        self.leftovers = leftovers
        self.resource = list(resource["value"]) if resource["found"] else []
        self.audit = audit

    @staticmethod
    def _temporary_keys(session: LightSession, deadline: float) -> list[str]:
        listed = session.query(kv.list_prefix(PRESENCE, keys_only=True), _left(deadline))
        lock = session.query(kv.get(LOCK_KEY), _left(deadline))
        return [*listed["keys"], *([LOCK_KEY] if lock["found"] else [])]

    def check(self, timeout: float) -> Verdict:
        ops = self.history.operations()
        verdict = _tally(self.name, ops)
        if self.audit is None or self.resource is None or self.leftovers is None:
            verdict.ok = None
            verdict.anomalies.append("final read failed: the lock audit is unchecked")
            return verdict
        result = check_lock(ops, self.audit, self.resource, self.leftovers)
        verdict.anomalies.extend(result.anomalies + result.unchecked)
        if result.anomalies:
            verdict.ok = False
        elif result.unchecked:
            verdict.ok = None
        verdict.detail = result.describe()
        return verdict


def _left(deadline: float) -> float:
    return max(0.1, deadline - time.monotonic())


# --------------------------------------------------------------------------- checker


@dataclass(slots=True)
class LockCheck:
    """What :func:`check_lock` found, and what it counted."""

    anomalies: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    acquired: int = 0  # acknowledged acquisitions, each matched against the audit
    unknown_acquisitions: int = 0
    released: int = 0
    appended: int = 0
    fenced_off: int = 0  # appends the resource refused (a newer token was there)
    audit_events: int = 0

    def describe(self) -> str:
        head = (
            f"lock: {self.acquired} acknowledged acquisitions ({self.unknown_acquisitions} "
            f"unknown), {self.released} releases, {self.appended} fenced appends "
            f"({self.fenced_off} refused as stale), {self.audit_events} audit events"
        )
        problems = self.anomalies + self.unchecked
        if not problems:
            return head + "; no anomaly"
        return head + "\n" + "\n".join(f"  {p}" for p in problems)


def check_lock(
    ops: Sequence[Operation],
    audit: Sequence[Sequence[Any]],
    resource: Sequence[Any],
    leftovers: Sequence[str] = (),
) -> LockCheck:
    """Judge a lock workload's history against the backend's lock audit (events
    ``[n, kind, key, holder]`` in apply order), the fenced resource's final list and the
    temporary keys left after every session ended. See the module docstring."""
    result = LockCheck(audit_events=len(audit))
    if audit and audit[0][0] != 1:
        result.unchecked.append(f"the lock audit lost its first {audit[0][0] - 1} events")
        return result
    events = [e for e in audit if e[2] == LOCK_KEY]
    _note(result.anomalies, "overwrites of the held lock (audit event, new holder)",
          [f"#{e[0]} {e[3]}" for e in events if e[1] == OVERWRITTEN])  # fmt: skip
    created: dict[str, int] = {}  # holder -> position in events
    twice = []
    for position, event in enumerate(events):
        if event[1] == CREATED:
            if event[3] in created:
                twice.append(event[3])
            created[event[3]] = position
    _note(result.anomalies, "holders whose lock was created twice", twice)
    mine = [op for op in ops if op.key == LOCK_KEY or op.key == RESOURCE]
    invoked = {op.value for op in mine if op.op == "acquire"}
    _note(result.anomalies, "lock creations never invoked (holder)",
          [h for h in created if h not in invoked])  # fmt: skip

    taken: list[tuple[int, int, str]] = []  # acknowledged: (token, audit position, holder)
    released: list[tuple[int, int, str]] = []  # (release index, removal position, holder)
    missing, wrong_release, lost_release = [], [], []
    for op in mine:
        if op.op == "acquire":
            if op.status is not Status.OK:
                result.unknown_acquisitions += op.status is Status.UNKNOWN
                continue
            result.acquired += 1
            if op.value not in created:
                missing.append(f"{op.value} (token {op.output})")
            else:
                taken.append((op.output, created[op.value], op.value))
        elif op.op == "release" and op.status is Status.OK:
            start = created.get(op.value)
            after = events[start + 1] if start is not None and start + 1 < len(events) else None
            removed = after is not None and after[1] == DELETED and after[3] == op.value
            if op.output is None:
                if removed:  # it said there was nothing to release, yet it deleted
                    lost_release.append(f"{op.value} (#{after[0]})")  # type: ignore[index]
                continue
            result.released += 1
            if start is None or not removed:
                shown = "nothing" if after is None else f"#{after[0]} {after[1]} {after[3]}"
                wrong_release.append(f"{op.value} at {op.output} (next audit event: {shown})")
            else:
                released.append((op.output, start + 1, op.value))
    _note(result.anomalies, "acknowledged acquisitions not in the lock audit", missing)
    _note(result.anomalies, "acknowledged releases that were not the removal of their hold",
          wrong_release)  # fmt: skip
    _note(result.anomalies, "releases answering 'not held' that deleted the hold", lost_release)
    # A token is the index of the write that created the key, so tokens sort like the
    # holds. The audit has no log indexes, so a release's index is only bounded below, by
    # every token of a hold before its removal.
    taken.sort()
    disorder = [
        f"{b[2]} (token {b[0]}, audit #{events[b[1]][0]}) before {a[2]} (token {a[0]}, "
        f"audit #{events[a[1]][0]})"
        for a, b in itertools.pairwise(taken)
        if b[1] <= a[1] or b[0] == a[0]
    ]
    _note(result.anomalies, "acquisitions out of audit order (by token)", disorder)
    early = []
    for index, removal, holder in released:
        before = [(token, who) for token, position, who in taken if position < removal]
        if before and max(before)[0] >= index:
            token, who = max(before)
            early.append(f"{holder} released at {index}, yet {who} took it before at {token}")
    _note(result.anomalies, "releases indexed before the acquisitions they follow", early)
    _check_resource(result, mine, resource)
    _note(result.anomalies, "temporary keys outlived their sessions", list(leftovers))
    return result


def _check_resource(result: LockCheck, ops: Sequence[Operation], resource: Sequence[Any]) -> None:
    entries = []
    for item in resource:
        if not (isinstance(item, list) and len(item) == 2 and type(item[0]) is int):
            result.anomalies.append(f"the resource holds a malformed entry {item!r}")
            return
        entries.append((item[0], item[1]))
    tokens = [token for token, _ in entries]
    _note(result.anomalies, "resource tokens decreasing (token after a higher one)",
          [b for a, b in itertools.pairwise(tokens) if b < a])  # fmt: skip
    holders: dict[int, set[str]] = defaultdict(set)
    for token, holder in entries:
        holders[token].add(holder)
    _note(result.anomalies, "resource tokens used by two holders",
          [f"{t}: {sorted(h)}" for t, h in holders.items() if len(h) > 1])  # fmt: skip
    seen = Counter(entries)
    appends = [op for op in ops if op.op == "append"]
    invoked = {(op.value[0], op.value[1]) for op in appends}
    lost, refused_present = [], []
    for op in appends:
        entry = (op.value[0], op.value[1])
        if op.status is not Status.OK:
            continue
        if op.output:
            result.appended += 1
            if entry not in seen:
                lost.append(entry)
        else:
            result.fenced_off += 1
            if entry in seen:
                refused_present.append(entry)
    _note(result.anomalies, "acknowledged appends lost", lost)
    _note(result.anomalies, "appends applied twice", [e for e, n in seen.items() if n > 1])
    _note(result.anomalies, "refused appends present", refused_present)
    _note(result.anomalies, "appends never invoked", [e for e in seen if e not in invoked])


def _note(problems: list[str], what: str, items: list[Any]) -> None:
    if items:
        shown = ", ".join(map(str, items[:_LISTED])) + (" ..." if len(items) > _LISTED else "")
        problems.append(f"{len(items)} {what}: {shown}")

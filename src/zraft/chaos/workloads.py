"""Workloads of the fault suite: what the clients do, what they record, how it is checked.

A workload is a class with a ``name``, the ``backend`` its peers must run, a client loop
that records every operation in a :class:`~zraft.linearizability.History` (invoke, then
ok, fail or unknown), a final read once the faults have healed, and a ``check`` that turns
the history into a :class:`Verdict`. New workloads (sessions with a lock, Casbin policies)
subclass :class:`Workload` and are named in ``registry.WORKLOADS``; workloads run together in
one cluster when they name the same backend.

Outcomes, for every workload: a reply is ``ok``; a refusal the backend gives on every peer
(``Rejected``) is ``fail`` (it did not happen); anything else (timeout, no leader reachable)
is ``unknown``: it may have happened, now or later.
"""

from __future__ import annotations

import abc
import asyncio
import bisect
import itertools
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from zraft.backends import kv
from zraft.linearizability import History, Operation, Status, check
from zraft.session import (
    AllPeersFailed,
    AsyncLightSession,
    ClientError,
    LightSession,
    Rejected,
)

from .backend import count, incr

log = logging.getLogger(__name__)

CHAOS_BACKEND = "zraft.chaos.backend:ChaosBackend"
FINAL_CLIENT = "final"  # the client name of reads made after the faults healed


@dataclass(frozen=True, slots=True)
class ClientContext:
    """What a client needs to reach the cluster."""

    peers: tuple[str, ...]
    cluster_id: str
    election_timeout: float  # seconds
    op_timeout: float  # seconds one operation may take before it is "unknown"

    def session(self) -> LightSession:
        return LightSession(
            list(self.peers), cluster_id=self.cluster_id, election_timeout=self.election_timeout
        )


@dataclass(slots=True)
class Verdict:
    """How one workload's history checked out. ``ok`` is None when a checker gave up."""

    workload: str
    ok: bool | None
    operations: int
    completed: int
    failed: int
    unknown: int
    anomalies: list[str] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "workload": self.workload,
            "ok": self.ok,
            "operations": self.operations,
            "completed": self.completed,
            "failed": self.failed,
            "unknown": self.unknown,
            "anomalies": self.anomalies,
            "detail": self.detail,
        }


def _tally(workload: str, ops: list[Operation]) -> Verdict:
    statuses = Counter(op.status for op in ops)
    return Verdict(
        workload,
        True,
        len(ops),
        statuses[Status.OK],
        statuses[Status.FAIL],
        statuses[Status.UNKNOWN],
    )


class Workload(abc.ABC):
    """One kind of traffic and its checker. Subclasses set ``name`` and may set ``backend``
    and ``clients`` (how many client threads by default)."""

    name: ClassVar[str]
    backend: ClassVar[str] = CHAOS_BACKEND
    clients: ClassVar[int] = 2

    def __init__(self, seed: int, history_path: Path | None = None) -> None:
        self.seed = seed
        self.history = History(path=history_path)

    @abc.abstractmethod
    def operate(
        self, client: int, session: LightSession, rng: random.Random, timeout: float
    ) -> None:
        """Invoke one operation, record it and its outcome in ``self.history``."""

    @abc.abstractmethod
    def final_read(self, session: LightSession, timeout: float) -> None:
        """After every fault healed: read back what the check needs (recorded too), within
        ``timeout`` seconds in all."""

    @abc.abstractmethod
    def check(self, timeout: float) -> Verdict:
        """Judge the history (and the final read)."""

    def run_client(self, client: int, context: ClientContext, stop: threading.Event) -> None:
        """A client thread's loop: operations back to back until ``stop``."""
        rng = random.Random(f"{self.seed}-{self.name}-{client}")
        with context.session() as session:
            while not stop.is_set():
                try:
                    self.operate(client, session, rng, context.op_timeout)
                except Exception:  # a bug in a workload must not kill the run silently
                    log.exception("%s client %d", self.name, client)
                    stop.wait(0.1)

    def record(
        self,
        client: int | str,
        op: str,
        key: str,
        call: Callable[[], Any],
        *,
        value: Any = None,
        expected: Any = None,
    ) -> Status:
        """Invoke ``call`` between an invoke and its outcome in the history."""
        handle = self.history.invoke(client, op, key, value=value, expected=expected)
        try:
            output = call()
        except Rejected:
            self.history.fail(handle)
            return Status.FAIL
        except AllPeersFailed:
            self.history.unknown(handle)
            time.sleep(0.05)  # everyone is down: do not spin
            return Status.UNKNOWN
        except ClientError:
            self.history.unknown(handle)
            return Status.UNKNOWN
        self.history.ok(handle, output)
        return Status.OK

    def close(self) -> None:
        self.history.close()


# --------------------------------------------------------------------------- register


class RegisterWorkload(Workload):
    """Read, write and compare-and-set on a few registers at a time, checked per key for
    linearizability. Each key takes a bounded number of operations before the clients move
    on to fresh keys, so histories stay cheap to check (Jepsen's "independent" keys)."""

    name = "kv"
    clients = 3
    KEYS_AT_ONCE = 3
    OPS_PER_KEY = 120
    VALUES = 5

    def __init__(self, seed: int, history_path: Path | None = None) -> None:
        super().__init__(seed, history_path)
        self._numbers = itertools.count()
        self._lock = threading.Lock()
        self.keys: set[str] = set()

    def _key(self, rng: random.Random) -> str:
        with self._lock:
            generation = next(self._numbers) // (self.OPS_PER_KEY * self.KEYS_AT_ONCE)
            key = f"reg-{generation}-{rng.randrange(self.KEYS_AT_ONCE)}"
            self.keys.add(key)
            return key

    def operate(
        self, client: int, session: LightSession, rng: random.Random, timeout: float
    ) -> None:
        key = self._key(rng)
        roll = rng.random()
        value = rng.randrange(self.VALUES)
        if roll < 0.4:
            self.record(client, "read", key, lambda: _read(session, key, timeout))
        elif roll < 0.7:
            self.record(
                client, "write", key, lambda: _write(session, kv.put(key, value), timeout),
                value=value,
            )  # fmt: skip
        else:
            expected = rng.choice([None, *range(self.VALUES)])
            self.record(
                client, "cas", key,
                lambda: session.write(kv.cas(key, expected, value), timeout)["swapped"],
                value=value, expected=expected,
            )  # fmt: skip

    def final_read(self, session: LightSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for key in sorted(self.keys):
            left = deadline - time.monotonic()
            if left <= 0:  # the check then says the final reads are incomplete
                log.warning("final reads: out of time before %s", key)
                return
            self.record(FINAL_CLIENT, "read", key, lambda k=key, t=left: _read(session, k, t))  # type: ignore[misc]

    def check(self, timeout: float) -> Verdict:
        ops = self.history.operations()
        verdict = _tally(self.name, ops)
        finals = [op for op in ops if op.client == FINAL_CLIENT]
        if len(finals) < len(self.keys) or any(op.status is not Status.OK for op in finals):
            verdict.ok = None
            verdict.anomalies.append("final reads did not all complete: lost writes unchecked")
        result = check(ops, timeout=timeout, shrink_timeout=min(30.0, timeout))
        verdict.detail = result.describe()
        if result.ok is False:
            verdict.ok = False
            for failure in result.failures:
                verdict.anomalies.append(f"key {failure.key!r} is not linearizable")
        elif result.ok is None and verdict.ok is not False:
            verdict.ok = None
            verdict.anomalies.append("linearizability checker gave up (timeout)")
        return verdict


def _write(session: LightSession, command: Any, timeout: float) -> None:
    session.write(command, timeout)  # the register model ignores a write's output


def _read(session: LightSession, key: str, timeout: float) -> Any:
    result = session.query(kv.get(key), timeout)
    return result["value"] if result["found"] else None


# --------------------------------------------------------------------------- counter


class CounterWorkload(Workload):
    """Increments with unique ids (appended to a list by the backend) and reads of the count.

    Checked: every acknowledged increment is in the final list (nothing lost), no id is in
    it twice (nothing doubled), every id in it was invoked and none that certainly failed
    (nothing invented), and every read returns a count between the increments acknowledged
    before it began and those invoked before it returned (no stale or future read)."""

    name = "counter"
    clients = 2
    KEYS = 2

    def __init__(self, seed: int, history_path: Path | None = None) -> None:
        super().__init__(seed, history_path)
        self._ids = itertools.count()
        self.final: dict[str, list[Any] | None] = {}

    def operate(
        self, client: int, session: LightSession, rng: random.Random, timeout: float
    ) -> None:
        key = f"ctr-{rng.randrange(self.KEYS)}"
        if rng.random() < 0.7:
            unique = f"{client}-{next(self._ids)}"
            self.record(
                client, "incr", key, lambda: session.write(incr(key, unique), timeout)["count"],
                value=unique,
            )  # fmt: skip
        else:
            self.record(client, "read", key, lambda: session.query(count(key), timeout)["count"])

    def final_read(self, session: LightSession, timeout: float) -> None:
        self.final = read_lists(session, [f"ctr-{n}" for n in range(self.KEYS)], timeout)

    def check(self, timeout: float) -> Verdict:
        return counter_verdict(self.name, self.history.operations(), self.final)


def read_lists(
    session: LightSession, keys: list[str], timeout: float
) -> dict[str, list[Any] | None]:
    """The lists of ids at ``keys`` (None where the read failed), within ``timeout``."""
    deadline = time.monotonic() + timeout
    out: dict[str, list[Any] | None] = {}
    for key in keys:
        try:
            result = session.query(kv.get(key), max(0.1, deadline - time.monotonic()))
        except ClientError as error:
            log.warning("final read of %s failed: %s", key, error)
            out[key] = None
            continue
        out[key] = list(result["value"]) if result["found"] else []
    return out


def counter_verdict(
    name: str,
    ops: list[Operation],
    final: dict[str, list[Any] | None],
    more: tuple[str, ...] | list[str] = (),
) -> Verdict:
    """Every counter's anomalies (``check_counter``) and ``more`` of the workload's own."""
    verdict = _tally(name, ops)
    by_key: dict[str, list[Operation]] = {}
    for op in ops:
        by_key.setdefault(op.key, []).append(op)
    for key in sorted(set(by_key) | set(final)):
        verdict.anomalies.extend(check_counter(by_key.get(key, []), final.get(key), key))
    verdict.anomalies.extend(more)
    if verdict.anomalies:
        unchecked = all("final read" in a for a in verdict.anomalies)
        verdict.ok = None if unchecked else False
    verdict.detail = (
        f"{name}: no anomaly"
        if not verdict.anomalies
        else f"{name} anomalies:\n" + "\n".join(f"  {a}" for a in verdict.anomalies)
    )
    return verdict


_LISTED = 10  # ids or reads named in one anomaly line


def check_counter(ops: list[Operation], final: list[Any] | None, key: str) -> list[str]:
    """The anomalies of one counter's history, given its final list (None: unread)."""
    problems: list[str] = []
    incrs = [op for op in ops if op.op == "incr"]
    invoked = {op.value for op in incrs}
    if final is None:
        if any(op.status is Status.OK for op in incrs):
            problems.append(f"{key}: final read failed: lost increments unchecked")
    else:
        seen = Counter(final)
        acked = [op.value for op in incrs if op.status is Status.OK]
        failed = [op.value for op in incrs if op.status is Status.FAIL]
        _note(problems, key, "acknowledged increments lost", [i for i in acked if i not in seen])
        _note(problems, key, "increments applied twice", [i for i, n in seen.items() if n > 1])
        _note(problems, key, "ids never invoked", [i for i in seen if i not in invoked])
        _note(problems, key, "failed increments applied", [i for i in failed if i in seen])
    # Reads: at least what was acknowledged before the read began, at most what was invoked
    # before it returned (touching intervals count as concurrent, as in the kv checker).
    done = sorted(op.complete for op in incrs if op.status is Status.OK and op.complete)
    begun = sorted(op.invoke for op in incrs if op.status is not Status.FAIL)
    bad_reads = []
    for read in ops:
        if read.op != "read" or read.status is not Status.OK or read.complete is None:
            continue
        low = bisect.bisect_left(done, read.invoke)
        high = bisect.bisect_right(begun, read.complete)
        if not low <= read.output <= high:
            bad_reads.append(f"#{read.id} read {read.output} (possible {low}..{high})")
    _note(problems, key, "reads out of bounds (stale or from the future)", bad_reads)
    return problems


def _note(problems: list[str], key: str, what: str, items: list[Any]) -> None:
    if items:
        shown = ", ".join(map(str, items[:_LISTED])) + (" ..." if len(items) > _LISTED else "")
        problems.append(f"{key}: {len(items)} {what}: {shown}")


# --------------------------------------------------------------------------- flood


class FloodWorkload(Workload):
    """One asyncio session keeping thousands of increments in flight at once: the load that
    once made the exactly-once table refuse valid writes ("already acknowledged") and report
    applied ones as refused.

    Checked like the counter (nothing lost, doubled or invented; a write reported as
    definitely not applied must be absent), and more strictly: an increment is always a
    valid command, so any ``Rejected`` is an anomaly (a valid write refused). An error that
    says the write was definitely not applied (``Overloaded``: back-pressure, allowed; not
    sent) is held to that. An unknown outcome is retried with ``session.retry`` as the API
    documents, which must apply it at most once."""

    name = "flood"
    clients = 1
    IN_FLIGHT = 2000
    IDS_PER_KEY = 400  # the backend re-encodes a key's list on each increment: keep it short
    RETRIES = 5  # an unknown outcome is retried (same seq) this often before it is left

    def __init__(self, seed: int, history_path: Path | None = None) -> None:
        super().__init__(seed, history_path)
        self._ids = itertools.count()
        self.keys: set[str] = set()
        self.refused: list[str] = []  # valid increments answered Rejected
        self.final: dict[str, list[Any] | None] = {}

    def operate(
        self, client: int, session: LightSession, rng: random.Random, timeout: float
    ) -> None:
        raise NotImplementedError("the flood runs its own asyncio client (run_client)")

    def run_client(self, client: int, context: ClientContext, stop: threading.Event) -> None:
        asyncio.run(self._flood(client, context, stop))

    async def _flood(self, client: int, context: ClientContext, stop: threading.Event) -> None:
        session = AsyncLightSession(
            list(context.peers),
            cluster_id=context.cluster_id,
            election_timeout=context.election_timeout,
        )
        tasks: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                while len(tasks) < self.IN_FLIGHT:
                    one = self._one(session, client, context.op_timeout, stop)
                    tasks.add(asyncio.create_task(one))
                _, tasks = await asyncio.wait(tasks, timeout=0.1, return_when="FIRST_COMPLETED")
            if tasks:  # each ends within its own timeout
                await asyncio.wait(tasks)
        finally:
            await session.close()

    async def _one(
        self, session: AsyncLightSession, client: int, timeout: float, stop: threading.Event
    ) -> None:
        number = next(self._ids)
        key, unique = f"flood-{number // self.IDS_PER_KEY}", f"{client}-{number}"
        self.keys.add(key)
        handle = self.history.invoke(client, "incr", key, value=unique)
        error: ClientError | None = None
        for _ in range(self.RETRIES + 1):
            try:
                if error is None:
                    result = await session.write(incr(key, unique), timeout)
                else:  # as the docs say: the same request again, applied at most once
                    result = await session.retry(error, timeout)
            except Rejected as refused:
                self.history.fail(handle)
                self.refused.append(f"{unique}: {refused}")
                return
            except ClientError as failed:
                if not failed.maybe_applied:  # definitely not applied (Overloaded, not sent)
                    self.history.fail(handle)
                    return
                error = failed
                if stop.is_set():
                    break
                if isinstance(failed, AllPeersFailed):
                    await asyncio.sleep(0.05)  # everyone is down: do not spin
            else:
                self.history.ok(handle, result["count"])
                return
        self.history.unknown(handle)
        if error is not None:
            session.abandon(error)  # the cluster may forget it; later writes go on

    def final_read(self, session: LightSession, timeout: float) -> None:
        self.final = read_lists(session, sorted(self.keys), timeout)

    def check(self, timeout: float) -> Verdict:
        refused: list[str] = []
        _note(refused, "flood", "valid writes refused", self.refused)
        return counter_verdict(self.name, self.history.operations(), self.final, refused)

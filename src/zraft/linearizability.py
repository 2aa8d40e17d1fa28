"""A linearizability checker for histories recorded by concurrent clients (Jepsen-style).

A history is a list of :class:`Operation`: who invoked what on which key, when it was
invoked, when (and how) it completed. :class:`History` records one from many threads and
saves it as JSON lines. :func:`check` decides whether the history can be explained by some
total order of the operations that respects real time (an operation that completed before
another was invoked comes first) and the sequential specification of a :class:`Model`
(by default :data:`KV_MODEL`, a key-value register with compare-and-set).

Statuses: ``ok`` (completed, ``output`` known), ``fail`` (definitely did not take effect:
dropped before checking), ``unknown`` (timed out or crashed: it may or may not have taken
effect, at any time after its invocation; its output is unconstrained).

The search is Wing and Gong's, with Lowe's memoization of (linearized set, model state):
an iterative depth-first search over a doubly linked list of call and return events, the
linearized set as a Python int bitset. Keys are independent registers, so each key is
checked on its own (P-compositionality). When a key fails, the smallest failing prefix of
its history is found by bisection and shrunk to the operations that matter; see
``docs/linearizability.md``.

Why one module: the history model and the checker (a Wing-Gong search with memoization per
key) are one algorithm.
"""

from __future__ import annotations

import base64
import dataclasses
import enum
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final, Protocol

log = logging.getLogger(__name__)

__all__ = [
    "KV_MODEL",
    "CounterExample",
    "History",
    "KeyResult",
    "KeyValueModel",
    "Model",
    "Operation",
    "Result",
    "Stats",
    "Status",
    "check",
]

FORMAT: Final = "zraft-history"
FORMAT_VERSION: Final = 1
_DEADLINE_EVERY: Final = 1023  # check the clock every 1024 search steps


class Status(enum.StrEnum):
    """How an operation ended, as far as its client knows."""

    OK = "ok"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Operation:
    """One operation of a history.

    ``complete`` is when the client learned the outcome (``ok``/``fail``) or gave up
    (``unknown``, informational only: an unknown operation is treated as completing at
    +infinity). ``id`` is the recorder's handle; ``check`` numbers operations without one.
    """

    client: int | str
    op: str
    key: str
    value: Any = None
    expected: Any = None
    output: Any = None
    invoke: float = 0.0
    complete: float | None = None
    status: Status = Status.OK
    id: int = -1

    def __post_init__(self) -> None:
        if not isinstance(self.status, Status):
            object.__setattr__(self, "status", Status(self.status))


# --------------------------------------------------------------------------- models


class Model(Protocol):
    """The sequential specification of one independent object (one key of a history)."""

    def init(self) -> Hashable:
        """The state before any operation."""
        ...

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        """Apply ``op`` to ``state``: (whether ``op``'s recorded output is possible, new state).

        An ``unknown`` operation has no output to check: return True with the state it
        would leave. States must be hashable and compare equal exactly when equivalent.
        Raise ValueError for an operation the model does not know.
        """
        ...

    def describe(self, op: Operation) -> str:
        """``op`` and its output, for a human (no client, time or status)."""
        ...


def _canon(value: Any) -> Hashable:
    """A hashable form of a value whose equality is type-strict like the kv backend's
    (``1``, ``1.0`` and ``True`` differ; tuples and lists are the same; maps keep order)."""
    kind = type(value)
    if value is None:
        return None
    if kind is list or kind is tuple:
        return (list, tuple(_canon(v) for v in value))
    if kind is dict:
        return (dict, tuple((_canon(k), _canon(v)) for k, v in value.items()))
    if kind is bytearray:
        return (bytes, bytes(value))
    return (kind, value)


class KeyValueModel:
    """A register per key: ``read`` (output: the value, None when absent), ``write``
    (``value``), ``delete`` (makes it absent), ``cas`` (``expected`` -> ``value``; output:
    True if it swapped). ``expected=None`` means "absent", and writing None is a delete.
    Values compare type-strictly: ``1``, ``1.0`` and ``True`` are three different values."""

    OPS: Final = frozenset({"read", "write", "delete", "cas"})

    def init(self) -> Hashable:
        return None

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        name = op.op
        unknown = op.status is Status.UNKNOWN
        if name == "read":
            return unknown or _canon(op.output) == state, state
        if name == "write":
            return True, _canon(op.value)
        if name == "cas":
            swaps = _canon(op.expected) == state
            if not unknown and op.output is not swaps:
                if op.output is not True and op.output is not False:
                    raise ValueError(f"cas output must be True or False, got {op.output!r}")
                return False, state
            return True, _canon(op.value) if swaps else state
        if name == "delete":
            return True, None
        raise ValueError(f"unknown operation {name!r} (the kv model knows {sorted(self.OPS)})")

    def describe(self, op: Operation) -> str:
        unknown = op.status is not Status.OK
        name = op.op
        if name == "read":
            return f"read {op.key!r} -> " + ("?" if unknown else repr(op.output))
        if name == "write":
            return f"write {op.key!r} = {op.value!r}"
        if name == "delete":
            return f"delete {op.key!r}"
        if name == "cas":
            out = "?" if unknown else repr(op.output)
            return f"cas {op.key!r} {op.expected!r} -> {op.value!r} : {out}"
        return f"{name} {op.key!r} value={op.value!r} expected={op.expected!r}"


KV_MODEL: Final = KeyValueModel()


# --------------------------------------------------------------------------- recording


def _to_json(value: Any) -> Any:
    """A JSON-ready copy of a value: tuples become lists, bytes ``{"__bytes__": base64}``."""
    if isinstance(value, bytes | bytearray):
        return {"__bytes__": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, list | tuple):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1 and "__bytes__" in value:
            return base64.b64decode(value["__bytes__"])
        return {k: _from_json(v) for k, v in value.items()}
    return value


@dataclass(slots=True)
class _Call:
    client: int | str
    op: str
    key: str
    value: Any
    expected: Any
    invoke: float
    status: Status | None = None  # None while in flight
    output: Any = None
    complete: float | None = None


class History:
    """A thread-safe recorder of a history.

    ``handle = h.invoke(client, "cas", key, value=2, expected=1)`` before sending a request,
    then exactly one of ``h.ok(handle, output)``, ``h.fail(handle)`` (it certainly did not
    take effect) or ``h.unknown(handle)`` (timeout, crash: it may have). Operations still in
    flight when the history is checked count as unknown.

    Times come from ``clock`` (default ``time.monotonic_ns``: integers, nanoseconds). With
    ``path``, every event is appended to that JSON-lines file and flushed as it happens, so
    the history survives a crash of the recording process; :meth:`save` writes the same
    format, :meth:`load` reads it back.
    """

    def __init__(
        self,
        clock: Callable[[], float] | None = None,
        path: str | Path | None = None,
    ) -> None:
        self._clock: Callable[[], float] = clock if clock is not None else time.monotonic_ns
        self._lock = threading.Lock()
        self._calls: list[_Call] = []
        self._events: list[dict[str, Any]] = []
        self._file: IO[str] | None = None
        if path is not None:
            # kept open to stream events; closed by close() / the context manager
            self._file = Path(path).open("w", encoding="utf-8")  # noqa: SIM115
            self._file.write(json.dumps(_header()) + "\n")
            self._file.flush()

    # recording ------------------------------------------------------------

    def invoke(
        self,
        client: int | str,
        op: str,
        key: str,
        value: Any = None,
        expected: Any = None,
    ) -> int:
        """Record an invocation; returns the handle to complete it with."""
        with self._lock:
            now = self._clock()
            handle = len(self._calls)
            self._emit(
                {
                    "type": "invoke",
                    "id": handle,
                    "client": client,
                    "op": op,
                    "key": key,
                    "value": value,
                    "expected": expected,
                    "time": now,
                }
            )
            self._calls.append(_Call(client, op, key, value, expected, now))
            return handle

    def ok(self, handle: int, output: Any = None) -> None:
        """The operation completed; ``output`` is what it returned (see the model)."""
        self._complete(handle, Status.OK, output)

    def fail(self, handle: int) -> None:
        """The operation certainly did not take effect."""
        self._complete(handle, Status.FAIL, None)

    def unknown(self, handle: int) -> None:
        """The outcome is unknown: it may take effect at any time after its invocation."""
        self._complete(handle, Status.UNKNOWN, None)

    def _complete(self, handle: int, status: Status, output: Any) -> None:
        with self._lock:
            if not 0 <= handle < len(self._calls):
                raise ValueError(f"no operation with handle {handle!r}")
            call = self._calls[handle]
            if call.status is not None:
                raise ValueError(f"operation {handle} already completed ({call.status})")
            now = self._clock()
            if now < call.invoke:
                raise ValueError(f"clock went backwards completing operation {handle}")
            event: dict[str, Any] = {"type": str(status), "id": handle, "time": now}
            if status is Status.OK:
                event["output"] = output
            self._emit(event)
            call.status, call.output, call.complete = status, output, now

    def _emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(_to_json(event))  # fails before anything changes if not JSON-able
        self._events.append(event)
        if self._file is not None:
            self._file.write(line + "\n")
            self._file.flush()

    # reading --------------------------------------------------------------

    def operations(self) -> list[Operation]:
        """The operations recorded so far, by handle; those in flight are ``unknown``."""
        with self._lock:
            return [
                Operation(
                    client=c.client,
                    op=c.op,
                    key=c.key,
                    value=c.value,
                    expected=c.expected,
                    output=c.output,
                    invoke=c.invoke,
                    complete=c.complete,
                    status=c.status if c.status is not None else Status.UNKNOWN,
                    id=i,
                )
                for i, c in enumerate(self._calls)
            ]

    def __len__(self) -> int:
        with self._lock:
            return len(self._calls)

    # files ----------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the history as JSON lines: a header, then one line per event."""
        with self._lock:
            lines = [json.dumps(_header())]
            lines += [json.dumps(_to_json(e)) for e in self._events]
        Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> History:
        """Read a history written by :meth:`save` or by a recorder given ``path``.

        A torn last line (the recording process died while writing it) is ignored with a
        warning; any other malformed line raises ValueError.
        """
        history = cls()
        lines = Path(path).read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                event = _from_json(json.loads(line))
            except json.JSONDecodeError as exc:
                if number == len(lines):
                    log.warning("%s: ignoring torn last line %d", path, number)
                    break
                raise ValueError(f"{path}:{number}: not JSON: {exc}") from exc
            try:
                history._replay(event)
            except (KeyError, TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{number}: bad event {line!r}: {exc}") from exc
        return history

    def _replay(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == FORMAT:
            if event.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {event.get('version')!r}")
            return
        if kind == "invoke":
            if event["id"] != len(self._calls):
                raise ValueError(f"expected id {len(self._calls)}")
            self._calls.append(
                _Call(
                    event["client"],
                    event["op"],
                    event["key"],
                    event.get("value"),
                    event.get("expected"),
                    event["time"],
                )
            )
        else:
            status = Status(kind)
            call = self._calls[event["id"]]
            if call.status is not None:
                raise ValueError(f"operation {event['id']} already completed")
            call.status, call.output, call.complete = status, event.get("output"), event["time"]
        self._events.append(event)

    def close(self) -> None:
        """Close the file given as ``path`` (recording can go on, in memory only)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def __enter__(self) -> History:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _header() -> dict[str, Any]:
    return {"type": FORMAT, "version": FORMAT_VERSION}


# --------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class CounterExample:
    """Operations of one key that cannot be linearized together.

    ``operations`` (by invocation time) come from the smallest failing prefix of the key's
    history: the prefix that ends when ``culprit`` returned. Operations still running at
    that moment (``in_flight``) or ``unknown`` are listed only when the contradiction needs
    them; they may or may not have taken effect. The listing never can be linearized on
    its own. ``verified`` is True when it cannot be linearized even if every left-out
    operation of the prefix had taken effect within its interval with any output, or not at
    all, so nothing left out could explain what the listed operations saw; None when that
    was not settled within the step budget. ``minimal`` is False when shrinking ran out of time
    (the listing is then larger than needed).
    """

    key: str
    operations: tuple[Operation, ...]
    culprit: Operation | None
    in_flight: frozenset[int]
    prefix_operations: int
    key_operations: int
    minimal: bool
    verified: bool | None
    text: str

    def describe(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class KeyResult:
    """The verdict for one key: ``ok`` is None when the search gave up (timeout)."""

    key: str
    ok: bool | None
    operations: int
    states: int
    steps: int
    seconds: float
    counterexample: CounterExample | None = None


@dataclass(frozen=True, slots=True)
class Stats:
    operations: int  # checked: ok + unknown (failed ones are dropped)
    failed: int
    unknown: int
    keys: int
    states: int  # distinct (linearized set, state) configurations explored, all keys
    steps: int
    seconds: float


@dataclass(frozen=True, slots=True)
class Result:
    """``ok``: True (linearizable), False (not), None (some key gave up, none failed)."""

    ok: bool | None
    keys: dict[str, KeyResult]
    counterexample: CounterExample | None
    stats: Stats
    failures: tuple[KeyResult, ...] = field(default=())

    def describe(self) -> str:
        s = self.stats
        verdict = {True: "linearizable", False: "NOT linearizable", None: "unknown (timed out)"}
        lines = [
            f"{verdict[self.ok]}: {s.operations} operations ({s.unknown} unknown, {s.failed} "
            f"failed dropped) on {s.keys} keys; {s.states} states explored in {s.steps} steps, "
            f"{s.seconds:.3f} s"
        ]
        gave_up = [k.key for k in self.keys.values() if k.ok is None]
        if gave_up:
            lines.append(f"gave up on {len(gave_up)} keys: {', '.join(map(repr, gave_up))}")
        for failure in self.failures:
            lines.append("")
            if failure.counterexample is not None:
                lines.append(failure.counterexample.describe())
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


# --------------------------------------------------------------------------- search


@dataclass(slots=True)
class _Outcome:
    ok: bool | None
    states: int
    steps: int


def _search(
    ops: Sequence[Operation],
    model: Model,
    deadline: float | None,
    max_steps: int | None = None,
    optional: Collection[int] = (),
) -> _Outcome:
    """Wing-Gong-Lowe: can ``ops`` (one object's) be linearized? None if out of time or
    over ``max_steps``.

    ``optional`` positions name operations that may take effect within their interval or
    not at all (given as ``unknown``, with their real ``complete``): the search may skip
    one when it reaches its return. A skipped and a linearized operation leave the same
    future, so both just set its bit of the memoized (decided set, state) configuration.
    """
    n = len(ops)
    events: list[tuple[float, int, int]] = []
    known = [0] * n
    skippable = [False] * n
    for i in optional:
        skippable[i] = True
    for i, op in enumerate(ops):
        events.append((op.invoke, 0, i))
        if skippable[i] or op.status is not Status.UNKNOWN:
            assert op.complete is not None
            events.append((op.complete, 1, i))
            known[i] = not skippable[i]
        else:
            events.append((math.inf, 1, i))
    remaining = sum(known)
    if remaining == 0:
        return _Outcome(True, 0, 0)
    if deadline is not None and time.monotonic() > deadline:
        return _Outcome(None, 0, 0)
    # Calls sort before returns at equal times: touching operations count as concurrent.
    events.sort()
    # Doubly linked list: node 0 is the head, 1..2n the events, 2n + 1 the tail.
    size = 2 * n + 2
    nxt = list(range(1, size + 1))
    prv = list(range(-1, size - 1))
    is_call = [False] * size
    op_at = [0] * size
    call_node = [0] * n
    ret_node = [0] * n
    for node, (_, kind, i) in enumerate(events, 1):
        op_at[node] = i
        if kind == 0:
            is_call[node] = True
            call_node[i] = node
        else:
            ret_node[i] = node

    step = model.step
    cache: set[tuple[int, Hashable]] = set()
    stack: list[tuple[int, Hashable, bool]] = []  # (call node, state before, skipped)
    state = model.init()
    decided = 0  # bitset: linearized (or skipped) operations
    steps = 0
    node = nxt[0]
    while True:
        steps += 1
        if not steps & _DEADLINE_EVERY and (
            (deadline is not None and time.monotonic() > deadline)
            or (max_steps is not None and steps > max_steps)
        ):
            return _Outcome(None, len(cache), steps)
        i = op_at[node]
        if is_call[node]:
            ok, new_state = step(state, ops[i])
            # An unknown operation that leaves the state as it is never needs to happen:
            # whatever follows it could follow without it.
            if ok and (known[i] or new_state != state):
                new_decided = decided | (1 << i)
                config = (new_decided, new_state)
                if config not in cache:
                    cache.add(config)
                    stack.append((node, state, False))
                    decided, state = new_decided, new_state
                    # lift the call and its return out of the list
                    r = ret_node[i]
                    p, q = prv[node], nxt[node]
                    nxt[p], prv[q] = q, p
                    p, q = prv[r], nxt[r]
                    nxt[p], prv[q] = q, p
                    if known[i]:
                        remaining -= 1
                        if remaining == 0:  # the rest need not happen
                            return _Outcome(True, len(cache), steps)
                    node = nxt[0]
                    continue
            node = nxt[node]
            continue
        if skippable[i]:
            # The return of an optional operation not linearized: it did not happen.
            config = (decided | (1 << i), state)
            if config not in cache:
                cache.add(config)
                c = call_node[i]
                stack.append((c, state, True))
                decided = config[0]
                p, q = prv[c], nxt[c]
                nxt[p], prv[q] = q, p
                p, q = prv[node], nxt[node]
                nxt[p], prv[q] = q, p
                node = nxt[0]
                continue
        # A return whose operation was not linearized yet: undo the last choice.
        if not stack:
            return _Outcome(False, len(cache), steps)
        node, state, skipped = stack.pop()
        i = op_at[node]
        decided ^= 1 << i
        r = ret_node[i]
        p, q = prv[r], nxt[r]
        nxt[p] = prv[q] = r
        p, q = prv[node], nxt[node]
        nxt[p] = prv[q] = node
        remaining += known[i]
        # After undoing a skip (the last option there), go on backtracking via its return.
        node = r if skipped else nxt[node]


# --------------------------------------------------------------------------- shrinking


def _weakened(op: Operation) -> Operation:
    return dataclasses.replace(op, status=Status.UNKNOWN, output=None)


class _Shrinker:
    """Finds the smallest failing prefix of one key's history and the operations in it
    that matter (see ``docs/linearizability.md``). ``ops`` must not be linearizable."""

    # A check of the listing against every left-out operation at once can explode (each
    # left-out write may or may not happen): it gets this many search steps.
    VERIFY_STEPS: Final = 300_000

    def __init__(self, ops: Sequence[Operation], model: Model, deadline: float | None) -> None:
        self.ops = ops
        self.model = model
        self.deadline = deadline
        self.minimal = True
        self.verified: bool | None = None
        self.running: set[int] = set()

    def linearizable(self, ops: Sequence[Operation]) -> bool | None:
        outcome = _search(ops, self.model, self.deadline)
        if outcome.ok is None:
            self.minimal = False
        return outcome.ok

    def prefix(self, cut: int) -> tuple[dict[int, Operation], set[int]]:
        """The operations invoked before operation ``cut`` returned (by position), and which
        of them were still running then (they become ``unknown``)."""
        end = (self.ops[cut].complete, 1, cut)
        chosen: dict[int, Operation] = {}
        running: set[int] = set()
        for pos, op in enumerate(self.ops):
            if (op.invoke, 0, pos) >= end:
                continue
            if op.status is Status.UNKNOWN:
                running.add(pos)
                chosen[pos] = op
            elif (op.complete, 1, pos) > end:
                running.add(pos)
                chosen[pos] = _weakened(op)
            else:
                chosen[pos] = op
        return chosen, running

    def run(self) -> tuple[list[int], Operation | None, set[int], int]:
        """(positions to list, culprit, positions in flight at the cut, prefix size)."""
        known = [p for p, op in enumerate(self.ops) if op.status is Status.OK]
        known.sort(key=lambda p: (self.ops[p].complete, p))
        # Linearizability is prefix-closed: bisect for the first failing return.
        lo, hi = 0, len(known) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            verdict = self.linearizable(list(self.prefix(known[mid])[0].values()))
            if verdict is None:
                return list(range(len(self.ops))), None, set(), len(self.ops)
            if verdict:
                lo = mid + 1
            else:
                hi = mid
        culprit_pos = known[lo]
        chosen, running = self.prefix(culprit_pos)
        self.running = running

        # 0. Often the culprit is impossible whatever the others did (a read of a value
        # nobody wrote): then it is the whole story.
        lone = {p: op for p, op in chosen.items() if p == culprit_pos or p in running}
        if self.explained(chosen, lone) is False:
            self.verified = True
            return self.display(lone, running, culprit_pos, len(chosen))

        # 1. Known operations, latest first: drop one if the rest still fails with it
        # weakened to unknown (it cannot help, even taking effect at any time).
        keep = dict(chosen)
        candidates = [p for p in chosen if p not in running and p != culprit_pos]
        candidates.sort(key=lambda p: (chosen[p].complete, p), reverse=True)
        for pos in candidates:
            trial = [_weakened(op) if p == pos else op for p, op in keep.items()]
            verdict = self.linearizable(trial)
            if verdict is None:
                break
            if not verdict:
                del keep[pos]

        # 2. Each drop was judged alone; together the dropped operations might explain what
        # the listing observes. Check the listing against all of them at once, and while
        # they do explain it, put the latest one back.
        dropped = sorted(
            (p for p in chosen if p not in keep), key=lambda p: (chosen[p].complete, p)
        )
        core = dict(keep)
        while self.minimal:
            verdict = self.explained(chosen, keep)
            if verdict is False:
                self.verified = True
                break
            if verdict is None or not dropped:
                keep = core  # the core alone certainly cannot be linearized
                break
            back = dropped.pop()
            keep[back] = chosen[back]
        return self.display(keep, running, culprit_pos, len(chosen))

    def explained(self, chosen: dict[int, Operation], keep: dict[int, Operation]) -> bool | None:
        """Whether the operations of ``chosen`` left out of ``keep`` can explain ``keep``:
        a left-out completed operation may have taken effect within its interval with any
        output, or not at all; an unknown one at any time after its invocation, or never."""
        positions = sorted(chosen)
        trial = [keep[p] if p in keep else _weakened(chosen[p]) for p in positions]
        optional = [n for n, p in enumerate(positions) if p not in keep and p not in self.running]
        return _search(trial, self.model, self.deadline, self.VERIFY_STEPS, optional).ok

    def display(
        self, keep: dict[int, Operation], running: set[int], culprit_pos: int, size: int
    ) -> tuple[list[int], Operation | None, set[int], int]:
        keep = dict(sorted(keep.items()))
        # Unknown / in-flight operations never need to happen, but list the ones without
        # which some listed operation would no longer be needed.
        if self.minimal:
            needed = [p for p in keep if p not in running and self.needed(keep, p)]
            for pos in sorted((p for p in keep if p in running), reverse=True):
                rest = {p: op for p, op in keep.items() if p != pos}
                if all(self.needed(rest, p) for p in needed) and self.minimal:
                    keep = rest
        return sorted(keep), self.ops[culprit_pos], running, size

    def needed(self, ops: dict[int, Operation], pos: int) -> bool:
        """Whether weakening ``pos`` makes ``ops`` linearizable."""
        trial = [_weakened(op) if p == pos else op for p, op in ops.items()]
        return self.linearizable(trial) is True


def _counterexample(
    key: str,
    ops: Sequence[Operation],
    model: Model,
    deadline: float | None,
    origin: float,
) -> CounterExample:
    shrinker = _Shrinker(ops, model, deadline)
    positions, culprit, running, prefix_size = shrinker.run()
    listed = sorted((ops[p] for p in positions), key=lambda op: (op.invoke, op.id))
    in_flight = frozenset(ops[p].id for p in positions if p in running)
    lines = [f"key {key!r}: not linearizable ({len(ops)} operations on this key)"]
    if culprit is None:
        lines.append("ran out of time looking for the smallest failing prefix; whole history:")
    else:
        lines.append(
            f"smallest failing prefix: the {prefix_size} operations invoked before "
            f"#{culprit.id} returned at {_fmt(culprit.complete, origin)}; these "
            f"{len(listed)} cannot be linearized together:"
        )
    width = max((len(model.describe(op)) for op in listed), default=0)
    for op in listed:
        if op.status is Status.UNKNOWN:
            status = "unknown, may take effect any time after invoke"
            end = "inf"
        else:
            status = str(op.status)
            end = _fmt(op.complete, origin)
            if op.id in in_flight:
                status += ", still running at the cut"
        mark = "   <- culprit" if culprit is not None and op.id == culprit.id else ""
        lines.append(
            f"  #{op.id:<5} client {op.client!s:<6} {model.describe(op):<{width}}  "
            f"[{_fmt(op.invoke, origin)}, {end}]  {status}{mark}"
        )
    if culprit is not None:
        dropped = prefix_size - len(listed)
        if shrinker.verified:
            why = (
                "even if each of them had taken effect within its interval with any output, "
                "or not at all, the listed operations could not be linearized"
            )
        else:
            why = (
                "the listed operations cannot be linearized on their own, but whether some "
                "left-out ones could explain them was not settled in time: read the prefix"
            )
        if not shrinker.minimal:
            why += "; shrinking ran out of time"
        if dropped:
            lines.append(f"({dropped} other operations of the prefix are left out: {why})")
    lines.append(f"times are relative to the first invocation of the history (t0 = {origin})")
    return CounterExample(
        key=key,
        operations=tuple(listed),
        culprit=culprit,
        in_flight=in_flight,
        prefix_operations=prefix_size,
        key_operations=len(ops),
        minimal=shrinker.minimal and culprit is not None,
        verified=shrinker.verified,
        text="\n".join(lines),
    )


def _fmt(t: float | None, origin: float) -> str:
    if t is None:
        return "?"
    delta = t - origin
    if isinstance(delta, int):
        return f"+{delta}" if delta >= 0 else str(delta)
    return f"{delta:+.9g}"


# --------------------------------------------------------------------------- checking


def _validate(op: Operation, model: Model) -> None:
    if not isinstance(op.invoke, int | float) or math.isnan(op.invoke) or op.invoke == math.inf:
        raise ValueError(f"operation {op.id}: bad invoke time {op.invoke!r}")
    if op.status is Status.OK:
        if op.complete is None or not isinstance(op.complete, int | float):
            raise ValueError(f"operation {op.id}: status ok needs a complete time")
        if not op.invoke <= op.complete < math.inf:
            raise ValueError(
                f"operation {op.id}: complete {op.complete!r} before invoke {op.invoke!r}"
            )
    # A dry run raises ValueError for an operation the model does not accept.
    model.step(model.init(), op if op.status is not Status.FAIL else _weakened(op))


def check(
    history: History | Iterable[Operation],
    model: Model = KV_MODEL,
    timeout: float | None = None,
    *,
    shrink_timeout: float | None = 30.0,
) -> Result:
    """Check that ``history`` is linearizable with respect to ``model``, key by key.

    ``timeout`` (seconds) bounds the whole search: keys not decided in time get
    ``ok=None``. When a key fails, finding and shrinking its counterexample takes at most
    ``shrink_timeout`` seconds more (None: no limit); a counterexample cut short is still
    correct, only larger (``minimal=False``).
    """
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    source = history.operations() if isinstance(history, History) else list(history)
    failed = unknown = 0
    by_key: dict[str, list[Operation]] = {}
    for pos, op in enumerate(source):
        if op.id < 0:
            op = dataclasses.replace(op, id=pos)
        _validate(op, model)
        if op.status is Status.FAIL:
            failed += 1
            continue
        unknown += op.status is Status.UNKNOWN
        by_key.setdefault(op.key, []).append(op)
    origin = min((op.invoke for op in source), default=0)

    results: dict[str, KeyResult] = {}
    for key in sorted(by_key, key=repr):
        ops = by_key[key]
        began = time.monotonic()
        outcome = _search(ops, model, deadline)
        counterexample = None
        if outcome.ok is False:
            limit = None if shrink_timeout is None else time.monotonic() + shrink_timeout
            counterexample = _counterexample(key, ops, model, limit, origin)
            log.warning("linearizability violation:\n%s", counterexample.describe())
        elif outcome.ok is None:
            log.warning("key %r: gave up after %d states (timeout)", key, outcome.states)
        results[key] = KeyResult(
            key=key,
            ok=outcome.ok,
            operations=len(ops),
            states=outcome.states,
            steps=outcome.steps,
            seconds=time.monotonic() - began,
            counterexample=counterexample,
        )

    verdicts = [r.ok for r in results.values()]
    ok: bool | None = False if False in verdicts else None if None in verdicts else True
    failures = tuple(
        sorted(
            (r for r in results.values() if r.ok is False),
            key=lambda r: _culprit_time(r.counterexample),
        )
    )
    stats = Stats(
        operations=sum(len(v) for v in by_key.values()),
        failed=failed,
        unknown=unknown,
        keys=len(by_key),
        states=sum(r.states for r in results.values()),
        steps=sum(r.steps for r in results.values()),
        seconds=time.monotonic() - started,
    )
    log.info(
        "linearizability: %s, %d operations on %d keys, %d states, %.3f s",
        ok,
        stats.operations,
        stats.keys,
        stats.states,
        stats.seconds,
    )
    return Result(
        ok=ok,
        keys=results,
        counterexample=failures[0].counterexample if failures else None,
        stats=stats,
        failures=failures,
    )


def _culprit_time(example: CounterExample | None) -> float:
    if example is None or example.culprit is None or example.culprit.complete is None:
        return math.inf
    return example.culprit.complete

"""The linearizability checker: hand-made histories with known verdicts and counterexamples,
simulated linearizable registers (and certain mutations of them), the recorder, JSON lines,
pluggable models, timeouts and a performance figure."""

from __future__ import annotations

import dataclasses
import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import pytest

from tests.support.clocks import TickClock
from zraft.linearizability import (
    KV_MODEL,
    History,
    Operation,
    Result,
    Status,
    check,
)

log = logging.getLogger(__name__)

NEVER = "never-written"


def op(
    id: int,
    client: int | str,
    kind: str,
    invoke: float,
    complete: float | None,
    *,
    key: str = "x",
    value: Any = None,
    expected: Any = None,
    output: Any = None,
    status: str = "ok",
) -> Operation:
    return Operation(
        client=client,
        op=kind,
        key=key,
        value=value,
        expected=expected,
        output=output,
        invoke=invoke,
        complete=complete,
        status=Status(status),
        id=id,
    )


def ids(result: Result) -> set[int]:
    assert result.counterexample is not None
    return {o.id for o in result.counterexample.operations}


def culprit(result: Result) -> int:
    assert result.counterexample is not None and result.counterexample.culprit is not None
    return result.counterexample.culprit.id


def assert_rejected(history: Sequence[Operation], listed: set[int], culprit_id: int) -> Result:
    result = check(history)
    assert result.ok is False
    assert ids(result) == listed
    assert culprit(result) == culprit_id
    example = result.counterexample
    assert example is not None and example.minimal and example.verified
    # The listing really cannot be linearized on its own.
    assert check(example.operations).ok is False
    text = result.describe()
    assert "NOT linearizable" in text and f"#{culprit_id}" in text and "<- culprit" in text
    return result


# --------------------------------------------------------------------------- linearizable


@pytest.mark.timeout(10)
def test_empty_and_sequential_histories_pass() -> None:
    assert check([]).ok is True
    history = [
        op(0, 1, "read", 0, 1, output=None),
        op(1, 1, "write", 2, 3, value="a"),
        op(2, 2, "read", 4, 5, output="a"),
        op(3, 1, "cas", 6, 7, expected="a", value="b", output=True),
        op(4, 2, "cas", 8, 9, expected="a", value="c", output=False),
        op(5, 1, "read", 10, 11, output="b"),
        op(6, 2, "delete", 12, 13),
        op(7, 1, "read", 14, 15, output=None),
        op(8, 2, "cas", 16, 17, expected=None, value="d", output=True),
        op(9, 1, "read", 18, 19, output="d"),
    ]
    result = check(history)
    assert result.ok is True and result.counterexample is None
    assert result.keys["x"].ok is True and result.keys["x"].operations == 10
    assert result.stats.states >= 10 and result.stats.keys == 1


@pytest.mark.timeout(10)
def test_concurrent_overlapping_writes_and_reads_pass() -> None:
    # w1 and w2 overlap; the first read sees w2, so w2 came first and w1 after it.
    history = [
        op(0, 1, "write", 0, 10, value=1),
        op(1, 2, "write", 5, 15, value=2),
        op(2, 3, "read", 6, 8, output=2),
        op(3, 3, "read", 9, 12, output=2),
        op(4, 4, "read", 11, 20, output=1),
        op(5, 3, "read", 21, 22, output=1),
    ]
    assert check(history).ok is True
    # The other order of the writes explains reads of 1 then 2 just as well.
    flipped = [
        dataclasses.replace(o, output=3 - o.output) if o.op == "read" else o for o in history
    ]
    assert check(flipped).ok is True
    # But once 2 was read, and 1 could only be written before that read ended, reading 1
    # after everything needs all six operations to show the contradiction.
    mixed = [dataclasses.replace(o, output=1) if o.id == 2 else o for o in history]
    result = assert_rejected(mixed, {0, 1, 2, 3, 4, 5}, 5)
    assert result.counterexample is not None and result.counterexample.verified


@pytest.mark.timeout(10)
def test_touching_intervals_count_as_concurrent() -> None:
    # The read is invoked at the very instant the write returns: they may be in either order.
    assert check([op(0, 1, "write", 0, 5, value=1), op(1, 2, "read", 5, 6)]).ok is True
    assert check([op(0, 1, "write", 0, 5, value=1), op(1, 2, "read", 6, 7)]).ok is False


@pytest.mark.timeout(10)
def test_unknown_operations_may_or_may_not_take_effect() -> None:
    base = [op(0, 1, "write", 0, 1, value=1), op(1, 2, "write", 2, 3, status="unknown", value=2)]
    took_effect = base + [op(2, 3, "read", 100, 101, output=2)]
    did_not = base + [op(2, 3, "read", 100, 101, output=1)]
    late = did_not + [op(3, 3, "read", 200, 201, output=2)]  # long after the client gave up
    for history in (took_effect, did_not, late):
        result = check(history)
        assert result.ok is True, result.describe()
        assert result.stats.unknown == 1
    # An unknown read's output is unconstrained; an in-flight one (no complete) too.
    assert check([op(0, 1, "read", 0, None, status="unknown", output=99)]).ok is True


@pytest.mark.timeout(10)
def test_an_unknown_write_cannot_unhappen() -> None:
    history = [
        op(0, 1, "write", 0, 1, value=1),
        op(1, 2, "write", 2, 3, status="unknown", value=2),
        op(2, 3, "read", 100, 101, output=2),
        op(3, 3, "read", 200, 201, output=1),
    ]
    result = assert_rejected(history, {0, 1, 2, 3}, 3)
    assert result.counterexample is not None
    assert "unknown, may take effect any time" in result.counterexample.describe()


@pytest.mark.timeout(10)
def test_cas_chains_pass() -> None:
    # Four clients race to increment through CAS; exactly one wins each round.
    history = [
        op(0, 0, "write", 0, 1, value=0),
        op(1, 1, "cas", 2, 6, expected=0, value=1, output=True),
        op(2, 2, "cas", 3, 7, expected=0, value=1, output=False),
        op(3, 3, "cas", 4, 9, expected=1, value=2, output=True),  # after 1, concurrently
        op(4, 2, "cas", 8, 12, expected=1, value=2, output=False),
        op(5, 1, "cas", 10, 13, expected=2, value=3, output=True),
        op(6, 4, "cas", 11, None, expected=3, value=4, status="unknown"),
        op(7, 4, "read", 14, 15, output=4),
        op(8, 1, "cas", 16, 17, expected=4, value=5, output=True),
        op(9, 2, "cas", 16, 18, expected=None, value=9, output=False),
        op(10, 3, "read", 19, 20, output=5),
    ]
    assert check(history).ok is True
    # Had the unknown CAS not happened, reading 4 would be impossible.
    without = [o for o in history if o.id != 6]
    assert check(without).ok is False


@pytest.mark.timeout(10)
def test_failed_operations_are_dropped() -> None:
    history = [
        op(0, 1, "write", 0, 1, value=1),
        op(1, 2, "write", 2, 3, value=2, status="fail"),
        op(2, 3, "read", 4, 5, output=1),
    ]
    result = check(history)
    assert result.ok is True and result.stats.failed == 1 and result.stats.operations == 2
    seen = [*history[:2], op(2, 3, "read", 4, 5, output=2)]
    assert_rejected(seen, {2}, 2)


@pytest.mark.timeout(10)
def test_values_compare_type_strictly_and_structurally() -> None:
    assert (
        check([op(0, 1, "write", 0, 1, value=1), op(1, 1, "read", 2, 3, output=True)]).ok is False
    )
    assert check([op(0, 1, "write", 0, 1, value=1), op(1, 1, "read", 2, 3, output=1.0)]).ok is False
    nested = {"a": [1, (2, 3)], "b": b"\x00"}
    same = {"a": [1, [2, 3]], "b": b"\x00"}
    history = [
        op(0, 1, "write", 0, 1, value=nested),
        op(1, 1, "read", 2, 3, output=same),
        op(2, 2, "cas", 4, 5, expected=same, value=[1], output=True),
        op(3, 1, "read", 6, 7, output=(1,)),
    ]
    assert check(history).ok is True


@pytest.mark.timeout(10)
def test_bad_operations_are_rejected_up_front() -> None:
    with pytest.raises(ValueError, match="unknown operation"):
        check([op(0, 1, "increment", 0, 1)])
    with pytest.raises(ValueError, match="True or False"):
        check([op(0, 1, "cas", 0, 1, expected=None, value=1, output="yes")])
    with pytest.raises(ValueError, match="before invoke"):
        check([op(0, 1, "read", 5, 1)])
    with pytest.raises(ValueError, match="complete time"):
        check([op(0, 1, "read", 5, None)])


# --------------------------------------------------------------------------- violations


@pytest.mark.timeout(10)
def test_stale_read_after_a_completed_write() -> None:
    history = [
        op(0, 1, "write", 0, 1, value=1),
        op(1, 1, "write", 2, 3, value=2),
        op(2, 2, "read", 4, 5, output=1),
        op(3, 2, "read", 6, 7, output=2),
    ]
    result = assert_rejected(history, {0, 1, 2}, 2)
    assert result.counterexample is not None
    assert result.counterexample.prefix_operations == 3


@pytest.mark.timeout(10)
def test_read_of_a_value_never_written() -> None:
    history = [
        op(0, 1, "write", 0, 1, value=1),
        op(1, 2, "write", 0.5, 3, value=2),
        op(2, 3, "read", 2, 4, output=7),
    ]
    assert_rejected(history, {2}, 2)


@pytest.mark.timeout(10)
def test_two_cas_from_the_same_value_both_succeed() -> None:
    history = [
        op(0, 0, "write", 0, 1, value=0),
        op(1, 1, "cas", 2, 6, expected=0, value=1, output=True),
        op(2, 2, "cas", 3, 7, expected=0, value=2, output=True),
    ]
    # The initial write is left out: even if it took effect at any time, only one CAS could
    # have seen 0.
    assert_rejected(history, {1, 2}, 2)


@pytest.mark.timeout(10)
def test_read_your_write_violation() -> None:
    history = [
        op(0, 1, "write", 0, 1, value=5),
        op(1, 2, "write", 0, 1, key="y", value=6),
        op(2, 1, "read", 2, 3, output=None),
    ]
    result = assert_rejected(history, {0, 2}, 2)
    assert result.keys["y"].ok is True and result.keys["x"].ok is False
    assert result.counterexample is not None and result.counterexample.key == "x"


@pytest.mark.timeout(10)
def test_lost_update() -> None:
    # Two read-modify-write increments from 0 both succeed one after the other.
    history = [
        op(0, 0, "write", 0, 1, value=0),
        op(1, 1, "read", 2, 3, output=0),
        op(2, 2, "read", 2, 3, output=0),
        op(3, 1, "cas", 4, 5, expected=0, value=1, output=True),
        op(4, 2, "cas", 6, 7, expected=0, value=1, output=True),
        op(5, 1, "read", 8, 9, output=1),
    ]
    assert_rejected(history, {3, 4}, 4)


@pytest.mark.timeout(10)
def test_a_value_unhappens() -> None:
    # w2 is still running, but once a read has seen 2 a later read cannot see 1 again.
    history = [
        op(0, 1, "write", 0, 1, value=1),
        op(1, 1, "write", 2, 10, value=2),
        op(2, 2, "read", 3, 4, output=2),
        op(3, 2, "read", 5, 6, output=1),
    ]
    result = assert_rejected(history, {0, 1, 2, 3}, 3)
    example = result.counterexample
    assert example is not None and example.in_flight == {1}
    assert "still running at the cut" in example.describe()


@pytest.mark.timeout(10)
def test_the_earliest_violation_is_reported_first() -> None:
    history = [
        op(0, 1, "write", 0, 1, key="late", value=1),
        op(1, 1, "read", 50, 51, key="late", output=2),
        op(2, 2, "read", 10, 11, key="early", output=3),
        op(3, 3, "write", 0, 1, key="fine", value=1),
    ]
    result = check(history)
    assert result.ok is False
    assert [f.key for f in result.failures] == ["early", "late"]
    assert result.counterexample is not None and result.counterexample.key == "early"
    assert result.keys["fine"].ok is True


# --------------------------------------------------------------------------- simulation


def simulate(
    seed: int,
    n_ops: int,
    clients: int,
    keys: Sequence[str],
    unknown: float = 0.05,
    fail: float = 0.03,
) -> list[Operation]:
    """A history of a linearizable register: each operation takes effect at a point chosen
    inside its interval (an unknown one, if at all, at any point after its invocation)."""
    rng = random.Random(seed)
    free = [(rng.uniform(0, 2), c) for c in range(clients)]
    heapq.heapify(free)
    values = itertools.count(1)
    written: dict[str, list[int]] = {k: [] for k in keys}
    rows: list[dict[str, Any]] = []
    for i in range(n_ops):
        start, client = heapq.heappop(free)
        key = rng.choice(keys)
        kind = rng.choices(["read", "write", "cas", "delete"], weights=[4, 3, 3, 0.5])[0]
        value = expected = None
        if kind in ("write", "cas"):
            pool = written[key]
            value = rng.choice(pool) if pool and rng.random() < 0.1 else next(values)
            if kind == "cas":
                choice = rng.random()
                expected = pool[-1] if pool and choice < 0.6 else rng.choice(pool) if pool else None
                if choice > 0.9:
                    expected = None
            pool.append(value)
        end = start + rng.uniform(0.05, 3.0)
        roll = rng.random()
        status = "fail" if roll < fail else "unknown" if roll < fail + unknown else "ok"
        point: float | None = None
        if status == "ok":
            point = rng.uniform(start, end)
        elif status == "unknown" and rng.random() < 0.5:
            point = rng.uniform(start, end + 10)  # may take effect after the client gave up
        row = dict(id=i, client=client, kind=kind, key=key, value=value, expected=expected)
        rows.append(row | dict(invoke=start, complete=end, status=status, point=point))
        heapq.heappush(free, (end + rng.uniform(0, 1), client))

    register: dict[str, int] = {}
    outputs: dict[int, Any] = {}
    for row in sorted((r for r in rows if r["point"] is not None), key=lambda r: r["point"]):
        key, current = row["key"], register.get(row["key"])
        if row["kind"] == "read":
            outputs[row["id"]] = current
        elif row["kind"] == "write":
            register[key] = row["value"]
        elif row["kind"] == "delete":
            register.pop(key, None)
        else:
            swapped = current == row["expected"]
            outputs[row["id"]] = swapped
            if swapped:
                register[key] = row["value"]
    return [
        op(
            r["id"],
            r["client"],
            r["kind"],
            r["invoke"],
            r["complete"],
            key=r["key"],
            value=r["value"],
            expected=r["expected"],
            output=outputs.get(r["id"]) if r["status"] == "ok" else None,
            status=r["status"],
        )
        for r in rows
    ]


def random_history(seed: int) -> list[Operation]:
    rng = random.Random(seed)
    keys = ["a", "b", "c"][: rng.randint(1, 3)]
    return simulate(seed, rng.randint(20, 200), rng.randint(1, 8), keys)


def mutate(history: list[Operation], seed: int) -> tuple[list[Operation], int, str] | None:
    """One change that certainly makes the history impossible (whatever the timing): the
    history, the id of the changed operation and the kind of change; None if this history
    offers no such change."""
    rng = random.Random(seed)
    reads = [o for o in history if o.op == "read" and o.status is Status.OK]
    swaps = [o for o in history if o.op == "cas" and o.status is Status.OK]
    # Values written exactly once, with the writer invoked after some read completed.
    writers: dict[tuple[str, Any], list[Operation]] = {}
    for o in history:
        if o.op in ("write", "cas"):
            writers.setdefault((o.key, o.value), []).append(o)
    future = [
        (r, ws[0])
        for r in reads
        for (key, _), ws in writers.items()
        if key == r.key and len(ws) == 1 and ws[0].invoke > r.complete  # type: ignore[operator]
    ]
    choices = ["never-read"] * bool(reads) + ["never-cas"] * bool(swaps)
    choices += ["future-read"] * bool(future)
    if not choices:
        return None
    kind = rng.choice(choices)
    if kind == "never-read":
        target = rng.choice(reads)
        changed = dataclasses.replace(target, output=NEVER)
    elif kind == "never-cas":
        target = rng.choice(swaps)
        changed = dataclasses.replace(target, expected=NEVER, output=True)
    else:
        target, writer = rng.choice(future)
        changed = dataclasses.replace(target, output=writer.value)
    return [changed if o.id == target.id else o for o in history], target.id, kind


@pytest.mark.timeout(240)
def test_simulated_linearizable_histories_always_pass() -> None:
    sizes = []
    for seed in range(300):
        history = random_history(seed)
        result = check(history, timeout=30)
        assert result.ok is True, f"seed {seed}:\n{result.describe()}"
        sizes.append(len(history))
    assert max(sizes) > 180


@pytest.mark.timeout(300)
def test_certain_mutations_are_rejected_with_the_mutated_operation() -> None:
    mutated = 0
    for seed in range(150):
        history = random_history(seed)
        change = mutate(history, seed)
        if change is None:
            continue
        broken, target, kind = change
        result = check(broken, timeout=30)
        assert result.ok is False, f"seed {seed}: mutation of #{target} not caught"
        changed = next(o for o in broken if o.id == target)
        example = result.keys[changed.key].counterexample
        assert example is not None and example.minimal, f"seed {seed}"
        first = example.culprit
        assert first is not None and first.complete is not None, f"seed {seed}"
        # The prefix up to the mutated operation's return already fails, and any prefix
        # without the mutated operation is a prefix of a linearizable history.
        assert changed.invoke < first.complete <= changed.complete, f"seed {seed}"  # type: ignore[operator]
        if kind != "never-cas":
            # Nothing can explain the read, from the moment it returns.
            assert first.id == target, f"seed {seed}: culprit #{first.id}, mutated #{target}"
            assert target in {o.id for o in example.operations}
        assert check(example.operations).ok is False, f"seed {seed}:\n{example.describe()}"
        # Every other key is untouched and still passes.
        assert all(r.ok for k, r in result.keys.items() if k != changed.key)
        mutated += 1
    assert mutated > 140


@pytest.mark.timeout(120)
def test_thousands_of_operations_on_one_key() -> None:
    busy = simulate(7, 3000, 8, ["k"])
    started = time.monotonic()
    result = check(busy, timeout=100)
    assert result.ok is True
    log.info("3000 ops, 8 clients, one key: %.2f s", time.monotonic() - started)
    # Deep: 5,000 sequential operations (an iterative search: no recursion limit).
    deep = [
        op(i, 1, "write" if i % 2 == 0 else "read", 2 * i, 2 * i + 1, value=i, output=i - 1)
        for i in range(5000)
    ]
    assert check(deep, timeout=100).ok is True
    # The last read sees the very first write: a stale read found among 1,000 operations.
    stale = deep[:999] + [dataclasses.replace(deep[999], output=0)]
    rejected = check(stale, timeout=100)
    assert rejected.ok is False and culprit(rejected) == 999
    assert ids(rejected) == {0, 2, 999}  # 0 written, then overwritten by 2, then read


@pytest.mark.timeout(300)
def test_performance_10000_operations_20_keys_8_clients() -> None:
    keys = [f"key{i}" for i in range(20)]
    history = simulate(2024, 10_000, 8, keys)
    started = time.monotonic()
    result = check(history)
    elapsed = time.monotonic() - started
    assert result.ok is True
    print(  # the figure quoted in docs/linearizability.md (run with -s to see it)
        f"\nlinearizability: 10,000 ops, 20 keys, 8 clients: {elapsed:.2f} s, "
        f"{result.stats.states} states, {result.stats.steps} steps"
    )


# --------------------------------------------------------------------------- limits


@pytest.mark.timeout(30)
def test_timeout_gives_up_with_none() -> None:
    # 40 overlapping writes and a read of a value none of them wrote: refuting it means
    # trying every order of the writes, far more than fits in a tenth of a second.
    writes = [op(i, i, "write", i * 0.001, 100, key="hard", value=i) for i in range(40)]
    history = [*writes, op(40, 99, "read", 101, 102, key="hard", output=NEVER)]
    history.append(op(41, 1, "write", 0, 1, key="later", value=1))
    started = time.monotonic()
    result = check(history, timeout=0.1)
    assert time.monotonic() - started < 5
    assert result.ok is None and result.counterexample is None
    assert result.keys["hard"].ok is None and result.keys["later"].ok is None
    assert "unknown (timed out)" in result.describe()


@pytest.mark.timeout(30)
def test_shrinking_cut_short_still_lists_a_failing_history() -> None:
    history = simulate(3, 200, 4, ["k"])
    broken, target, _ = mutate(history, 3) or pytest.fail("no mutation")
    result = check(broken, shrink_timeout=0)
    assert result.ok is False
    example = result.counterexample
    assert example is not None and not example.minimal
    assert target in {o.id for o in example.operations}
    assert check(example.operations).ok is False


class CounterModel:
    """A counter with unique increments: ``add`` (value) and ``read`` (output: the total)."""

    def init(self) -> Hashable:
        return 0

    def step(self, state: Hashable, op: Operation) -> tuple[bool, Hashable]:
        assert isinstance(state, int)
        if op.op == "add":
            return True, state + op.value
        if op.op == "read":
            return op.status is Status.UNKNOWN or op.output == state, state
        raise ValueError(op.op)

    def describe(self, op: Operation) -> str:
        return f"add {op.value}" if op.op == "add" else f"read -> {op.output}"


@pytest.mark.timeout(10)
def test_other_models_plug_in() -> None:
    model = CounterModel()
    history = [
        op(0, 1, "add", 0, 10, value=1),
        op(1, 2, "add", 0, 10, value=10),
        op(2, 3, "read", 1, 2, output=10),
        op(3, 3, "add", 3, 4, value=100, status="unknown"),
        op(4, 3, "read", 11, 12, output=111),
    ]
    assert check(history, model=model).ok is True
    bad = [*history[:4], op(4, 3, "read", 11, 12, output=101)]
    result = check(bad, model=model)
    assert result.ok is False and culprit(result) == 4
    assert result.counterexample is not None
    assert "read -> 101" in result.counterexample.describe()


# --------------------------------------------------------------------------- recording


@pytest.mark.timeout(10)
def test_recorder_builds_operations_with_the_injected_clock() -> None:
    history = History(clock=TickClock())
    a = history.invoke(1, "write", "x", value=1)
    b = history.invoke(2, "read", "x")
    history.ok(a)
    history.ok(b, 1)
    c = history.invoke(3, "cas", "x", value=2, expected=1)
    history.unknown(c)
    d = history.invoke(4, "write", "x", value=3)
    history.fail(d)
    e = history.invoke(5, "read", "x")  # never completed: in flight
    ops = history.operations()
    assert [o.id for o in ops] == [a, b, c, d, e] == [0, 1, 2, 3, 4]
    assert (ops[0].invoke, ops[0].complete, ops[1].invoke, ops[1].complete) == (1, 3, 2, 4)
    assert [o.status for o in ops] == ["ok", "ok", "unknown", "fail", "unknown"]
    assert ops[4].complete is None and ops[1].output == 1
    assert len(history) == 5
    assert check(history).ok is True
    with pytest.raises(ValueError, match="already completed"):
        history.ok(a)
    with pytest.raises(ValueError, match="no operation"):
        history.fail(99)


@pytest.mark.timeout(60)
def test_recorder_is_thread_safe_and_a_locked_register_is_linearizable() -> None:
    history = History(clock=TickClock())
    lock = threading.Lock()
    register: dict[str, Any] = {}

    def client(number: int) -> None:
        rng = random.Random(number)
        for i in range(200):
            key = rng.choice("ab")
            if rng.random() < 0.5:
                h = history.invoke(number, "read", key)
                with lock:
                    value = register.get(key)
                history.ok(h, value)
            else:
                expected = rng.choice([None, *range(10)])
                value = number * 1000 + i
                h = history.invoke(number, "cas", key, value=value, expected=expected)
                with lock:
                    swapped = register.get(key) == expected
                    if swapped:
                        register[key] = value
                history.ok(h, swapped)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ops = history.operations()
    assert len(ops) == 1600 and len({o.id for o in ops}) == 1600
    times = [t for o in ops for t in (o.invoke, o.complete)]
    assert len(set(times)) == 3200  # every clock reading is distinct: none lost to a race
    assert check(history, timeout=50).ok is True


@pytest.mark.timeout(10)
def test_save_and_load_round_trip(tmp_path: Path) -> None:
    history = History(clock=TickClock())
    a = history.invoke("c1", "write", "x", value={"k": [1, 2], "b": b"\x01\xff"})
    history.ok(a)
    b = history.invoke("c2", "read", "x")
    history.ok(b, {"k": (1, 2), "b": b"\x01\xff"})
    history.fail(history.invoke("c1", "write", "x", value=3))
    history.unknown(history.invoke("c2", "cas", "x", value=4, expected=None))
    history.invoke("c3", "delete", "x")
    path = tmp_path / "h.jsonl"
    history.save(path)
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"type": "zraft-history", "version": 1}
    assert len(lines) == 1 + 5 + 4
    loaded = History.load(path)
    assert loaded.operations() == [
        dataclasses.replace(o, value=_listify(o.value), output=_listify(o.output))
        for o in history.operations()
    ]
    assert check(loaded).ok is True
    # The file loads again identically after a second save.
    loaded.save(tmp_path / "again.jsonl")
    assert (tmp_path / "again.jsonl").read_text() == path.read_text()


def _listify(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


@pytest.mark.timeout(10)
def test_streaming_to_a_file_survives_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    with History(clock=TickClock(), path=path) as history:
        w = history.invoke(1, "write", "x", value=1)
        history.ok(w)
        history.invoke(3, "write", "x", value=2)  # never completes: the process "dies"
        r = history.invoke(2, "read", "x")
        history.ok(r, 2)
        # Everything is on disk already, before close; a torn line is ignored.
        with path.open("a") as f:
            f.write('{"type": "ok", "id"')
        loaded = History.load(path)
    ops = loaded.operations()
    assert [o.status for o in ops] == ["ok", "unknown", "ok"]
    # The in-flight write of 2 may have taken effect before the read: linearizable.
    assert check(loaded).ok is True
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "zraft-history", "version": 1}\nnot json\n{"type": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        History.load(bad)
    with pytest.raises(TypeError):
        History(clock=TickClock()).invoke(1, "write", "x", value={1, 2})


@pytest.mark.timeout(10)
def test_default_clock_is_monotonic_nanoseconds() -> None:
    history = History()
    before = time.monotonic_ns()
    history.ok(history.invoke(1, "read", "x"), None)
    after = time.monotonic_ns()
    (only,) = history.operations()
    assert isinstance(only.invoke, int) and before <= only.invoke <= only.complete <= after  # type: ignore[operator]
    assert check(history, model=KV_MODEL).ok is True

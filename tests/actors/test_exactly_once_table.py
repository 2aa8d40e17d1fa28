"""The exactly-once client table's rules, deterministic (docs/reliability.md, "Exactly-once
writes"): a seq is refused only once its client acknowledged its answer, and then as
``forgotten``, never as the backend's ``rejected``; no result is dropped to make room (a
write in flight must find its seq unclaimed), the count is bounded at admission instead;
the tables are the same on every replica and through snapshots."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.support.append_backend import AppendLog
from zraft.actors.commands import Command, CommandKind
from zraft.actors.state_machine import FORGOTTEN, ReplicatedState, admission_refusal
from zraft.core import Configuration, Entry, EntryKind
from zraft.storage import SnapshotStore

CONFIG = Configuration.of(["a", "b", "c"])


def write(index: int, item: str, client: str, seq: int, acked: int) -> Entry:
    data = Command(CommandKind.WRITE, client, seq, acked, {"append": item}).encode()
    return Entry(index, 1, EntryKind.NORMAL, data)


def fresh() -> ReplicatedState:
    return ReplicatedState(AppendLog(), CONFIG)


def items(state: ReplicatedState) -> list[str]:
    return state.query(None).data  # type: ignore[no-any-return]


@pytest.mark.timeout(30)
def test_a_write_in_flight_is_applied_however_many_results_its_client_holds() -> None:
    # 5,000 later writes of the client applied before seq 1 (all unacknowledged, as when
    # thousands are in flight): seq 1 was never answered, so it must still be applied.
    state = fresh()
    state.apply([write(i, f"w{i + 1}", "c", i + 1, 0) for i in range(1, 5001)])
    late = state.apply([write(5001, "w1", "c", 1, 0)])[0]
    assert late.outcome == (True, 5001)
    assert sorted(items(state)) == sorted(f"w{s}" for s in range(1, 5002))


@pytest.mark.timeout(30)
def test_only_an_acknowledged_seq_is_refused_and_as_forgotten_not_rejected() -> None:
    state = fresh()
    state.apply([write(1, "a", "c", 1, 0), write(2, "b", "c", 2, 0)])
    # unacknowledged: a retry is answered from the table, not applied again
    again = state.apply([write(3, "a-again", "c", 1, 0)])[0]
    assert again.outcome == (True, 1) and again.answered_at == 1
    # acknowledged (acked=2 came with seq 3): the answer is gone, and the refusal says so
    state.apply([write(4, "c", "c", 3, 2)])
    late = state.apply([write(5, "a-late", "c", 1, 2)])[0]
    assert late.outcome is not None and late.outcome[0] is False
    assert late.outcome[1]["code"] == FORGOTTEN != "rejected"
    assert items(state) == ["a", "b", "c"]


@pytest.mark.timeout(30)
def test_admission_is_decided_by_the_request_alone() -> None:
    assert admission_refusal(4096, 0, 4096) is None
    assert admission_refusal(5000, 904, 4096) is None
    refusal = admission_refusal(4097, 0, 4096)
    assert refusal is not None and "4096" in refusal
    # a retry of the lowest unanswered write is always admitted: acked is below its seq
    assert all(admission_refusal(s, s - 1, 1) is None for s in range(1, 100))


def _client_run(seed: int, limit: int, count: int = 3000) -> list[Entry]:
    """A client with many writes in flight that reach the log out of order, some twice
    (retries), each carrying the low-water mark of its answers, admitted as the leader
    does (``admission_refusal``)."""
    rng = random.Random(seed)
    entries: list[Entry] = []
    in_flight: list[int] = []
    answered: set[int] = set()
    next_seq, acked = 1, 0
    while next_seq <= count or in_flight:
        if next_seq <= count and len(in_flight) < 2 * limit and rng.random() < 0.55:
            if admission_refusal(next_seq, acked, limit) is None:
                in_flight.append(next_seq)
                next_seq += 1
            elif not in_flight:
                raise AssertionError("admission stalled a client with nothing in flight")
            continue
        if not in_flight:
            continue
        seq = in_flight.pop(rng.randrange(len(in_flight)))
        copies = 2 if rng.random() < 0.05 else 1
        for _ in range(copies):
            entries.append(write(len(entries) + 1, f"w{seq}", "c", seq, acked))
        answered.add(seq)
        while acked + 1 in answered:
            acked += 1
    return entries


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(5))
def test_tables_agree_on_every_replica_and_through_snapshots(seed: int, tmp_path: Path) -> None:
    entries = _client_run(seed, limit=64)
    half = len(entries) // 2
    one, two = fresh(), fresh()
    one.apply(entries[:half])
    two.apply(entries[:half])
    assert one.snapshot()[2] == two.snapshot()[2]
    store = SnapshotStore(tmp_path)
    meta, writer, extra = one.snapshot()
    store.create(meta, writer, extra)
    three = ReplicatedState(AppendLog(), Configuration())
    got_meta, path, got_extra = store.latest()  # type: ignore[misc]
    three.install(got_meta, Path(path), got_extra)
    for state in (one, two, three):
        state.apply(entries[half:])
    tables = [state.snapshot()[2] for state in (one, two, three)]
    assert tables[0] == tables[1] == tables[2]
    for state in (one, two, three):
        applied = items(state)
        assert len(applied) == len(set(applied)) == 3000  # each exactly once


@pytest.mark.timeout(60)
def test_admission_bounds_the_results_a_client_leaves_unacknowledged() -> None:
    limit = 64
    state = fresh()
    most = 0
    for entry in _client_run(7, limit):
        state.apply([entry])
        rows = state.snapshot()[2]["clients"]
        most = max(most, len(rows[0][2]))
    assert 0 < most <= 2 * limit + 1

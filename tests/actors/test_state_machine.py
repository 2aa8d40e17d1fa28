"""The replicated state: exactly-once writes, deterministic tables, snapshots."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

from zraft.actors.commands import Command, CommandKind
from zraft.actors.state_machine import ReplicatedState
from zraft.backends import kv
from zraft.backends.kv import KeyValueBackend
from zraft.core import Configuration, Entry, EntryKind
from zraft.storage import SnapshotStore

CONFIG = Configuration.of(["a", "b", "c"])


def write(index: int, body: object, client: str = "c1", seq: int = 0, acked: int = 0) -> Entry:
    data = Command(CommandKind.WRITE, client, seq, acked, body).encode()
    return Entry(index, 1, EntryKind.NORMAL, data)


def fresh() -> ReplicatedState:
    return ReplicatedState(KeyValueBackend(), CONFIG, max_clients=3)


@pytest.mark.timeout(30)
def test_a_retried_write_returns_the_first_result_and_applies_once() -> None:
    state = fresh()
    first = state.apply([write(1, kv.cas("k", None, "v1"), seq=1)])[0]
    retry = state.apply([write(2, kv.cas("k", None, "v2"), seq=1)])[0]
    assert retry.outcome == first.outcome
    # ...and the index where the write took effect (a lock's fencing token is that index)
    assert (first.answered_at, retry.index, retry.answered_at) == (1, 2, 1)
    assert state.query(kv.get("k")).data == {"found": True, "value": "v1"}
    # a new seq is a new write
    state.apply([write(3, kv.put("k", "v3"), seq=2)])
    assert state.query(kv.get("k")).data == {"found": True, "value": "v3"}


@pytest.mark.timeout(30)
def test_acknowledged_results_are_forgotten_and_their_retries_refused() -> None:
    state = fresh()
    state.apply([write(1, kv.put("k", 1), seq=1), write(2, kv.put("k", 2), seq=2, acked=1)])
    late = state.apply([write(3, kv.put("k", 9), seq=1, acked=1)])[0]
    assert late.outcome is not None and late.outcome[0] is False
    assert state.query(kv.get("k")).data == {"found": True, "value": 2}


def through_a_snapshot(
    state: ReplicatedState, directory: Path, edit: Callable[[dict[str, Any]], None] | None = None
) -> ReplicatedState:
    """A fresh state installed from a snapshot of ``state`` written to ``directory``
    (``edit`` changes the snapshot's tables first)."""
    store = SnapshotStore(directory)
    meta, writer, extra = state.snapshot()
    if edit is not None:
        edit(extra)
    store.create(meta, writer, extra)
    restored = ReplicatedState(KeyValueBackend(), Configuration())
    got_meta, path, got_extra = store.latest()  # type: ignore[misc]
    restored.install(got_meta, Path(path), got_extra)
    return restored


def _kept_seqs(state: ReplicatedState, client: str = "c1") -> list[int]:
    rows = {row[0]: row for row in state.snapshot()[2]["clients"]}
    return [item[0] for item in rows[client][2]]


@pytest.mark.timeout(30)
def test_results_are_forgotten_oldest_first_also_after_a_snapshot(tmp_path: Path) -> None:
    # A client's concurrent writes reach the log in any order; an acknowledgement forgets
    # results from the oldest applied until one it does not cover (a later straggler waits
    # there until the acknowledgements pass it).
    state = fresh()
    state.apply([write(i + 1, kv.put("k", s), seq=s) for i, s in enumerate([3, 1, 2, 5, 4, 6])])
    state.apply([write(7, kv.put("k", 7), seq=7, acked=3)])
    assert _kept_seqs(state) == [5, 4, 6, 7]
    restored = through_a_snapshot(state, tmp_path)
    for table in (state, restored):
        table.apply([write(8, kv.put("k", 8), seq=8, acked=5)])
        assert _kept_seqs(table) == [6, 7, 8]
        again = table.apply([write(9, kv.put("k", 99), seq=6, acked=5)])[0]
        assert again.answered_at == 6  # still remembered: answered from the table
        refused = table.apply([write(10, kv.put("k", 99), seq=4, acked=5)])[0]
        assert refused.outcome is not None and refused.outcome[0] is False
        assert table.query(kv.get("k")).data == {"found": True, "value": 8}


@pytest.mark.timeout(30)
def test_idle_clients_are_evicted_in_entry_order_the_same_on_every_peer() -> None:
    peers = [fresh(), fresh()]
    entries = [write(i + 1, kv.put(f"k{i}", i), client=f"c{i % 5}", seq=i + 1) for i in range(20)]
    for state in peers:
        state.apply(entries)
    tables = [state.snapshot()[2] for state in peers]
    assert tables[0] == tables[1]
    assert len(tables[0]["clients"]) == 3


@pytest.mark.timeout(30)
def test_bad_entries_become_deterministic_failures() -> None:
    state = fresh()
    results = state.apply(
        [
            Entry(1, 1, EntryKind.NORMAL, b"\xc1 not msgpack"),
            write(2, {"op": "explode"}),
            Entry(3, 1, EntryKind.NOOP, b""),
            # envelopes with the wrong shape or field types, an unhashable kind among them
            Entry(4, 1, EntryKind.NORMAL, msgpack.packb([[0], "c1", 1, 0, None])),
            Entry(5, 1, EntryKind.NORMAL, msgpack.packb([{}, "c1", 1, 0, None])),
            Entry(6, 1, EntryKind.NORMAL, msgpack.packb([9, "c1", 1, 0, None])),
            Entry(7, 1, EntryKind.NORMAL, msgpack.packb([0, 7, 1, 0, None])),
            Entry(8, 1, EntryKind.NORMAL, msgpack.packb([0, "c1", -1, 0, None])),
            Entry(9, 1, EntryKind.NORMAL, msgpack.packb({"kind": 0})),
        ]
    )
    assert results[0].outcome is not None and results[0].outcome[0] is False
    assert results[1].outcome is not None and results[1].outcome[0] is False
    assert results[2].outcome is None
    for bad in results[3:]:
        assert bad.outcome is not None and bad.outcome[0] is False
        assert "malformed command" in bad.outcome[1]["reason"]
    assert state.applied_index == 9 and len(state.backend) == 0
    with pytest.raises(ValueError):
        state.apply([write(19, kv.put("k", 1))])  # a gap is a bug in the caller, not input


@pytest.mark.timeout(30)
def test_snapshot_and_install_keep_data_and_dedupe_tables(tmp_path: Path) -> None:
    state = fresh()
    first, _ = state.apply(
        [write(1, kv.put("k", "v"), seq=1), write(2, kv.put("j", 1), client="c2", seq=5)]
    )
    restored = through_a_snapshot(state, tmp_path)
    assert restored.applied_index == 2 and restored.config == CONFIG
    assert restored.query(kv.get("k")).data == {"found": True, "value": "v"}
    retry = restored.apply([write(3, kv.put("k", "again"), seq=1)])[0]
    assert retry.outcome == first.outcome  # the dedupe table travelled in the snapshot
    assert retry.answered_at == 1  # with the index of the first copy
    assert restored.query(kv.get("k")).data == {"found": True, "value": "v"}


@pytest.mark.timeout(30)
def test_a_snapshot_from_before_result_indexes_still_installs(tmp_path: Path) -> None:
    state = fresh()
    (first,) = state.apply([write(1, kv.put("k", "v"), seq=1)])

    def without_indexes(extra: dict[str, Any]) -> None:
        extra["clients"] = [[c, acked, [r[:3] for r in rs]] for c, acked, rs in extra["clients"]]

    restored = through_a_snapshot(state, tmp_path, without_indexes)
    retry = restored.apply([write(2, kv.put("k", "again"), seq=1)])[0]
    assert retry.outcome == first.outcome
    assert retry.answered_at == 2  # no index was kept: the retry's own


def session_entry(index: int, kind: CommandKind, body: object, client: str = "s1", seq: int = 0):
    data = Command(kind, client, seq, 0, body).encode()
    return Entry(index, 1, EntryKind.NORMAL, data)


@pytest.mark.timeout(30)
def test_sessions_own_temporary_data_until_they_close_or_expire(tmp_path: Path) -> None:
    state = fresh()
    results = state.apply(
        [
            session_entry(1, CommandKind.SESSION_OPEN, 1500, seq=1),
            session_entry(2, CommandKind.SESSION_WRITE, [True, kv.put("tmp", 1)], seq=2),
            session_entry(3, CommandKind.SESSION_WRITE, [False, kv.put("keep", 1)], seq=3),
            session_entry(4, CommandKind.SESSION_WRITE, [True, kv.put("x", 1)], "ghost", 1),
        ]
    )
    assert state.session_table() == {"s1": 1500}
    assert results[3].outcome is not None and results[3].outcome[0] is False  # not open
    restored = through_a_snapshot(state, tmp_path)
    assert restored.session_table() == {"s1": 1500}
    for replica in (state, restored):
        expiry = replica.apply([session_entry(5, CommandKind.SESSION_EXPIRE, "s1", client="")])
        assert expiry[0].trigger_keys == frozenset({"tmp"})
        assert replica.query(kv.get("tmp")).data["found"] is False
        assert replica.query(kv.get("keep")).data["found"] is True
        assert replica.session_table() == {}
        late = replica.apply(
            [session_entry(6, CommandKind.SESSION_WRITE, [True, kv.put("y", 1)], seq=7)]
        )
        assert late[0].outcome is not None and late[0].outcome[1]["code"] == "session_expired"

"""The state machine actor: a plain pykka actor that applies committed entries on its own thread,
answers the clients waiting for them, takes its snapshots when due, and reports its own
counters to the peer actor by message (it shares none)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pykka
import pytest

from zraft.actors.apply_driver import snapshot_point
from zraft.actors.commands import Command, CommandKind
from zraft.actors.messages import (
    REPORT_METRICS,
    AppliedUpTo,
    ApplyBatch,
    AwaitWrites,
    MetricsReport,
    PendingWrite,
    SnapshotTaken,
)
from zraft.actors.state_machine import ReplicatedState
from zraft.actors.state_machine_actor import StateMachineActor
from zraft.backends import kv
from zraft.backends.kv import KeyValueBackend
from zraft.core import Configuration, Entry, EntryKind
from zraft.storage import SnapshotStore
from zraft.transport import ClientReply

WAIT = 10.0  # real seconds to wait for another thread (a bound, never reached when green)
CONFIG = Configuration.of(["a", "b", "c"])


@pytest.fixture(autouse=True)
def stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=WAIT)


def write(index: int, key: str, value: Any) -> Entry:
    command = Command(CommandKind.WRITE, "c1", index, 0, kv.put(key, value))
    return Entry(index, 1, EntryKind.NORMAL, command.encode())


def waiter(index: int) -> PendingWrite:
    return PendingWrite(index, 1, f"client-{index}".encode(), 100 + index)


def apply(ref: pykka.ActorRef[Any], entries: tuple[Entry, ...], *waiters: PendingWrite) -> None:
    """As the peer driver tells it: a write's waiter when it is proposed, then the entries
    once committed."""
    if waiters:
        ref.tell(AwaitWrites(waiters))
    ref.tell(ApplyBatch(entries))


class StubPeer:
    def __init__(self, journal: list[tuple[str, Any]]) -> None:
        self.told: list[Any] = []
        self.journal = journal  # what the peer was told and the replies, in order
        self.snapshot_taken = threading.Event()

    def tell(self, message: Any) -> None:
        self.told.append(message)
        self.journal.append(("peer", message))
        if isinstance(message, SnapshotTaken):
            self.snapshot_taken.set()

    def reports(self) -> list[dict[str, Any]]:
        return [dict(m.values) for m in self.told if isinstance(m, MetricsReport)]


@dataclass
class Session:
    ref: pykka.ActorRef[Any]
    state: ReplicatedState
    store: SnapshotStore
    peer: StubPeer
    replies: list[tuple[int, list[tuple[bytes, ClientReply]]]]  # (thread, replies)
    applied_on: list[tuple[int, int]]  # (first index of the batch, thread)
    snapshot_on: list[int]  # threads that copied the state for a snapshot
    failures: list[str]

    def sync(self) -> int:
        """Wait until everything told so far is handled; the actor's thread."""
        ident: int = self.ref.ask(Ident(), timeout=WAIT)
        return ident

    def reply_to(self, index: int) -> list[tuple[int, ClientReply]]:
        who = waiter(index).identity
        return [(t, r) for t, rs in self.replies for i, r in rs if i == who]


class Ident:
    """Asked of the probe: its thread's ident (handled after what was told before)."""


class StateMachineProbe(StateMachineActor):
    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Ident):
            return threading.get_ident()
        return super().on_receive(message)


def start_session(tmp_path: Path, *, max_log_count: int = 1_000_000) -> Session:
    state = ReplicatedState(KeyValueBackend(), CONFIG)
    store = SnapshotStore(tmp_path / "snapshots", fsync=False)
    replies: list[tuple[int, list[tuple[bytes, ClientReply]]]] = []
    applied_on: list[tuple[int, int]] = []
    snapshot_on: list[int] = []
    failures: list[str] = []
    real_apply, real_snapshot = state.apply, state.snapshot

    def apply(entries: list[Entry]) -> Any:
        applied_on.append((entries[0].index, threading.get_ident()))
        return real_apply(entries)

    def snapshot() -> Any:
        snapshot_on.append(threading.get_ident())
        return real_snapshot()

    state.apply = apply  # type: ignore[method-assign]
    state.snapshot = snapshot  # type: ignore[method-assign]

    journal: list[tuple[str, Any]] = []

    def reply(batch: Iterable[tuple[bytes, ClientReply]]) -> None:
        replies.append((threading.get_ident(), list(batch)))
        journal.append(("reply", replies[-1][1]))

    peer = StubPeer(journal)
    ref = StateMachineProbe.start(
        peer_id="a",
        state=state,
        snapshots=store,
        snapshot_lock=threading.Lock(),
        max_log_count=max_log_count,
        reply=reply,
        peer=peer,
        on_failure=failures.append,
    )
    return Session(ref, state, store, peer, replies, applied_on, snapshot_on, failures)


@pytest.mark.timeout(30)
def test_it_applies_and_answers_on_its_own_thread(tmp_path: Path) -> None:
    s = start_session(tmp_path)
    apply(s.ref, (write(1, "k1", "v1"),), waiter(1))
    batch = tuple(write(i, f"k{i}", i) for i in (2, 3, 4))
    apply(s.ref, batch, waiter(3))
    own = s.sync()
    assert own != threading.get_ident()
    assert s.applied_on == [(1, own), (2, own)]
    assert s.reply_to(1) == [(own, ClientReply(101, True, {"created": True}, index=1))]
    assert s.reply_to(3) == [(own, ClientReply(103, True, {"created": True}, index=3))]
    assert s.state.applied_index == 4
    assert s.failures == []


@pytest.mark.timeout(30)
def test_it_reports_its_counters_by_message_and_only_when_they_changed(tmp_path: Path) -> None:
    s = start_session(tmp_path)
    s.ref.tell(REPORT_METRICS)
    s.sync()
    assert len(s.peer.reports()) == 1  # the first report goes out whatever it holds
    assert s.peer.reports()[0]["applied_entries"] == 0
    s.ref.tell(REPORT_METRICS)
    s.sync()
    assert len(s.peer.reports()) == 1  # nothing changed: nothing sent
    s.ref.tell(ApplyBatch(tuple(write(i, "k", i) for i in (1, 2, 3))))
    s.ref.tell(REPORT_METRICS)
    s.sync()
    last = s.peer.reports()[-1]
    assert (last["applied_entries"], last["batches"]) == (3, 1)
    # A copy: what the peer holds does not move when the actor's counters do.
    held = s.peer.told[-1]
    s.ref.tell(ApplyBatch((write(4, "k", 4),)))
    s.sync()
    assert dict(held.values)["applied_entries"] == 3


@pytest.mark.timeout(30)
def test_a_snapshot_falls_due_and_is_taken_on_its_thread_and_reported_at_once(
    tmp_path: Path,
) -> None:
    s = start_session(tmp_path, max_log_count=3)
    for index in (1, 2, 3):
        apply(s.ref, (write(index, f"k{index}", index),), waiter(index))
    own = s.sync()
    assert [t for t, _ in s.reply_to(3)] == [own]  # answered, snapshot or not
    assert s.peer.snapshot_taken.wait(WAIT)
    s.sync()
    assert s.snapshot_on == [own]
    latest = s.store.latest()
    assert latest is not None and latest[0].index == 3
    # Reported without waiting for the next REPORT_METRICS: someone may be waiting on it.
    assert s.peer.reports()[-1]["snapshots_taken"] == 1
    assert s.failures == []


@pytest.mark.parametrize("every", [2, 3, 10, 50, 10_000])
@pytest.mark.parametrize("peers", [2, 3, 5])
def test_peers_take_their_snapshots_at_points_of_their_own(every: int, peers: int) -> None:
    """Each peer snapshots every ``every`` entries, at a point of its own: peers of one
    cluster never all stall for a snapshot and its compaction at once."""
    for rank in range(peers):
        for after in (0, 1, every - 1, every, 7 * every + 3):
            point = snapshot_point(after, every, rank, peers)
            assert after + every // 2 < point <= after + every + every // 2
            assert point % every == rank * every // peers
            assert snapshot_point(point, every, rank, peers) == point + every  # steady
    phases = {rank * every // peers for rank in range(peers)}
    if every >= peers:
        assert len(phases) == peers  # no two peers share a point
    assert snapshot_point(5, 1, 0, 3) == 6 and snapshot_point(5, 10, 0, 1) == 15


def open_session(index: int, session: str, timeout_ms: int) -> Entry:
    command = Command(CommandKind.SESSION_OPEN, session, 1, 0, timeout_ms)
    return Entry(index, 1, EntryKind.NORMAL, command.encode())


@pytest.mark.timeout(30)
def test_the_peer_hears_how_far_it_applied_before_any_client_is_answered(
    tmp_path: Path,
) -> None:
    """The peer actor keeps its own copy of the applied index and term and of the sessions
    (the state machine actor shares none of its state). The copy is told before the replies
    leave, so a client that just opened a session and pings next is never told it has
    none; the sessions are copied only when they changed."""
    s = start_session(tmp_path)
    apply(s.ref, (open_session(1, "s1", 1500),), waiter(1))
    apply(s.ref, (write(2, "k", 2),), waiter(2))
    s.sync()
    journal = [(who, m) for who, m in s.peer.journal
               if who == "reply" or isinstance(m, AppliedUpTo)]  # fmt: skip
    assert [who for who, _ in journal] == ["peer", "reply", "peer", "reply"]
    assert journal[0][1] == AppliedUpTo(1, 1, {"s1": 1500})
    assert journal[2][1] == AppliedUpTo(2, 1, None)  # sessions unchanged: not copied
    assert [r.ok for _, r in s.reply_to(1)] == [True]
    held = journal[0][1].sessions
    s.ref.tell(ApplyBatch((open_session(3, "s2", 900),)))
    s.sync()
    last = [m for m in s.peer.told if isinstance(m, AppliedUpTo)][-1]
    assert last == AppliedUpTo(3, 1, {"s1": 1500, "s2": 900})
    assert held == {"s1": 1500}  # a copy: what was told before does not change

"""InlineCapable and InlineRef (actors/loop_inbox.py): an actor with a thread of its own
that its host's loop thread may also run inline; and the session actor run that way.

Most tests open a ``LoopInbox`` on the test's own thread (over the fake loop of
tests/test_loop_inbox.py, never turned): that thread then is the host's loop thread, so a
tell from it may run inline and a tell from any other thread may not.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace, TracebackType
from typing import Any

import pykka
import pytest

from tests.test_loop_inbox import FakeLoop, ManualClock, Recorder
from zraft.actors import loop_inbox, session_actor
from zraft.actors.commands import Command, CommandKind
from zraft.actors.loop_inbox import InlineCapable, InlineRef, LoopInbox
from zraft.actors.messages import (
    LEADERSHIP_LOST,
    SNAPSHOT_DUE,
    WATCH_TICK,
    ApplyBatch,
    AwaitWrites,
    ExpectSnapshot,
    PendingWrite,
    ServeReads,
    SnapshotTaken,
    SnapshotWritten,
)
from zraft.actors.session_actor import (
    INLINE_APPLY_BUDGET_S,
    INLINE_APPLY_MAX_BYTES,
    SessionActor,
    snapshot_point,
)
from zraft.actors.state_machine import ReplicatedState
from zraft.backends import kv
from zraft.backends.kv import KeyValueBackend
from zraft.core import Configuration, Entry, EntryKind
from zraft.storage import SnapshotStore
from zraft.transport import ClientReply

WAIT = 10.0  # real seconds to wait for another thread (a bound, never reached when green)
LOGGER = "zraft.actors.loop_inbox"


@pytest.fixture(autouse=True)
def stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=WAIT)


def host_here() -> LoopInbox:
    """An inbox opened on the calling thread: from now on it is the host's loop thread."""
    inbox = LoopInbox()
    inbox.attach(FakeLoop(inbox))
    inbox.open()
    assert inbox.on_loop_thread()
    return inbox


def on_another_thread(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` on a new thread and wait for it: what it returned (or raise what it
    raised), and that thread's ident."""
    out: dict[str, Any] = {}

    def run() -> None:
        out["ident"] = threading.get_ident()
        try:
            out["value"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the caller
            out["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()
    if "error" in out:
        raise out["error"]
    return out.get("value"), out["ident"]


class Sync:
    """Asked straight through the pykka ref: once answered, whatever was told to the
    actor's thread before it has been handled."""


SYNC = Sync()


def sync(actor: pykka.Actor) -> None:
    actor.actor_ref.ask(SYNC, timeout=WAIT)


# --------------------------------------------------------------------------- InlineCapable


@dataclass(frozen=True)
class Msg:
    """What the probe receives: ``inline`` is its answer to ``may_inline``; ``raises``
    makes ``receive`` raise; with ``started``/``release`` it sets one and waits for the
    other (holding the turn); ``advance`` moves ``clock`` on, as a slow turn would."""

    name: str
    inline: bool = True
    raises: bool = False
    started: threading.Event | None = field(default=None, compare=False)
    release: threading.Event | None = field(default=None, compare=False)
    clock: ManualClock | None = field(default=None, compare=False)
    advance: float = 0.0


@dataclass(frozen=True)
class Hold:
    """Straight to the pykka ref: the actor's thread waits *without* the turn."""

    started: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


class Probe(InlineCapable):
    def __init__(self, ref: InlineRef, *, on_failure_raises: bool = False) -> None:
        super().__init__()
        ref.bind(self)
        self.on_failure_raises = on_failure_raises
        self.records: list[tuple[str, int, bool]] = []  # (name, thread, self.inline)
        self.asked: list[str] = []  # may_inline was asked about these
        self.failures: list[tuple[type[BaseException] | None, int]] = []
        self.failed_event = threading.Event()
        self.thread_ident: int | None = None
        self.running = threading.Event()

    def on_start(self) -> None:
        self.thread_ident = threading.get_ident()
        self.running.set()

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Sync):
            return None
        if isinstance(message, Hold):
            message.started.set()
            assert message.release.wait(WAIT)
            return None
        return super().on_receive(message)

    def may_inline(self, message: Any) -> bool:
        assert isinstance(message, Msg)
        self.asked.append(message.name)
        return message.inline

    def receive(self, message: Any) -> Any:
        assert isinstance(message, Msg)
        self.records.append((message.name, threading.get_ident(), self.inline))
        if message.started is not None and message.release is not None:
            message.started.set()
            assert message.release.wait(WAIT)
        if message.clock is not None:
            message.clock.advance(message.advance)
        if message.raises:
            raise ValueError(message.name)
        return None

    def on_failure(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.failures.append((exc_type, threading.get_ident()))
        self.failed_event.set()
        if self.on_failure_raises:
            raise RuntimeError("on_failure raised too")


def start_probe(host: LoopInbox | None, **kwargs: Any) -> tuple[Probe, InlineRef, int]:
    """A started probe behind an ``InlineRef`` hosted by ``host``; and its thread."""
    ref = InlineRef()
    if host is not None:
        host.host(ref)
    Probe.start(ref, **kwargs)
    actor = ref.actor
    assert isinstance(actor, Probe)
    assert actor.running.wait(WAIT)
    assert actor.thread_ident is not None
    assert actor.thread_ident != threading.get_ident()
    return actor, ref, actor.thread_ident


@pytest.mark.timeout(30)
def test_a_tell_on_the_hosts_thread_runs_inline_before_it_returns() -> None:
    host = host_here()
    actor, ref, _ = start_probe(host)
    me = threading.get_ident()

    ref.tell(Msg("a"))
    # Handled here, before tell returned: no other thread was involved.
    assert actor.records == [("a", me, True)]
    assert actor.asked == ["a"]
    assert actor.inline is False  # only while handling
    assert actor.unhandled == 0
    assert not actor.turn.locked()
    assert ref.is_alive()

    ref.tell(Msg("b"))
    sync(actor)  # nothing went to its thread as well
    assert actor.records == [("a", me, True), ("b", me, True)]


@pytest.mark.timeout(30)
def test_a_real_loop_actor_runs_a_hosted_inline_actor_on_its_thread() -> None:
    ref = InlineRef()
    host = Recorder.start(FakeLoop(), hosted=(ref,))  # type: ignore[arg-type]
    host_ident = host.ask("ident", timeout=WAIT)
    Probe.start(ref)
    actor = ref.actor
    assert isinstance(actor, Probe) and actor.running.wait(WAIT)

    def tell_and_look() -> list[tuple[str, int, bool]]:
        ref.tell(Msg("on host"))
        return list(actor.records)

    assert host.ask(("call", tell_and_look), timeout=WAIT) == [("on host", host_ident, True)]

    ref.tell(Msg("from the test"))  # not the host's thread
    sync(actor)
    assert actor.records[1] == ("from the test", actor.thread_ident, False)
    assert actor.asked == ["on host"]


@pytest.mark.timeout(30)
def test_a_tell_from_another_thread_runs_on_the_actors_own_thread() -> None:
    host = host_here()
    actor, ref, own = start_probe(host)

    def tell_two() -> None:
        ref.tell(Msg("a"))
        ref.tell(Msg("b"))

    _, teller = on_another_thread(tell_two)
    sync(actor)
    assert actor.records == [("a", own, False), ("b", own, False)]
    assert own not in (teller, threading.get_ident())
    assert actor.asked == []  # not the host's thread: not even asked
    assert actor.unhandled == 0


@pytest.mark.timeout(30)
def test_an_unhosted_ref_never_runs_inline() -> None:
    actor, ref, own = start_probe(None)
    ref.tell(Msg("a"))
    sync(actor)
    assert actor.records == [("a", own, False)]
    assert actor.asked == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize("counted", [True, False], ids=["told-elsewhere", "pykka-ref"])
def test_tells_wait_behind_a_busy_thread_in_order_then_inline_resumes(counted: bool) -> None:
    host = host_here()
    actor, ref, own = start_probe(host)
    me = threading.get_ident()
    started, release = threading.Event(), threading.Event()
    busy = Msg("busy", started=started, release=release)
    if counted:  # the usual way: through the InlineRef, from another thread
        on_another_thread(lambda: ref.tell(busy))
    else:  # straight to the pykka ref, not counted: only the turn keeps the host off
        actor.actor_ref.tell(busy)
    assert started.wait(WAIT)  # the actor's thread is in receive, holding the turn

    for name in ("a", "b", "c"):
        ref.tell(Msg(name))  # on the host's thread, inlinable, yet the actor is busy
    assert actor.records == [("busy", own, False)]  # none ran here
    assert actor.asked == []  # the turn was taken: not asked
    assert actor.unhandled == (4 if counted else 3)

    release.set()
    sync(actor)
    assert actor.records == [("busy", own, False)] + [(n, own, False) for n in ("a", "b", "c")]
    assert actor.unhandled == 0

    ref.tell(Msg("d"))  # idle again: inline
    assert actor.records[-1] == ("d", me, True)


@pytest.mark.timeout(30)
def test_a_message_waiting_for_the_thread_keeps_later_ones_off_the_host() -> None:
    host = host_here()
    actor, ref, own = start_probe(host)
    me = threading.get_ident()
    hold = Hold()
    actor.actor_ref.tell(hold)
    assert hold.started.wait(WAIT)  # the thread is busy but does not hold the turn

    ref.tell(Msg("slow", inline=False))  # to the thread: queued behind the hold
    assert actor.unhandled == 1
    assert not actor.turn.locked()
    ref.tell(Msg("a"))  # the turn is free, but "slow" is unhandled: "a" waits behind it
    assert actor.records == []
    assert actor.asked == ["slow"]  # "a" was not even asked
    assert actor.unhandled == 2

    hold.release.set()
    sync(actor)
    assert actor.records == [("slow", own, False), ("a", own, False)]
    assert actor.unhandled == 0
    ref.tell(Msg("b"))
    assert actor.records[-1] == ("b", me, True)


@pytest.mark.timeout(30)
def test_what_may_not_run_inline_goes_to_the_thread_even_from_the_host() -> None:
    host = host_here()
    actor, ref, own = start_probe(host)
    me = threading.get_ident()

    ref.tell(Msg("heavy", inline=False))
    assert actor.asked == ["heavy"]
    sync(actor)
    assert actor.records == [("heavy", own, False)]
    assert actor.unhandled == 0

    ref.tell(Msg("light"))
    assert actor.records[-1] == ("light", me, True)


@pytest.mark.timeout(30)
def test_a_slow_inline_turn_pauses_inlining_for_a_while(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(100.0)  # the inline timing reads this clock (exact binary steps)
    monkeypatch.setattr(loop_inbox, "time", SimpleNamespace(monotonic=clock))
    monkeypatch.setattr(loop_inbox, "INLINE_SLOW_S", 0.25)
    monkeypatch.setattr(loop_inbox, "INLINE_PAUSE_S", 10.0)
    host = host_here()
    actor, ref, own = start_probe(host)
    me = threading.get_ident()

    ref.tell(Msg("at the limit", clock=clock, advance=0.25))  # not slower than the limit
    assert actor.records == [("at the limit", me, True)]
    assert actor.inline_pauses == 0

    with caplog.at_level(logging.INFO, logger=LOGGER):
        ref.tell(Msg("slow", clock=clock, advance=0.5))  # 100.25 -> 100.75
    assert actor.records[-1] == ("slow", me, True)  # it still ran inline, once
    assert actor.inline_pauses == 1
    assert actor.inline_paused_until == 110.75  # ended at 100.75, plus the pause
    assert any("not inline for" in r.getMessage() for r in caplog.records)

    asked = len(actor.asked)
    ref.tell(Msg("paused"))  # inlinable, idle, but paused: the thread, not asked
    assert len(actor.asked) == asked
    sync(actor)
    assert actor.records[-1] == ("paused", own, False)

    clock.advance(9.75)  # 110.5: still paused
    ref.tell(Msg("still paused"))
    sync(actor)
    assert actor.records[-1] == ("still paused", own, False)

    clock.advance(0.25)  # 110.75: the pause is over
    ref.tell(Msg("back"))
    assert actor.records[-1] == ("back", me, True)
    assert actor.inline_pauses == 1


@pytest.mark.timeout(30)
def test_an_inline_failure_kills_the_actor_not_the_teller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = host_here()
    actor, ref, _ = start_probe(host)
    me = threading.get_ident()

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        ref.tell(Msg("boom", raises=True))  # must not raise here
    assert actor.records == [("boom", me, True)]
    assert actor.failures == [(ValueError, me)]  # on_failure once, where it failed
    assert actor.failed
    assert actor.inline is False
    assert not ref.is_alive()
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and errors[0].exc_info[0] is ValueError

    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Msg("later"))
    with pytest.raises(pykka.ActorDeadError):
        on_another_thread(lambda: ref.tell(Msg("later, elsewhere")))
    assert actor.actor_stopped.wait(10)  # its own thread is stopped too
    assert actor.records == [("boom", me, True)]
    assert actor.failures == [(ValueError, me)]
    assert actor.unhandled == 0


@pytest.mark.timeout(30)
def test_an_inline_failure_whose_on_failure_raises_still_spares_the_teller(
    caplog: pytest.LogCaptureFixture,
) -> None:
    host = host_here()
    actor, ref, _ = start_probe(host, on_failure_raises=True)

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        ref.tell(Msg("boom", raises=True))
    assert len(actor.failures) == 1
    assert not ref.is_alive()
    assert any("on_failure raised" in r.getMessage() for r in caplog.records)
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Msg("later"))


@pytest.mark.timeout(30)
def test_a_failure_on_the_actors_own_thread_kills_it_as_pykka_does() -> None:
    host = host_here()
    actor, ref, own = start_probe(host)

    ref.tell(Msg("boom", inline=False, raises=True))  # on the host, but not inlinable
    assert actor.failed_event.wait(WAIT)
    assert actor.records == [("boom", own, False)]
    assert actor.failures == [(ValueError, own)]
    assert not actor.actor_ref.is_alive()
    assert not ref.is_alive()
    # The failing message was counted out too.
    assert actor.unhandled == 0

    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Msg("later"))  # inlinable, on the host's thread: still dead
    with pytest.raises(pykka.ActorDeadError):
        on_another_thread(lambda: ref.tell(Msg("later, elsewhere")))
    assert actor.records == [("boom", own, False)]
    assert actor.failures == [(ValueError, own)]
    assert actor.unhandled == 0  # a refused tell is not counted


@pytest.mark.timeout(30)
def test_no_inline_run_between_a_failure_on_the_own_thread_and_pykka_stopping_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pykka marks an actor stopped only after its failure handling: in between, the host
    must not see it idle and run the next message inline on it."""
    host = host_here()
    actor, ref, own = start_probe(host)
    in_failure, release = threading.Event(), threading.Event()
    handle_failure = pykka.ThreadingActor._handle_failure

    def held(self: pykka.ThreadingActor, *exc_info: Any) -> None:
        in_failure.set()
        release.wait(WAIT)
        handle_failure(self, *exc_info)

    monkeypatch.setattr(pykka.ThreadingActor, "_handle_failure", held)
    try:
        ref.tell(Msg("boom", inline=False, raises=True))
        assert in_failure.wait(WAIT)  # failed, not yet marked stopped by pykka
        with pytest.raises(pykka.ActorDeadError):
            ref.tell(Msg("next"))  # inlinable, on the host's thread
    finally:
        release.set()
    assert actor.failed_event.wait(WAIT)
    assert actor.records == [("boom", own, False)]


@pytest.mark.timeout(30)
def test_unhandled_is_zero_again_once_counted_messages_are_handled() -> None:
    host = host_here()
    actor, ref, own = start_probe(host)
    hold = Hold()
    actor.actor_ref.tell(hold)
    assert hold.started.wait(WAIT)

    ref.tell(Msg("one", inline=False))
    on_another_thread(lambda: [ref.tell(Msg(n)) for n in ("two", "three")])
    ref.tell(Msg("four"))
    assert actor.unhandled == 4
    hold.release.set()
    sync(actor)
    assert [r[0] for r in actor.records] == ["one", "two", "three", "four"]
    assert actor.unhandled == 0

    # A counted message whose receive raises is counted out as well (the actor is dead).
    ref.tell(Msg("boom", inline=False, raises=True))
    assert actor.failed_event.wait(WAIT)
    assert actor.unhandled == 0


@pytest.mark.timeout(30)
def test_a_stopped_actor_refuses_tells_also_on_the_host() -> None:
    host = host_here()
    actor, ref, _ = start_probe(host)
    ref.tell(Msg("a"))
    ref.stop(block=True, timeout=WAIT)
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Msg("b"))
    assert [r[0] for r in actor.records] == ["a"]
    assert actor.unhandled == 0


class RefusingRef:
    """A pykka ref whose actor stops between ``is_alive`` and ``tell``."""

    def is_alive(self) -> bool:
        return True

    def tell(self, message: Any) -> None:
        raise pykka.ActorDeadError("stopped meanwhile")


@pytest.mark.timeout(30)
def test_a_tell_pykka_refuses_is_not_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    ref = InlineRef()
    actor = Probe(ref)  # never started: its pykka ref is replaced below
    monkeypatch.setattr(actor, "_actor_ref", RefusingRef())
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Msg("a", inline=False))
    assert actor.unhandled == 0


@pytest.mark.timeout(30)
def test_an_unbound_ref_refuses_tells() -> None:
    ref = InlineRef()
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell(Msg("a"))
    ref.stop()  # nothing to stop


# --------------------------------------------------------------------------- SessionActor

CONFIG = Configuration.of(["a", "b", "c"])


def write(index: int, key: str, value: Any, seq: int | None = None) -> Entry:
    command = Command(CommandKind.WRITE, "c1", index if seq is None else seq, 0, kv.put(key, value))
    return Entry(index, 1, EntryKind.NORMAL, command.encode())


def waiter(index: int) -> PendingWrite:
    return PendingWrite(index, 1, f"client-{index}".encode(), 100 + index)


class SessionProbe(SessionActor):
    """The session actor, telling when its thread runs and which thread that is."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.running = threading.Event()
        self.thread_ident: int | None = None

    def on_start(self) -> None:
        self.thread_ident = threading.get_ident()
        self.running.set()


class StubPeer:
    def __init__(self) -> None:
        self.told: list[Any] = []
        self.snapshot_taken = threading.Event()

    def tell(self, message: Any) -> None:
        self.told.append(message)
        if isinstance(message, SnapshotTaken):
            self.snapshot_taken.set()


@dataclass
class Session:
    actor: SessionProbe
    ref: InlineRef
    own: int  # the session actor's thread
    state: ReplicatedState
    store: SnapshotStore
    peer: StubPeer
    metrics: dict[str, Any]
    replies: list[tuple[int, list[tuple[bytes, ClientReply]]]]  # (thread, replies)
    applied_on: list[tuple[int, int]]  # (first index of the batch, thread)
    snapshot_on: list[int]  # threads that copied the state for a snapshot
    created_on: list[int]  # threads that wrote a snapshot into the store
    failures: list[str]

    def reply_to(self, index: int) -> list[tuple[int, ClientReply]]:
        """(thread, reply) of the replies sent to the client waiting for ``index``."""
        who = waiter(index).identity
        return [(t, r) for t, rs in self.replies for i, r in rs if i == who]


def start_session(
    tmp_path: Path, host: LoopInbox | None, *, max_log_count: int = 1_000_000
) -> Session:
    state = ReplicatedState(KeyValueBackend(), CONFIG)
    store = SnapshotStore(tmp_path / "snapshots", fsync=False)
    replies: list[tuple[int, list[tuple[bytes, ClientReply]]]] = []
    applied_on: list[tuple[int, int]] = []
    snapshot_on: list[int] = []
    created_on: list[int] = []
    failures: list[str] = []

    real_apply, real_snapshot, real_create = state.apply, state.snapshot, store.create

    def apply(entries: list[Entry]) -> Any:
        applied_on.append((entries[0].index, threading.get_ident()))
        return real_apply(entries)

    def snapshot() -> Any:
        snapshot_on.append(threading.get_ident())
        return real_snapshot()

    def create(*args: Any, **kwargs: Any) -> Any:
        created_on.append(threading.get_ident())
        return real_create(*args, **kwargs)

    state.apply = apply  # type: ignore[method-assign]
    state.snapshot = snapshot  # type: ignore[method-assign]
    store.create = create  # type: ignore[method-assign]

    def reply(batch: Iterable[tuple[bytes, ClientReply]]) -> None:
        replies.append((threading.get_ident(), list(batch)))

    ref = InlineRef()
    if host is not None:
        host.host(ref)
    peer = StubPeer()
    metrics: dict[str, Any] = {}
    SessionProbe.start(
        peer_id="a",
        state=state,
        snapshots=store,
        snapshot_lock=threading.Lock(),
        max_log_count=max_log_count,
        reply=reply,
        peer=peer,
        metrics=metrics,
        on_failure=failures.append,
        inline_ref=ref,
    )
    actor = ref.actor
    assert isinstance(actor, SessionProbe)
    assert actor.me is ref
    assert actor.running.wait(WAIT)
    assert actor.thread_ident is not None
    return Session(
        actor,
        ref,
        actor.thread_ident,
        state,
        store,
        peer,
        metrics,
        replies,
        applied_on,
        snapshot_on,
        created_on,
        failures,
    )


@pytest.fixture
def roomy_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured cost per entry depends on the machine's load (a preempted thread may
    take milliseconds for one put): with this budget only ``apply_cost`` being known and
    the size rule decide. The budget itself is checked in the ``may_inline`` test."""
    monkeypatch.setattr(session_actor, "INLINE_APPLY_BUDGET_S", 60.0)


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("roomy_budget")
def test_the_session_actor_applies_on_its_thread_until_it_knows_the_cost(
    tmp_path: Path,
) -> None:
    host = host_here()
    s = start_session(tmp_path, host)
    me = threading.get_ident()
    assert s.actor.apply_cost is None

    s.ref.tell(ApplyBatch((write(1, "k1", "v1"),), (waiter(1),)))  # on the host's thread
    sync(s.actor)
    assert s.applied_on == [(1, s.own)]  # the cost was unknown: its own thread
    assert s.reply_to(1) == [(s.own, ClientReply(101, True, {"created": True}, index=1))]
    assert s.actor.apply_cost is not None and s.actor.apply_cost > 0
    assert (s.metrics["batches_on_thread"], s.metrics["batches_inline"]) == (1, 0)

    # Now small batches run here, and the client is answered before tell returns.
    s.ref.tell(ApplyBatch((write(2, "k2", "v2"),), (waiter(2),)))
    assert s.applied_on[-1] == (2, me)
    assert s.reply_to(2) == [(me, ClientReply(102, True, {"created": True}, index=2))]
    assert (s.metrics["batches_on_thread"], s.metrics["batches_inline"]) == (1, 1)

    batch = tuple(write(i, f"k{i}", i) for i in (3, 4, 5))
    s.ref.tell(ApplyBatch(batch, (waiter(4),)))
    assert s.applied_on[-1] == (3, me)
    assert s.reply_to(4) == [(me, ClientReply(104, True, {"created": True}, index=4))]
    assert s.state.applied_index == 5
    assert s.state.query(kv.get("k4")).data == {"found": True, "value": 4}  # type: ignore[union-attr]
    assert (s.metrics["batches_on_thread"], s.metrics["batches_inline"]) == (1, 2)
    assert s.metrics["applied_entries"] == 5

    # From another thread (the log actor's, say) it is the actor's thread again.
    on_another_thread(lambda: s.ref.tell(ApplyBatch((write(6, "k6", 6),), (waiter(6),))))
    sync(s.actor)
    assert s.applied_on[-1] == (6, s.own)
    assert s.reply_to(6) == [(s.own, ClientReply(106, True, {"created": True}, index=6))]
    assert (s.metrics["batches_on_thread"], s.metrics["batches_inline"]) == (2, 2)
    assert s.failures == []


def sized_write(index: int, size: int) -> Entry:
    """A write whose entry data is exactly ``size`` bytes (size well over 64 KiB)."""
    base = 100_000
    overhead = len(write(index, "big", "x" * base).data) - base
    entry = write(index, "big", "x" * (size - overhead))
    assert len(entry.data) == size
    return entry


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("roomy_budget")
def test_a_batch_over_the_byte_limit_goes_to_the_thread(tmp_path: Path) -> None:
    host = host_here()
    s = start_session(tmp_path, host)
    me = threading.get_ident()
    s.ref.tell(ApplyBatch((write(1, "k", 1),)))
    sync(s.actor)
    assert s.actor.apply_cost is not None

    big = sized_write(2, INLINE_APPLY_MAX_BYTES + 1)
    s.ref.tell(ApplyBatch((big,), (waiter(2),)))
    sync(s.actor)
    assert s.applied_on[-1] == (2, s.own)
    assert [t for t, _ in s.reply_to(2)] == [s.own]

    s.ref.tell(ApplyBatch((sized_write(3, INLINE_APPLY_MAX_BYTES),)))  # at the limit
    assert s.applied_on[-1] == (3, me)

    s.ref.tell(ApplyBatch((write(4, "k", 4),), (waiter(4),)))
    assert s.applied_on[-1] == (4, me)
    assert [t for t, _ in s.reply_to(4)] == [me]
    assert (s.metrics["batches_on_thread"], s.metrics["batches_inline"]) == (2, 2)
    assert s.failures == []


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("roomy_budget")
def test_a_snapshot_due_during_an_inline_apply_is_taken_on_the_actors_thread(
    tmp_path: Path,
) -> None:
    host = host_here()
    s = start_session(tmp_path, host, max_log_count=3)
    me = threading.get_ident()

    s.ref.tell(ApplyBatch((write(1, "k1", 1),)))
    sync(s.actor)
    s.ref.tell(ApplyBatch((write(2, "k2", 2),)))
    s.ref.tell(ApplyBatch((write(3, "k3", 3),), (waiter(3),)))  # the snapshot falls due
    assert s.applied_on == [(1, s.own), (2, me), (3, me)]
    assert [t for t, _ in s.reply_to(3)] == [me]  # answered at once, snapshot or not
    assert me not in s.snapshot_on  # not copied here

    assert s.peer.snapshot_taken.wait(WAIT)
    assert s.peer.told == [SnapshotTaken(3)]
    assert s.snapshot_on == [s.own]
    assert len(s.created_on) == 1 and s.created_on[0] != me  # written by a worker thread
    latest = s.store.latest()
    assert latest is not None and latest[0].index == 3
    assert s.metrics["snapshots_taken"] == 1
    assert (s.metrics["batches_on_thread"], s.metrics["batches_inline"]) == (1, 2)

    sync(s.actor)  # SnapshotWritten handled: inline again
    assert s.actor.unhandled == 0
    s.ref.tell(ApplyBatch((write(4, "k4", 4),)))
    assert s.applied_on[-1] == (4, me)
    assert s.snapshot_on == [s.own]
    assert s.failures == []


@pytest.mark.timeout(30)
@pytest.mark.usefixtures("roomy_budget")
def test_a_slow_inline_apply_sends_the_next_batches_to_the_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loop_inbox, "INLINE_SLOW_S", -1.0)  # every inline turn is "slow"
    host = host_here()
    s = start_session(tmp_path, host)
    me = threading.get_ident()
    s.ref.tell(ApplyBatch((write(1, "k", 1),)))
    sync(s.actor)
    s.ref.tell(ApplyBatch((write(2, "k", 2),)))
    assert s.applied_on[-1] == (2, me)
    assert s.actor.inline_pauses == 1

    s.ref.tell(ApplyBatch((write(3, "k", 3),), (waiter(3),)))  # paused (for 10 s)
    sync(s.actor)
    assert s.applied_on[-1] == (3, s.own)
    assert [t for t, _ in s.reply_to(3)] == [s.own]
    assert (s.metrics["batches_on_thread"], s.metrics["batches_inline"]) == (2, 1)
    assert s.metrics["inline_pauses"] == 1
    assert s.failures == []


@pytest.mark.timeout(30)
def test_session_actor_may_inline_rules(tmp_path: Path) -> None:
    ref = InlineRef()
    actor = SessionProbe(  # not started: only its rules are asked
        peer_id="a",
        state=ReplicatedState(KeyValueBackend(), CONFIG),
        snapshots=SnapshotStore(tmp_path / "snapshots", fsync=False),
        snapshot_lock=threading.Lock(),
        max_log_count=1000,
        reply=lambda replies: None,
        peer=None,
        metrics={},
        on_failure=lambda reason: None,
        inline_ref=ref,
    )
    assert ref.actor is actor and actor.me is ref
    one = ApplyBatch((write(1, "k", 1),))
    two = ApplyBatch((write(1, "k", 1), write(2, "k", 2)))

    assert not actor.may_inline(one)  # cost not measured yet
    actor.apply_cost = INLINE_APPLY_BUDGET_S  # one entry fills the budget exactly
    assert actor.may_inline(one)
    assert not actor.may_inline(two)
    actor.apply_cost = INLINE_APPLY_BUDGET_S / 4
    assert actor.may_inline(two)
    assert actor.may_inline(ApplyBatch(()))

    half = INLINE_APPLY_MAX_BYTES // 2
    assert actor.may_inline(ApplyBatch((sized_write(1, INLINE_APPLY_MAX_BYTES),)))
    assert not actor.may_inline(ApplyBatch((sized_write(1, INLINE_APPLY_MAX_BYTES + 1),)))
    assert actor.may_inline(ApplyBatch((sized_write(1, half), sized_write(2, half))))
    assert not actor.may_inline(ApplyBatch((sized_write(1, half), sized_write(2, half + 1))))
    config_entry = Entry(3, 1, EntryKind.CONFIG, CONFIG)  # not bytes: not counted
    assert actor.may_inline(ApplyBatch((sized_write(1, INLINE_APPLY_MAX_BYTES), config_entry)))

    actor.expecting_snapshot = 7  # entries would be held for a snapshot install
    assert not actor.may_inline(one)
    actor.expecting_snapshot = None
    assert actor.may_inline(one)

    assert actor.may_inline(AwaitWrites((waiter(1),)))
    assert actor.may_inline(ExpectSnapshot(5))
    assert actor.may_inline(WATCH_TICK)
    assert not actor.may_inline(ServeReads(()))
    assert not actor.may_inline(SNAPSHOT_DUE)
    assert not actor.may_inline(SnapshotWritten(3, None))
    assert not actor.may_inline(LEADERSHIP_LOST)


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

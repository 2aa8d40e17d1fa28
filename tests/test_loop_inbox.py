"""LoopInbox, LoopActor and HostedActor (actors/loop_inbox.py) over a fake transport loop."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope

from zraft.actors.loop_inbox import (
    HostedActor,
    HostedRef,
    LoopActor,
    LoopEnded,
    LoopInbox,
)

TICK = "tick"
PERIOD = 0.25  # exact in binary: clock arithmetic in these tests stays exact
WAIT = 10.0  # real seconds to wait for another thread (a bound, never reached when green)


class ManualClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Turn:
    """One scripted ``run_once``: what its callbacks put into the inbox, how far the clock
    moves, then what it returns (or raises)."""

    arrivals: list[Any] = field(default_factory=list)
    advance: float = 0.0
    result: bool | Exception = True


class FakeLoop:
    """A ``HostedLoop`` that records every call.

    ``run_once`` plays the next scripted ``Turn``: its arrivals are put into the inbox from
    inside ``run_once``, on the calling thread, as a transport's callbacks do. With no turn
    left it advances the fake clock by the whole timeout (nothing arrived meanwhile) or,
    without a clock, waits (really) until ``wake()`` or the timeout. Once it has returned
    False it keeps returning False, as a closed transport does.
    """

    def __init__(self, inbox: LoopInbox | None = None, clock: ManualClock | None = None) -> None:
        self.inbox = inbox
        self.clock = clock
        self.calls: list[str] = []  # also used by the actors below as a shared journal
        self.timeouts: list[int] = []
        self.turns: deque[Turn] = deque()
        self.wakes = 0
        self.open_ident: int | None = None
        self.close_ident: int | None = None
        self.closed = threading.Event()
        self._woken = threading.Event()
        self._ended = False

    def script(self, *turns: Turn) -> None:
        self.turns.extend(turns)

    def turned(self) -> int:
        return len(self.timeouts)

    # HostedLoop

    def open_loop(self) -> None:
        self.calls.append("open_loop")
        self.open_ident = threading.get_ident()

    def run_once(self, timeout_ms: int) -> bool:
        self.calls.append("run_once")
        self.timeouts.append(timeout_ms)
        if self._ended:
            return False
        if not self.turns:
            if self.clock is not None:
                self.clock.advance(timeout_ms / 1000)
            else:
                self._woken.wait(timeout_ms / 1000)
                self._woken.clear()
            return True
        turn = self.turns.popleft()
        for message in turn.arrivals:
            assert self.inbox is not None
            self.inbox.put(Envelope(message))
        if self.clock is not None:
            self.clock.advance(turn.advance)
        if isinstance(turn.result, Exception):
            raise turn.result
        if not turn.result:
            self._ended = True
        return turn.result

    def wake(self) -> None:
        self.calls.append("wake")
        self.wakes += 1
        self._woken.set()

    def close_loop(self) -> None:
        self.calls.append("close_loop")
        self.close_ident = threading.get_ident()
        self.closed.set()


def open_inbox(
    *, tick: bool = True, clock: ManualClock | None = None
) -> tuple[LoopInbox, FakeLoop, ManualClock]:
    """An inbox opened on the calling thread (which becomes its owner), on a fake loop."""
    clock = clock or ManualClock()
    inbox = LoopInbox()
    loop = FakeLoop(inbox, clock)
    if tick:
        inbox.attach(loop, tick=TICK, tick_seconds=PERIOD, clock=clock)
    else:
        inbox.attach(loop, clock=clock)
    inbox.open()
    return inbox, loop, clock


def get(inbox: LoopInbox) -> Any:
    return inbox.get().message


def put(inbox: LoopInbox, message: Any) -> None:
    inbox.put(Envelope(message))


def put_from_another_thread(inbox: LoopInbox, message: Any) -> None:
    thread = threading.Thread(target=put, args=(inbox, message))
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive()


# --------------------------------------------------------------------------- LoopInbox


@pytest.mark.timeout(30)
def test_ticks_are_emitted_when_due_on_schedule() -> None:
    inbox, loop, clock = open_inbox()
    start = clock.now
    assert loop.calls == ["open_loop"]

    # Nothing queued: the loop is turned until the first tick is due, one period after open.
    assert get(inbox) == TICK
    assert loop.timeouts == [int(PERIOD * 1000) + 1]
    assert clock.now >= start + PERIOD

    # Not due yet: no tick, the loop waits for the rest of the period only.
    put(inbox, "m")
    assert get(inbox) == "m"
    assert loop.turned() == 1
    assert get(inbox) == TICK
    assert 0 < loop.timeouts[1] <= int(PERIOD * 1000)
    # A slightly late tick does not delay the schedule: the second is due two periods in.
    assert clock.now >= start + 2 * PERIOD
    assert clock.now < start + 2 * PERIOD + 0.01

    # Ten periods of waiting give ten ticks, one per period.
    ticks = 0
    while clock.now < start + 12 * PERIOD:
        assert get(inbox) == TICK
        ticks += 1
    assert ticks == 10


@pytest.mark.timeout(30)
def test_a_due_tick_comes_before_queued_envelopes() -> None:
    inbox, loop, clock = open_inbox()
    for m in ("a", "b", "c"):
        put(inbox, m)
    clock.advance(PERIOD)
    # Under load the clock still ticks: the due tick first, then the queue, in order.
    assert [get(inbox) for _ in range(4)] == [TICK, "a", "b", "c"]
    assert loop.turned() == 0


@pytest.mark.timeout(30)
def test_after_a_long_step_the_next_tick_counts_from_now() -> None:
    inbox, loop, clock = open_inbox()
    assert get(inbox) == TICK
    clock.advance(10 * PERIOD)  # a long step: nine ticks' worth of lateness
    late = clock.now

    assert get(inbox) == TICK  # one tick for the lot, at once
    assert loop.turned() == 1
    # No burst: the next one is a full period away, so the loop is turned first.
    put(inbox, "m")
    assert get(inbox) == "m"
    assert get(inbox) == TICK
    assert loop.turned() == 2
    assert int(PERIOD * 1000) - 1 <= loop.timeouts[-1] <= int(PERIOD * 1000) + 1
    assert clock.now >= late + PERIOD


@pytest.mark.timeout(30)
def test_queued_envelopes_come_out_in_order_without_turning_the_loop() -> None:
    inbox, loop, _ = open_inbox()
    for i in range(5):
        put(inbox, i)
    assert not inbox.empty()
    assert [get(inbox) for _ in range(5)] == [0, 1, 2, 3, 4]
    assert inbox.empty()
    assert loop.turned() == 0


@pytest.mark.timeout(30)
def test_the_loop_is_turned_when_nothing_is_queued_and_its_arrivals_come_in_order() -> None:
    inbox, loop, _ = open_inbox(tick=False)
    loop.script(Turn(), Turn(arrivals=["m1", "m2"]), Turn(arrivals=["m3"]))

    assert get(inbox) == "m1"  # an empty turn, then the one that queued m1 and m2
    assert loop.turned() == 2
    assert get(inbox) == "m2"  # already queued: no turn
    assert loop.turned() == 2
    assert get(inbox) == "m3"
    assert loop.turned() == 3
    # Without a tick the loop waits at most a second per turn.
    assert loop.timeouts == [1000, 1000, 1000]
    # Arrivals were put on the owning thread, inside run_once: no wakeup for those.
    assert loop.wakes == 0


@pytest.mark.timeout(30)
def test_a_put_from_another_thread_wakes_the_loop_but_one_on_its_own_thread_does_not() -> None:
    inbox, loop, _ = open_inbox()
    assert inbox.on_loop_thread()

    put(inbox, "mine")
    assert loop.wakes == 0

    put_from_another_thread(inbox, "theirs")
    assert loop.wakes == 1
    assert [get(inbox), get(inbox)] == ["mine", "theirs"]
    assert loop.turned() == 0


@pytest.mark.timeout(30)
def test_a_closed_loop_yields_loop_ended_after_what_it_delivered() -> None:
    inbox, loop, _ = open_inbox(tick=False)
    loop.script(Turn(arrivals=["last"], result=False))

    assert get(inbox) == "last"  # what arrived in the last turn is not lost
    ended = get(inbox)
    assert isinstance(ended, LoopEnded)
    assert ended.reason == "transport closed"


@pytest.mark.timeout(30)
def test_a_loop_that_raises_yields_loop_ended_with_the_error_and_logs_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox, loop, _ = open_inbox(tick=False)
    loop.script(Turn(result=OSError("socket on fire")))

    with caplog.at_level(logging.ERROR, logger="zraft.actors.loop_inbox"):
        ended = get(inbox)  # must not raise
    assert isinstance(ended, LoopEnded)
    assert "socket on fire" in ended.reason
    assert "OSError" in ended.reason
    records = [r for r in caplog.records if r.name == "zraft.actors.loop_inbox"]
    assert len(records) == 1
    assert records[0].levelno == logging.ERROR
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is OSError


@pytest.mark.timeout(30)
def test_an_inbox_never_opened_yields_loop_ended_without_touching_the_loop() -> None:
    inbox = LoopInbox()
    loop = FakeLoop(inbox)
    inbox.attach(loop)
    ended = get(inbox)
    assert isinstance(ended, LoopEnded)
    assert loop.calls == []
    inbox.close()  # never opened: nothing to close
    assert loop.calls == []


# --------------------------------------------------------------------------- LoopActor


class Recorder(LoopActor):
    """Records what it receives; ``("call", fn)`` runs ``fn`` on the actor's thread."""

    def __init__(self, loop: FakeLoop, hosted: tuple[HostedRef, ...] = ()) -> None:
        super().__init__()
        self.loop = loop
        loop.inbox = self.actor_inbox
        self.actor_inbox.attach(loop)
        self.actor_inbox.host(*hosted)
        self.received: list[Any] = []
        self.failures: list[type[BaseException] | None] = []
        self.ident: int | None = None
        self.opened_before_start = False

    def on_start(self) -> None:
        self.ident = threading.get_ident()
        self.opened_before_start = self.loop.open_ident == self.ident
        self.loop.calls.append("on_start")

    def on_stop(self) -> None:
        self.loop.calls.append("on_stop")

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.loop.calls.append("on_failure")
        self.failures.append(exception_type)

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if message == "received":
            return list(self.received)
        if message == "ident":
            return self.ident
        if message == "self":
            return self
        if isinstance(message, tuple) and message[0] == "call":
            return message[1]()
        self.received.append(message)
        return None


@pytest.fixture(autouse=True)
def stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=WAIT)


@pytest.mark.timeout(30)
def test_a_loop_actor_gets_tells_in_order_answers_asks_and_owns_its_loop() -> None:
    loop = FakeLoop()
    ref = Recorder.start(loop)
    for i in range(200):  # from this thread, not the actor's: each one wakes the loop
        ref.tell(i)
    assert ref.ask("received", timeout=WAIT) == list(range(200))

    ident = ref.ask("ident", timeout=WAIT)
    assert ident is not None and ident != threading.get_ident()
    assert loop.open_ident == ident
    assert ref.ask(("call", lambda: loop.inbox is not None and loop.inbox.on_loop_thread()))
    assert loop.calls[:2] == ["open_loop", "on_start"]
    assert loop.wakes >= 1

    ref.stop(timeout=WAIT)
    assert loop.closed.wait(WAIT)
    assert loop.close_ident == ident
    assert loop.calls.count("close_loop") == 1
    assert loop.calls.index("on_stop") < loop.calls.index("close_loop")
    assert "on_failure" not in loop.calls


@pytest.mark.timeout(30)
def test_a_loop_actor_closes_its_loop_after_on_receive_raises() -> None:
    loop = FakeLoop()
    actor_ref = Recorder.start(loop)
    actor = actor_ref.ask("self", timeout=WAIT)  # to read what it recorded after it died
    ident = actor_ref.ask("ident", timeout=WAIT)

    actor_ref.tell("boom")
    assert loop.closed.wait(WAIT)
    assert loop.close_ident == ident
    assert not actor_ref.is_alive()
    assert actor.failures == [ValueError]
    assert loop.calls.count("close_loop") == 1
    assert loop.calls.index("on_failure") < loop.calls.index("close_loop")
    assert "on_stop" not in loop.calls
    with pytest.raises(pykka.ActorDeadError):
        actor_ref.tell("late")


# --------------------------------------------------------------------------- HostedActor


class Hosted(HostedActor):
    def __init__(self) -> None:
        super().__init__()
        self.received: list[Any] = []
        self.idents: list[int] = []
        self.failures: list[type[BaseException] | None] = []
        self.stops = 0

    def on_receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        self.received.append(message)
        self.idents.append(threading.get_ident())
        return None

    def on_failure(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.failures.append(exc_type)

    def on_stop(self) -> None:
        self.stops += 1


def hosted_on_recorder() -> tuple[Hosted, HostedRef, pykka.ActorRef[Any], int]:
    hosted = Hosted()
    host = Recorder.start(FakeLoop(), hosted=(hosted.actor_ref,))
    host_ident = host.ask("ident", timeout=WAIT)
    assert host_ident != threading.get_ident()
    return hosted, hosted.actor_ref, host, host_ident


def on_host(host: pykka.ActorRef[Any], fn: Callable[[], Any]) -> Any:
    return host.ask(("call", fn), timeout=WAIT)


@pytest.mark.timeout(30)
def test_a_tell_on_the_hosts_thread_is_handled_before_tell_returns() -> None:
    hosted, ref, host, host_ident = hosted_on_recorder()

    def tell_and_look() -> list[Any]:
        ref.tell("now")
        return list(hosted.received)

    assert on_host(host, tell_and_look) == ["now"]
    assert hosted.idents == [host_ident]


@pytest.mark.timeout(30)
def test_a_tell_from_another_thread_is_handled_later_on_the_hosts_thread() -> None:
    hosted, ref, host, host_ident = hosted_on_recorder()
    release = threading.Event()
    host.tell(("call", lambda: release.wait(WAIT)))  # hold the host's thread

    ref.tell("a")
    ref.tell("b")
    assert hosted.received == []  # queued in the host's inbox, not handled here
    release.set()
    on_host(host, lambda: None)  # the host has handled everything told before this

    assert hosted.received == ["a", "b"]
    assert hosted.idents == [host_ident, host_ident]


@pytest.mark.timeout(30)
def test_a_hosted_actor_that_raises_is_dead_and_fails_once() -> None:
    hosted, ref, host, _ = hosted_on_recorder()
    release = threading.Event()
    host.tell(("call", lambda: release.wait(WAIT)))

    ref.tell("boom")  # from this thread: both travel through the host's inbox
    ref.tell("after")
    release.set()
    on_host(host, lambda: None)

    assert not ref.is_alive()
    assert hosted.failures == [ValueError]
    assert hosted.received == []  # "after" was queued before the failure, never handled
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("later")
    assert host.is_alive()  # the host does not die with it
    ref.stop()
    assert hosted.stops == 0  # a failed actor is not stopped again (on_failure stood for it)


@pytest.mark.timeout(30)
def test_a_hosted_actor_without_a_host_that_raises_is_dead_and_fails_once() -> None:
    hosted = Hosted()
    ref = hosted.actor_ref
    ref.tell("x")
    assert hosted.received == ["x"]
    assert hosted.idents == [threading.get_ident()]

    ref.tell("boom")  # logged, not raised to the teller
    assert not ref.is_alive()
    assert hosted.failures == [ValueError]
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("y")
    assert hosted.received == ["x"]
    assert hosted.failures == [ValueError]


@pytest.mark.timeout(30)
def test_stopping_a_hosted_actor_calls_on_stop_once() -> None:
    hosted, ref, host, _ = hosted_on_recorder()
    ref.tell("x")
    on_host(host, lambda: None)
    assert hosted.received == ["x"]

    ref.stop()
    ref.stop()
    assert hosted.stops == 1
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("y")
    on_host(host, lambda: ref.stop())  # on the host's thread too: still once
    assert hosted.stops == 1
    assert hosted.failures == []

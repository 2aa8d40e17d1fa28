"""LoopTurningActor, TickSchedule and LoopWakingRef (actors/hosted_loop.py) over a fake
transport loop: a plain pykka actor that turns its transport's loop on its own thread."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pykka
import pytest

from zraft.actors.hosted_loop import MAX_WAIT_MS, LoopTurningActor, LoopWakingRef, TickSchedule

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
class ScriptedTurn:
    """One scripted ``run_once``: what its callbacks tell the actor, how far the clock
    moves, then what it returns (or raises)."""

    arrivals: list[Any] = field(default_factory=list)
    advance: float = 0.0
    result: bool | Exception = True


class FakeLoop:
    """A ``HostedLoop`` that records every call.

    ``run_once`` plays the next scripted turn: its arrivals are told to the actor from
    inside ``run_once``, on the calling thread, as a transport's callbacks do. With no turn
    left it advances the fake clock by the whole timeout (nothing arrived meanwhile) or,
    without a clock, waits (really) until ``wake()`` or the timeout.
    """

    def __init__(self, clock: ManualClock | None = None) -> None:
        self.clock = clock
        self.actor: pykka.ActorRef[Any] | None = None
        self.calls: list[str] = []  # also the actors' journal below
        self.timeouts: list[int] = []
        self.turns: deque[ScriptedTurn] = deque()
        self.wakes = 0
        self.open_ident: int | None = None
        self.close_ident: int | None = None
        self.closed = threading.Event()
        self.open_error: Exception | None = None
        self._woken = threading.Event()

    def script(self, *turns: ScriptedTurn) -> None:
        self.turns.extend(turns)

    def open_loop(self) -> None:
        self.calls.append("open_loop")
        if self.open_error is not None:
            raise self.open_error
        self.open_ident = threading.get_ident()

    def run_once(self, timeout_ms: int) -> bool:
        self.calls.append("run_once")
        self.timeouts.append(timeout_ms)
        if not self.turns:
            if self.clock is not None:
                self.clock.advance(timeout_ms / 1000)
            else:
                self._woken.wait(timeout_ms / 1000)
                self._woken.clear()
            return True
        turn = self.turns.popleft()
        for message in turn.arrivals:
            assert self.actor is not None
            self.actor.tell(message)
        if self.clock is not None:
            self.clock.advance(turn.advance)
        if isinstance(turn.result, Exception):
            raise turn.result
        return turn.result

    def wake(self) -> None:
        self.calls.append("wake")
        self.wakes += 1
        self._woken.set()

    def flush(self) -> None:
        self.calls.append("flush")

    def close_loop(self) -> None:
        self.calls.append("close_loop")
        self.close_ident = threading.get_ident()
        self.closed.set()


class Recorder(LoopTurningActor):
    """Records what it receives, its ticks and its waits; ``("call", fn)`` runs ``fn`` on
    the actor's thread."""

    def __init__(
        self, loop: FakeLoop, reports: list[str], clock: ManualClock | None = None
    ) -> None:
        kwargs = {"clock": clock} if clock is not None else {}
        super().__init__(loop, PERIOD, reports.append, **kwargs)
        loop.actor = self.actor_ref  # before the thread starts: run_once tells it
        self.fake = loop
        self.received: list[Any] = []
        self.ident: int | None = None

    def loop_opened(self) -> None:
        self.ident = threading.get_ident()
        self.fake.calls.append("loop_opened")

    def on_tick(self) -> None:
        self.fake.calls.append("tick")

    def before_wait(self) -> None:
        self.fake.calls.append("before_wait")

    def on_stop(self) -> None:
        self.fake.calls.append("on_stop")
        super().on_stop()

    def on_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.fake.calls.append("on_failure")
        super().on_failure(exception_type, exception_value, traceback)

    def receive(self, message: Any) -> Any:
        if message == "boom":
            raise ValueError("boom")
        if message == "received":
            return list(self.received)
        if message == "ident":
            return self.ident
        if isinstance(message, tuple) and message[0] == "call":
            return message[1]()
        self.received.append(message)
        return None


def start_recorder(
    loop: FakeLoop, clock: ManualClock | None = None
) -> tuple[pykka.ActorRef[Any], list[str]]:
    reports: list[str] = []
    return Recorder.start(loop, reports, clock), reports


@pytest.fixture(autouse=True)
def stop_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(block=True, timeout=WAIT)


def until(condition: Callable[[], bool]) -> None:
    deadline = threading.Event()
    for _ in range(int(WAIT / 0.01)):
        if condition():
            return
        deadline.wait(0.01)
    raise AssertionError("condition not met in time")


# --------------------------------------------------------------------------- TickSchedule


def test_ticks_fall_due_once_per_period_on_schedule() -> None:
    clock = ManualClock()
    schedule = TickSchedule(PERIOD, clock)
    assert not schedule.due()
    assert schedule.wait_ms() == int(PERIOD * 1000) + 1
    clock.advance(PERIOD / 2)
    assert not schedule.due()
    assert 0 < schedule.wait_ms() <= int(PERIOD * 1000) // 2 + 1
    clock.advance(PERIOD / 2 + 0.001)  # slightly late
    assert schedule.due()
    assert not schedule.due()  # once per period
    # A slightly late tick does not delay the schedule: the next is due two periods in.
    clock.advance(PERIOD - 0.001)
    assert schedule.due()
    ticks = 0
    for _ in range(40):
        clock.advance(PERIOD / 4)
        ticks += schedule.due()
    assert ticks == 10


def test_after_a_long_step_the_next_tick_counts_from_now() -> None:
    clock = ManualClock()
    schedule = TickSchedule(PERIOD, clock)
    clock.advance(10 * PERIOD)  # nine ticks' worth of lateness
    assert schedule.due()  # one tick for the lot
    assert not schedule.due()  # no burst to catch up
    assert int(PERIOD * 1000) - 1 <= schedule.wait_ms() <= int(PERIOD * 1000) + 1


def test_the_wait_is_never_negative_nor_longer_than_the_cap() -> None:
    clock = ManualClock()
    assert TickSchedule(3600.0, clock).wait_ms() == MAX_WAIT_MS
    late = TickSchedule(PERIOD, clock)
    clock.advance(2 * PERIOD)
    assert late.wait_ms() == 0


# --------------------------------------------------------------------------- LoopTurningActor


@pytest.mark.timeout(30)
def test_it_owns_its_loop_gets_tells_in_order_and_answers_asks() -> None:
    loop = FakeLoop()
    ref, reports = start_recorder(loop)
    outside = LoopWakingRef(loop.wake)
    outside.set(ref)
    for i in range(200):  # from this thread, not the actor's: each one wakes the loop
        outside.tell(i)
    assert outside.ask("received", timeout=WAIT) == list(range(200))
    assert loop.wakes >= 201

    ident = ref.ask("ident", timeout=WAIT)
    assert ident is not None and ident != threading.get_ident()
    assert loop.open_ident == ident
    assert loop.calls[:2] == ["open_loop", "loop_opened"]
    assert "run_once" in loop.calls

    assert outside.stop(timeout=WAIT)
    assert loop.closed.is_set()  # before the stop was answered
    assert loop.close_ident == ident
    assert loop.calls.count("close_loop") == 1
    assert loop.calls.index("on_stop") < loop.calls.index("close_loop")
    assert "on_failure" not in loop.calls and reports == []


@pytest.mark.timeout(30)
def test_what_a_turn_brings_is_handled_in_order_before_the_next_turn() -> None:
    loop = FakeLoop(ManualClock())
    loop.script(
        ScriptedTurn(), ScriptedTurn(arrivals=["m1", "m2"]), ScriptedTurn(arrivals=["m3"])
    )
    ref, _ = start_recorder(loop, loop.clock)
    until(lambda: len(loop.timeouts) >= 5)
    assert ref.ask("received", timeout=WAIT)[:3] == ["m1", "m2", "m3"]
    # Every turn lets the subclass send what is pending before it may wait.
    turns = [c for c in loop.calls if c in ("before_wait", "run_once")]
    assert turns[:6] == ["before_wait", "run_once"] * 3
    # Arrivals are told on the actor's own thread, inside run_once: no wakeup for those.
    assert loop.wakes == 0


@pytest.mark.timeout(30)
def test_a_turn_does_not_wait_while_messages_are_queued() -> None:
    loop = FakeLoop(ManualClock())
    ref, _ = start_recorder(loop, loop.clock)
    until(lambda: len(loop.timeouts) >= 1)

    def queue_one_more() -> int:
        ref.tell("queued")  # on the actor's thread: queued behind the next turn
        return len(loop.timeouts)

    turned = ref.ask(("call", queue_one_more), timeout=WAIT)
    until(lambda: len(loop.timeouts) >= turned + 2)
    assert loop.timeouts[turned] == 0  # "queued" was waiting: the loop was only polled
    assert "queued" in ref.ask("received", timeout=WAIT)


@pytest.mark.timeout(30)
def test_it_ticks_when_due_and_waits_no_longer_than_the_next_tick() -> None:
    clock = ManualClock()
    loop = FakeLoop(clock)
    start = clock.now
    ref, _ = start_recorder(loop, clock)
    until(lambda: loop.calls.count("tick") >= 10)
    ref.stop(timeout=WAIT)
    ticks = loop.calls.count("tick")
    # The fake loop moves the clock by each whole wait: one tick per period, none skipped
    # (the last wait may have passed a due tick not yet handled when the actor stopped).
    periods = (clock.now - start) / PERIOD
    assert periods - 2 < ticks <= periods
    assert all(0 <= t <= int(PERIOD * 1000) + 1 for t in loop.timeouts)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("result", "reason"),
    [(False, "transport closed"), (OSError("socket on fire"), "socket on fire")],
)
def test_a_loop_that_ends_or_raises_fails_the_actor_and_is_closed_on_its_thread(
    result: bool | Exception, reason: str
) -> None:
    loop = FakeLoop()
    loop.script(ScriptedTurn(arrivals=["last"], result=result))
    ref, reports = start_recorder(loop)
    assert loop.closed.wait(WAIT)
    until(lambda: not ref.is_alive())
    assert loop.close_ident == loop.open_ident
    assert loop.calls.index("on_failure") < loop.calls.index("close_loop")
    assert len(reports) == 1 and reason in reports[0], reports
    assert "on_stop" not in loop.calls


@pytest.mark.timeout(30)
def test_a_failed_message_fails_the_actor_and_closes_its_loop_once() -> None:
    loop = FakeLoop()
    ref, reports = start_recorder(loop)
    ident = ref.ask("ident", timeout=WAIT)
    ref.tell("boom")
    assert loop.closed.wait(WAIT)
    until(lambda: not ref.is_alive())
    assert loop.close_ident == ident
    assert loop.calls.count("close_loop") == 1
    assert len(reports) == 1 and "ValueError('boom')" in reports[0]
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("late")


@pytest.mark.timeout(30)
def test_a_loop_that_cannot_open_is_reported_and_never_turned() -> None:
    loop = FakeLoop()
    loop.open_error = OSError("no sockets")
    ref, reports = start_recorder(loop)
    until(lambda: not ref.is_alive())
    assert len(reports) == 1 and "no sockets" in reports[0]
    assert "run_once" not in loop.calls and "close_loop" not in loop.calls


# --------------------------------------------------------------------------- LoopWakingRef


@pytest.mark.timeout(30)
def test_a_waking_ref_drops_what_it_cannot_deliver_instead_of_failing_the_sender() -> None:
    loop = FakeLoop()
    outside = LoopWakingRef(loop.wake)
    outside.tell("before the actor started")  # dropped: nobody to tell yet
    assert loop.wakes == 0
    assert not outside.stop(timeout=WAIT)
    with pytest.raises(pykka.ActorDeadError):
        outside.ask("received", timeout=WAIT)

    ref, _ = start_recorder(loop)
    outside.set(ref)
    assert outside.stop(timeout=WAIT)
    wakes = loop.wakes
    outside.tell("after it stopped")  # dropped: the peer is shutting down
    assert loop.wakes == wakes
    assert not outside.stop(timeout=WAIT)

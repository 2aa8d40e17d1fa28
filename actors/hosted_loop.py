"""How the peer actor's own thread turns the transport's loop, with pykka's public API only.

Handing every peer message from a transport thread to the actor's thread, and its answers
back, costs tens of microseconds of wakeups per crossing, several per write. So the peer
actor (a plain ``pykka.ThreadingActor``) runs the transport's loop itself: it tells itself
``TURN``, and each ``Turn`` runs one ``run_once`` of the loop, whose callbacks (on the same
thread) tell the actor what arrived; then it tells itself the next ``TURN``. Messages told
meanwhile, by the loop's callbacks or by other threads, queue in pykka's inbox ahead of the
next turn, so they are handled in order and the actor never waits in the loop while its
inbox holds work (the turn does not wait when ``actor_inbox`` is not empty).

While the actor waits in the loop, pykka's inbox cannot wake it: whoever tells it from
another thread must also wake the loop (``LoopWakingRef``). The actor keeps the clock
too (``TickSchedule``), so no ticker thread is needed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pykka

log = logging.getLogger(__name__)

# The longest a turn waits in the loop when no tick is due sooner.
MAX_WAIT_MS = 1000


class HostedLoop(Protocol):
    """What the peer actor needs of a transport started with ``hosted=True``."""

    def open_loop(self) -> None: ...

    def run_once(self, timeout_ms: int) -> bool: ...

    def wake(self) -> None: ...

    def flush(self) -> None: ...

    def close_loop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Turn:
    """The peer actor, to itself: turn the transport's loop once."""


TURN = Turn()


class TickSchedule:
    """When the next tick is due, by the clock given (owned by one actor's thread)."""

    def __init__(self, period_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period_s = period_s
        self.clock = clock
        self.next_at = clock() + period_s

    def due(self) -> bool:
        """Whether a tick is due now; if so, the next one is scheduled."""
        now = self.clock()
        if now < self.next_at:
            return False
        self.next_at += self.period_s
        if self.next_at <= now:
            # Late by a period or more (a long step): the next tick counts from now, rather
            # than a burst of ticks to catch up.
            self.next_at = now + self.period_s
        return True

    def wait_ms(self) -> int:
        """How long the loop may wait before the next tick is due (never negative)."""
        left_ms = int((self.next_at - self.clock()) * 1000) + 1
        return max(0, min(left_ms, MAX_WAIT_MS))


class LoopTurningActor(pykka.ThreadingActor):
    """A pykka actor whose thread turns a hosted transport loop (see the module docstring).

    Subclasses handle their messages in ``receive`` and may implement ``loop_opened``
    (once, first, on the actor's thread), ``on_tick`` (when a tick is due) and
    ``before_wait`` (before a turn may wait in the loop: send what is pending). The loop
    is closed on the actor's thread when it stops or fails; ``report`` hears why it failed.
    """

    def __init__(
        self,
        loop: HostedLoop,
        tick_seconds: float,
        report: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.loop = loop
        self.loop_open = False
        self.tick_schedule = TickSchedule(tick_seconds, clock)
        self.report = report

    def receive(self, message: Any) -> Any:
        return None

    def loop_opened(self) -> None:
        pass

    def on_tick(self) -> None:
        pass

    def before_wait(self) -> None:
        pass

    def on_start(self) -> None:
        try:
            self.loop.open_loop()  # this thread owns the sockets from now on
            self.loop_open = True
            self.loop_opened()
        except Exception as exc:
            # pykka calls on_failure only for a failed message, not a failed on_start.
            self._close_loop()
            self.report(f"{type(self).__name__} failed to start: {exc!r}")
            raise
        self.actor_ref.tell(TURN)

    def on_stop(self) -> None:
        self._close_loop()

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self._close_loop()
        self.report(f"{type(self).__name__} failed: {exc_value!r}")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, Turn):
            self._turn()
            return None
        return self.receive(message)

    def _turn(self) -> None:
        """One turn of the loop: what arrives is told to us by its callbacks, on this
        thread, and handled after the turn, in order, before the next turn."""
        if self.tick_schedule.due():
            self.on_tick()
        self.before_wait()
        # Never wait while messages are queued for us: they are handled first.
        timeout_ms = 0 if not self.actor_inbox.empty() else self.tick_schedule.wait_ms()
        if not self.loop.run_once(timeout_ms):
            raise RuntimeError("transport closed")
        self.actor_ref.tell(TURN)

    def _close_loop(self) -> None:
        """On our thread, last: release the sockets the loop owns."""
        if self.loop_open:
            self.loop_open = False
            self.loop.close_loop()


class LoopWakingRef:
    """How threads other than the peer actor's reach it: pykka's ``tell``/``ask``/``stop``,
    then a wakeup of the loop the actor's thread may be waiting in.

    The ref can be given out before the actor starts (``set`` it then): a message told
    before is dropped, as is one told to an actor that stopped (the peer is shutting down),
    instead of failing the sender.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self.wake = wake
        self.ref: pykka.ActorRef[Any] | None = None

    def set(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref

    def tell(self, message: Any) -> None:
        if self.ref is None:
            return
        try:
            self.ref.tell(message)
        except pykka.ActorDeadError:
            log.debug("dropped %s to the stopped peer actor", type(message).__name__)
            return
        self.wake()

    def ask(self, message: Any, timeout: float) -> Any:
        """The answer to ``message``; raises pykka's ``ActorDeadError`` or ``Timeout``."""
        if self.ref is None:
            raise pykka.ActorDeadError("the peer actor has not started")
        future = self.ref.ask(message, block=False)
        self.wake()
        return future.get(timeout=timeout)

    def stop(self, timeout: float) -> bool:
        """Stop the actor and wait until it has (its ``on_stop`` has run)."""
        if self.ref is None:
            return False
        future = self.ref.stop(block=False)
        self.wake()
        return bool(future.get(timeout=timeout))

"""An actor whose thread also runs its transport's event loop.

A pykka ``ThreadingActor`` waits on a ``queue.Queue``, so every peer message used to cross
two threads before the consensus core saw it: the transport's I/O thread received it and
told the actor, which woke up to step it; its answers went back the same way. Each crossing
costs tens of microseconds of wakeups here, several per write. ``LoopActor`` swaps the
queue for a ``LoopInbox``: when the actor has nothing queued, its own thread turns the
transport's loop (``ZmqTransport.run_once``), whose callbacks put what arrived into the
inbox on that same thread; what the actor sends is flushed by that thread too. Other
threads still ``tell`` it as any actor (a wakeup through the transport's pipe), and it
also keeps the clock: a tick message when one is due, so no ticker thread is needed.

``HostedActor``s have no thread at all: they run on a ``LoopActor``'s thread. The peer's
log actor is one: what arrived in one turn of the loop is made durable in that turn (one
sync for the lot) and the acknowledgements leave right after, without waking a thread.

``InlineCapable`` actors have a thread of their own, for work that may be slow (user code),
but their host runs a message inline when they are idle and the message is known to be
quick (``InlineRef``). The peer's session actor is one.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

import pykka
from pykka._envelope import Envelope

log = logging.getLogger(__name__)

_MAX_WAIT_MS = 1000
# An inline turn slower than this held up the host's loop (heartbeats among it): the actor
# is then not run inline for a while.
INLINE_SLOW_S = 0.05
INLINE_PAUSE_S = 10.0


class HostedLoop(Protocol):
    """What the inbox needs of a transport started with ``hosted=True``."""

    def open_loop(self) -> None: ...

    def run_once(self, timeout_ms: int) -> bool: ...

    def wake(self) -> None: ...

    def flush(self) -> None: ...

    def close_loop(self) -> None: ...


class LoopEnded:
    """Handed to the actor when its transport's loop stops (closed under it, or broken)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class HostedActor:
    """An actor without a thread of its own: it runs on its host's loop thread.

    A message told on the host's thread is handled at once (a call, not a hand-off); one
    told from another thread travels through the host's inbox. Handling stays one message
    at a time, in the order each sender told them. If handling raises, the actor is dead
    from then on and ``on_failure`` is called, as pykka does for a threaded actor.
    """

    def __init__(self) -> None:
        self.actor_ref = HostedRef(self)

    def on_receive(self, message: Any) -> Any:
        return None

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        pass

    def on_stop(self) -> None:
        pass


class HostedRef:
    """How others tell a ``HostedActor``; the same ``tell``/``is_alive``/``stop`` as a
    pykka ref."""

    def __init__(self, actor: HostedActor) -> None:
        self.actor = actor
        self.host: LoopInbox | None = None
        self._alive = True

    def is_alive(self) -> bool:
        return self._alive

    def tell(self, message: Any) -> None:
        if not self._alive:
            raise pykka.ActorDeadError(f"{type(self.actor).__name__} stopped")
        host = self.host
        if host is None or host.on_loop_thread():
            self.deliver(message)
        elif host.closed.is_set():  # the host is gone: as pykka's ref would, say so
            self._alive = False
            raise pykka.ActorDeadError(f"{type(self.actor).__name__}'s host stopped")
        else:
            host.put(Envelope(Delivery(self, message)))

    def deliver(self, message: Any) -> None:
        if not self._alive:
            return
        try:
            self.actor.on_receive(message)
        except Exception:
            self._alive = False
            log.exception("%s failed", type(self.actor).__name__)
            try:
                self.actor.on_failure(*sys.exc_info())
            except Exception:  # noqa: BLE001 - must not take the host down with it
                log.exception("%s.on_failure raised", type(self.actor).__name__)

    def stop(self, block: bool = True, timeout: float | None = None) -> None:
        if self._alive:
            self._alive = False
            self.actor.on_stop()


class OwnThread(pykka.ThreadingActor):
    """Runs a ``HostedActor`` on a thread of its own instead of a host's."""

    def __init__(self, actor: HostedActor) -> None:
        super().__init__()
        self.actor = actor

    def on_receive(self, message: Any) -> Any:
        return self.actor.on_receive(message)

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.actor.on_failure(exc_type, exc_value, traceback)

    def on_stop(self) -> None:
        self.actor.on_stop()


class Counted:
    """A message told to an ``InlineCapable`` actor's own thread (see ``InlineRef``)."""

    __slots__ = ("message",)

    def __init__(self, message: Any) -> None:
        self.message = message


class InlineCapable(pykka.ThreadingActor):
    """An actor with a thread of its own that its host may also run inline.

    Some work is usually quick but may not be (user code): on the actor's own thread it can
    never hold up the host's loop, but every message then costs two thread hand-offs (in,
    and the host woken for what it sends back). ``InlineRef`` handles a message right on the
    host's thread when the actor says it may (``may_inline``) and it is idle: nothing told to
    its thread is unhandled, so order is kept. A lock makes the two places take turns.
    Subclasses implement ``receive`` instead of ``on_receive``; ``self.inline`` says where a
    message is being handled.
    """

    def __init__(self) -> None:
        super().__init__()
        self.turn = threading.Lock()  # held while a message is handled, either place
        self.count_lock = threading.Lock()
        self.unhandled = 0  # messages told to our own thread and not handled yet
        self.inline = False
        self.failed = False
        self.inline_paused_until = float("-inf")  # after a slow inline turn, for a while
        self.inline_pauses = 0

    def receive(self, message: Any) -> Any:
        return None

    def may_inline(self, message: Any) -> bool:
        """Whether ``message`` is cheap enough to handle on the host's thread."""
        return False

    def on_receive(self, message: Any) -> Any:
        counted = isinstance(message, Counted)
        if counted:
            message = message.message
        try:
            if self.failed:
                return None
            with self.turn:
                try:
                    return self.receive(message)
                except Exception:
                    # Before the turn is released: the host must not run the next message
                    # inline on an actor that pykka is about to stop.
                    self.failed = True
                    raise
        finally:
            if counted:
                with self.count_lock:
                    self.unhandled -= 1

    def handle_inline(self, message: Any) -> None:
        """On the host's thread, holding ``turn``, nothing unhandled. A failure is the
        actor's, reported as pykka would; the host goes on."""
        self.inline = True
        started = time.monotonic()
        try:
            self.receive(message)
            took = time.monotonic() - started
            if took > INLINE_SLOW_S:
                # Slower than its estimate: the host's loop waited. Stay off it for a while.
                self.inline_paused_until = started + took + INLINE_PAUSE_S
                self.inline_pauses += 1
                self.on_inline_pause()
                log.info(
                    "%s: %s took %.0f ms on the host's thread; not inline for %.0f s",
                    type(self).__name__,
                    type(message).__name__,
                    took * 1000,
                    INLINE_PAUSE_S,
                )
        except Exception:
            self.failed = True
            log.exception("%s failed", type(self).__name__)
            try:
                self.on_failure(*sys.exc_info())
            except Exception:  # noqa: BLE001
                log.exception("%s.on_failure raised", type(self).__name__)
            with contextlib.suppress(pykka.ActorDeadError):  # its thread goes too
                self.actor_ref.stop(block=False)
        finally:
            self.inline = False

    def on_inline_pause(self) -> None:
        """Called when a slow inline turn pauses inlining (for metrics)."""


class InlineRef:
    """How others tell an ``InlineCapable`` actor (``tell``/``is_alive``/``stop``).

    Made before the actor (``bind`` it in the actor's ``__init__``), hosted like a
    ``HostedRef`` (``LoopInbox.host``)."""

    def __init__(self) -> None:
        self.actor: InlineCapable | None = None
        self.host: LoopInbox | None = None

    def bind(self, actor: InlineCapable) -> None:
        self.actor = actor

    def is_alive(self) -> bool:
        actor = self.actor
        return actor is not None and not actor.failed and actor.actor_ref.is_alive()

    def tell(self, message: Any) -> None:
        actor = self.actor
        if actor is None or actor.failed or not actor.actor_ref.is_alive():
            raise pykka.ActorDeadError("not running")
        host = self.host
        if (
            host is not None
            and host.on_loop_thread()
            and time.monotonic() >= actor.inline_paused_until
            and actor.turn.acquire(blocking=False)
        ):
            try:
                with actor.count_lock:
                    idle = actor.unhandled == 0
                # Asked only now: with the turn held and nothing unhandled, the actor's
                # state cannot change under the answer.
                if idle and actor.may_inline(message):
                    actor.handle_inline(message)
                    return
            finally:
                actor.turn.release()
        with actor.count_lock:
            actor.unhandled += 1
        try:
            actor.actor_ref.tell(Counted(message))
        except pykka.ActorDeadError:
            with actor.count_lock:
                actor.unhandled -= 1
            raise

    def stop(self, block: bool = True, timeout: float | None = None) -> None:
        if self.actor is not None:
            self.actor.actor_ref.stop(block=block, timeout=timeout)


class Delivery:
    """A message for a hosted actor, told from another thread: the host hands it over."""

    __slots__ = ("ref", "message")

    def __init__(self, ref: HostedRef, message: Any) -> None:
        self.ref, self.message = ref, message


class LoopInbox:
    """The actor's mailbox: a deque filled by any thread, drained by the actor's thread,
    which turns the transport loop whenever the deque is empty."""

    def __init__(self) -> None:
        self._envelopes: deque[Envelope[Any]] = deque()
        self._loop: HostedLoop | None = None
        self._owner: int | None = None  # the actor's thread, once its loop is open
        self._tick: Any = None
        self._tick_seconds = 0.0
        self._next_tick = 0.0
        self._clock: Callable[[], float] = time.monotonic
        # Set once the loop is closed for good: the sockets are released, nothing told to
        # the actor or to actors it hosts will be handled any more.
        self.closed = threading.Event()

    def attach(
        self,
        loop: HostedLoop,
        *,
        tick: Any = None,
        tick_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self._tick, self._tick_seconds, self._clock = tick, tick_seconds, clock

    def open(self) -> None:
        """On the actor's thread, before the first ``get``."""
        assert self._loop is not None, "attach a loop first"
        self._loop.open_loop()
        self._owner = threading.get_ident()
        self._next_tick = self._clock() + self._tick_seconds

    def close(self) -> None:
        """On the actor's thread, last (also when the loop never opened)."""
        try:
            if self._loop is not None and self._owner is not None:
                self._owner = None
                self._loop.close_loop()
        finally:
            self.closed.set()

    # pykka's inbox interface (put from any thread; get and empty from the actor's)

    def put(
        self, envelope: Envelope[Any], block: bool = True, timeout: float | None = None
    ) -> None:
        self._envelopes.append(envelope)
        if self._owner != threading.get_ident() and self._loop is not None:
            self._loop.wake()

    def get(self, block: bool = True, timeout: float | None = None) -> Envelope[Any]:
        envelopes = self._envelopes
        loop = self._loop
        while True:
            if self._tick is not None:
                now = self._clock()
                if now >= self._next_tick:
                    self._next_tick += self._tick_seconds
                    if self._next_tick <= now:
                        # Late by a period or more (a long step): the next tick counts from
                        # now, rather than a burst of ticks to catch up.
                        self._next_tick = now + self._tick_seconds
                    return Envelope(self._tick)
                wait_ms = int((self._next_tick - now) * 1000) + 1
            else:
                wait_ms = _MAX_WAIT_MS
            if envelopes:
                return envelopes.popleft()
            if loop is None or self._owner is None:  # not open (stopping before starting)
                return Envelope(LoopEnded("no transport loop"))
            try:
                running = loop.run_once(min(wait_ms, _MAX_WAIT_MS))
            except Exception as exc:  # noqa: BLE001 - the actor fails, the peer stops
                log.exception("transport loop failed")
                return Envelope(LoopEnded(f"transport loop failed: {exc!r}"))
            if not running and not envelopes:
                return Envelope(LoopEnded("transport closed"))

    def empty(self) -> bool:
        return not self._envelopes

    def on_loop_thread(self) -> bool:
        return self._owner == threading.get_ident()

    def host(self, *refs: HostedRef | InlineRef) -> None:
        """Run these hosted actors on this inbox's thread (before the actor starts)."""
        for ref in refs:
            ref.host = self


class LoopActor(pykka.ThreadingActor):
    """A pykka actor hosted on its transport's loop (see the module docstring).

    Subclasses call ``self.actor_inbox.attach(...)`` in ``__init__``; the loop is opened
    on the actor's thread before ``on_start`` and closed after the actor stops or fails.
    """

    actor_inbox: LoopInbox  # type: ignore[assignment]

    @staticmethod
    def _create_actor_inbox() -> LoopInbox:  # type: ignore[override]
        return LoopInbox()

    def _handle_receive(self, message: Any) -> Any:
        if isinstance(message, Delivery):
            message.ref.deliver(message.message)
            return None
        return super()._handle_receive(message)

    def _actor_loop(self) -> None:
        try:
            self.actor_inbox.open()
        except Exception as exc:  # noqa: BLE001
            log.exception("cannot open the transport loop")
            self._handle_failure(type(exc), exc, exc.__traceback__)
            self.on_failure(type(exc), exc, exc.__traceback__)
            self._actor_loop_teardown()
            self.actor_inbox.close()
            return
        try:
            super()._actor_loop()
        finally:
            self.actor_inbox.close()

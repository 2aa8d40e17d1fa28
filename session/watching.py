"""The client side of one-shot watches: arming, long-polling the leader, delivery.

A watch is armed by a query (``Session.query(q, watch=...)``) in the leader's watch table,
whose ``epoch`` names that leader's term of office. A poller thread long-polls the leader
for fired watches and hands them, in commit order, to a delivery thread that runs the
callbacks (so a slow callback holds up neither polling nor the session's keep-alive) or
puts them on the session's event queue (``watch_events``). Each arming fires exactly once:

* ``change``: a committed write (or an expiry) touched what the query read;
* ``change_leader``: the table the watch lived in is gone — the leader changed, or this
  client could not reach it and moved on;
* ``session_expired``: the session ended before anything else fired it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from zraft.transport import TransportTimeout

from .errors import Overloaded, Rejected, SessionExpired, ZraftError
from .requests import TryAgain, interpret, pick_peer

log = logging.getLogger(__name__)

CHANGE = "change"
CHANGE_LEADER = "change_leader"
SESSION_EXPIRED = "session_expired"


class WatchEvent(NamedTuple):
    """A fired watch. ``index`` is the log index of the write that fired it (0 when the
    reason is not a write); ``key`` the key it touched; ``query`` the query that armed it."""

    watch_id: int
    reason: str
    key: str | None
    index: int
    query: Any


WatchHandler = Callable[[WatchEvent], object]


@dataclass(slots=True)
class _Armed:
    query: Any
    handler: WatchHandler | None  # None: to the session's event queue
    epoch: str | None = None  # the leader's table it lives in; None while being armed
    since: float = 0.0  # when its epoch became known (monotonic)


def _epoch_peer(epoch: str) -> str:
    return epoch.rsplit("/", 2)[0]


Delivery = tuple[WatchHandler | None, WatchEvent]


class WatchManager:
    """Owns the armed watches of one session and the two threads that serve them."""

    def __init__(
        self,
        poller: Any,
        poll_wait: float,
        margin: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``poller``: a LightSession with the session's client id and its own sockets,
        used by the poll thread only. ``margin``: how much longer than ``poll_wait`` a
        poll may take before its leader counts as lost."""
        self._poller = poller
        self._poll_wait = poll_wait
        self._margin = margin
        self._clock = clock
        # A watch armed in a table the poll loop has not reached yet is given this long
        # before that table counts as lost (the loop may still be on a stale leader).
        self._grace = poll_wait + 2 * margin
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._armed: dict[int, _Armed] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self._left: set[str] = set()  # epochs the poll loop has moved away from
        self.events: queue.Queue[WatchEvent | None] = queue.Queue()
        self._deliveries: queue.Queue[Delivery | None] = queue.Queue()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self.on_expired: Callable[[], None] = lambda: None
        self._poll_thread = threading.Thread(
            target=self._poll_loop, name="zraft-watch-poll", daemon=True
        )
        self._delivery_thread = threading.Thread(
            target=self._deliver_loop, name="zraft-watch-delivery", daemon=True
        )
        self._poll_thread.start()
        self._delivery_thread.start()

    def __len__(self) -> int:
        with self._lock:
            return len(self._armed)

    # ------------------------------------------------------------------ arming

    def begin(self, query: Any, handler: WatchHandler | None) -> int:
        """Note a watch before asking for it, so an event racing the answer is not lost."""
        with self._lock:
            watch_id = next(self._ids)
            self._armed[watch_id] = _Armed(query, handler)
            self._changed.notify_all()
            return watch_id

    def armed(self, watch_id: int, epoch: str) -> None:
        with self._lock:
            armed = self._armed.get(watch_id)
            if armed is not None and armed.epoch is None:
                armed.epoch, armed.since = epoch, self._clock()

    def abandon(self, watch_id: int) -> None:
        """The arming query failed: the watch is not ours to deliver."""
        with self._lock:
            self._armed.pop(watch_id, None)

    # ------------------------------------------------------------------ firing

    def fire_all(self, reason: str) -> None:
        """Fire every armed watch (the session ended, say)."""
        with self._lock:
            self._fire_all_locked(reason)

    def _fire_all_locked(self, reason: str) -> None:
        for watch_id, armed in self._armed.items():
            self._deliveries.put(self._event(watch_id, armed, reason))
        self._armed.clear()

    def expire(self) -> None:
        """The session expired: every watch fires ``session_expired``, and the event
        iterators end once they have taken what came before."""
        with self._lock:
            self._fire_all_locked(SESSION_EXPIRED)
            self._closed = True
            self._changed.notify_all()
            self._deliveries.put(None)

    def _event(
        self, watch_id: int, armed: _Armed, reason: str, key: str | None = None, index: int = 0
    ) -> Delivery:
        return armed.handler, WatchEvent(watch_id, reason, key, index, armed.query)

    def _fire_where(self, dead: Callable[[_Armed], bool]) -> None:
        """Fire ``change_leader`` for the armed watches whose table is gone. Called with
        the lock held: deliveries keep the order in which watches fired."""
        gone = [wid for wid, a in self._armed.items() if a.epoch is not None and dead(a)]
        for watch_id in gone:
            self._deliveries.put(self._event(watch_id, self._armed.pop(watch_id), CHANGE_LEADER))

    def _lost(self, peer: str | None) -> None:
        """The table at ``peer`` (every table, if None) is out of reach."""
        with self._lock:
            self._fire_where(lambda a: peer is None or _epoch_peer(a.epoch or "") == peer)

    def _take(self, epoch: str, events: list[Any]) -> int:
        """Deliver what a poll of table ``epoch`` brought, then fire the watches whose
        tables are gone: tables the loop left, older tables of the same peer, and tables
        the loop never reached within the grace period. Returns the highest event seq."""
        last = 0
        with self._lock:
            for event in events:
                if not (isinstance(event, list) and len(event) == 5):
                    log.warning("malformed watch event dropped: %r", event)
                    continue
                seq, watch_id, reason, key, index = event
                if type(seq) is not int or type(watch_id) is not int:
                    log.warning("malformed watch event dropped: %r", event)
                    continue
                last = max(last, seq)
                armed = self._armed.pop(watch_id, None)
                if armed is not None:  # else: fired already (here, as change_leader)
                    key = key if isinstance(key, str) else None
                    index = index if type(index) is int else 0
                    self._deliveries.put(self._event(watch_id, armed, str(reason), key, index))
            here, now = _epoch_peer(epoch), self._clock()

            def dead(a: _Armed) -> bool:
                other = a.epoch
                if other == epoch or other is None:
                    return False
                return (
                    other in self._left or _epoch_peer(other) == here or now - a.since > self._grace
                )

            self._fire_where(dead)
        return last

    # ------------------------------------------------------------------ threads

    def _poll_loop(self) -> None:
        epoch, after = "", 0
        while True:
            with self._lock:
                while not self._armed and not self._closed:
                    self._changed.wait()
                if self._closed:
                    return
            try:
                reply = self._poll(epoch, after)
            except SessionExpired:
                if not self._closed:
                    self.on_expired()
                return
            except TryAgain as error:
                time.sleep(max(error.wait, 0.01))
                continue
            except (Overloaded, Rejected) as error:  # the leader is there, but busy or odd
                log.warning("watch poll refused: %s", error)
                time.sleep(self._margin)
                continue
            except ZraftError as error:  # every peer failed: every table is out of reach
                log.debug("watch poll: %s", error)
                self._lost(None)
                time.sleep(self._margin)
                continue
            except Exception:  # a bug or a closed channel must not end watching silently
                log.exception("watch poll failed")
                self._lost(None)
                time.sleep(self._margin)
                continue
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], str)):
                log.warning("malformed watch poll answer dropped: %r", reply)
                time.sleep(self._margin)
                continue
            new_epoch, events = reply
            if new_epoch != epoch:
                if epoch:
                    with self._lock:
                        self._left.add(epoch)
                epoch, after = new_epoch, 0
            after = max(after, self._take(epoch, events if isinstance(events, list) else []))

    def _poll(self, epoch: str, after: int) -> Any:
        tracker = self._poller.tracker
        peer = pick_peer(tracker, self._poller._founding)
        payload = {"epoch": epoch, "after": after, "wait_ms": int(self._poll_wait * 1000)}
        try:
            reply = self._poller._send(
                peer, "watch_poll", payload, self._poll_wait + self._margin, 0, 0
            )
        except TransportTimeout:
            # Ask once more without waiting before giving the table up: a client that was
            # paused itself (SIGSTOP, a long GC) finds its poll timed out, not its leader.
            try:
                reply = self._poller._send(
                    peer, "watch_poll", {**payload, "wait_ms": 0}, self._margin, 0, 0
                )
            except TransportTimeout as error:
                tracker.failed(peer)
                self._lost(peer)
                raise TryAgain(f"{peer}: {error}") from None
        try:
            return interpret(tracker, peer, reply, self._poller._founding)
        except TryAgain:
            if reply.error == "not_leader":  # what lived there is gone
                self._lost(peer)
            raise

    def _deliver_loop(self) -> None:
        while True:
            item = self._deliveries.get()
            if item is None:
                self.events.put(None)
                self._notify_async()
                return
            handler, event = item
            if handler is None:
                self.events.put(event)
                self._notify_async()
                continue
            try:
                handler(event)
            except Exception:  # the application's bug must not stop delivery
                log.exception("watch callback for %r failed", event)

    # ------------------------------------------------------------------ asyncio

    def add_async_waiter(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Event) -> None:
        with self._lock:
            self._async_waiters.add((loop, ready))

    def remove_async_waiter(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Event) -> None:
        with self._lock:
            self._async_waiters.discard((loop, ready))

    def _notify_async(self) -> None:
        with self._lock:
            waiters = list(self._async_waiters)
        for loop, ready in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed
                loop.call_soon_threadsafe(ready.set)

    # ------------------------------------------------------------------ closing

    def stop(self) -> None:
        """Stop arming and polling; armed watches are dropped without firing."""
        with self._lock:
            self._closed = True
            self._armed.clear()
            self._changed.notify_all()

    def join(self) -> None:
        """Wait for the threads (a held poll ends at its deadline, or at once when the
        session's close reaches the leader), after delivering what was already fired.
        Safe from a watch callback (the delivery thread does not wait for itself)."""
        self.stop()
        self._poll_thread.join(self._poll_wait + self._margin + 1.0)
        self._deliveries.put(None)
        if threading.current_thread() is not self._delivery_thread:
            self._delivery_thread.join(5.0)
        if self._poll_thread.is_alive():  # its sockets are its own: leave them to it
            log.warning("watch poll thread still busy at close")
        else:
            self._poller.close()

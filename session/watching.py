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

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from zraft.transport import TransportTimeout

from .errors import SessionExpired, ZraftError
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


def _epoch_peer(epoch: str) -> str:
    return epoch.rsplit("/", 2)[0]


class WatchManager:
    """Owns the armed watches of one session and the two threads that serve them."""

    def __init__(self, poller: Any, poll_wait: float, margin: float) -> None:
        """``poller``: a LightSession with the session's client id and its own sockets,
        used by the poll thread only."""
        self._poller = poller
        self._poll_wait = poll_wait
        self._margin = margin
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._armed: dict[int, _Armed] = {}
        self._ids = itertools.count(1)
        self._closed = False
        self.events: queue.Queue[WatchEvent | None] = queue.Queue()
        self._deliveries: queue.Queue[tuple[WatchHandler | None, WatchEvent] | None]
        self._deliveries = queue.Queue()
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
                armed.epoch = epoch

    def abandon(self, watch_id: int) -> None:
        """The arming query failed: the watch is not ours to deliver."""
        with self._lock:
            self._armed.pop(watch_id, None)

    # ------------------------------------------------------------------ firing

    def fire_all(self, reason: str) -> None:
        """Fire every armed watch (the session ended, say)."""
        with self._lock:
            fired = [self._event(wid, a, reason) for wid, a in self._armed.items()]
            self._armed.clear()
        self._dispatch(fired)

    def _event(
        self, watch_id: int, armed: _Armed, reason: str, key: str | None = None, index: int = 0
    ) -> tuple[WatchHandler | None, WatchEvent]:
        return armed.handler, WatchEvent(watch_id, reason, key, index, armed.query)

    def _dispatch(self, fired: list[tuple[WatchHandler | None, WatchEvent]]) -> None:
        for item in fired:
            self._deliveries.put(item)

    def _lost(self, peer: str | None) -> None:
        """The table at ``peer`` (every table, if None) is out of reach: its watches fire
        ``change_leader``."""
        with self._lock:
            gone = [
                wid
                for wid, a in self._armed.items()
                if a.epoch is not None and (peer is None or _epoch_peer(a.epoch) == peer)
            ]
            fired = [self._event(wid, self._armed.pop(wid), CHANGE_LEADER) for wid in gone]
        self._dispatch(fired)

    def _take(self, epoch: str, events: list[Any]) -> int:
        """Deliver what a poll brought; watches armed in other (older) tables fire
        ``change_leader``. Returns the highest event seq seen."""
        last = 0
        fired = []
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
                    fired.append(self._event(watch_id, armed, str(reason), key, index))
            stale = [
                wid for wid, a in self._armed.items() if a.epoch is not None and a.epoch != epoch
            ]
            fired.extend(self._event(wid, self._armed.pop(wid), CHANGE_LEADER) for wid in stale)
        self._dispatch(fired)
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
            except ZraftError as error:  # every peer failed: every table is out of reach
                log.debug("watch poll: %s", error)
                self._lost(None)
                time.sleep(self._margin)
                continue
            if not (isinstance(reply, list) and len(reply) == 2 and isinstance(reply[0], str)):
                log.warning("malformed watch poll answer dropped: %r", reply)
                continue
            new_epoch, events = reply
            if new_epoch != epoch:
                epoch, after = new_epoch, 0
            after = max(after, self._take(epoch, events if isinstance(events, list) else []))

    def _poll(self, epoch: str, after: int) -> Any:
        tracker = self._poller.tracker
        peer = pick_peer(tracker)
        payload = {"epoch": epoch, "after": after, "wait_ms": int(self._poll_wait * 1000)}
        try:
            reply = self._poller._send(
                peer, "watch_poll", payload, self._poll_wait + self._margin, 0, 0
            )
        except TransportTimeout as error:
            tracker.failed(peer)
            self._lost(peer)
            raise TryAgain(f"{peer}: {error}") from None
        try:
            return interpret(tracker, peer, reply)
        except TryAgain:  # not the leader (any more): what lived there is gone
            self._lost(peer)
            raise

    def _deliver_loop(self) -> None:
        while True:
            item = self._deliveries.get()
            if item is None:
                self.events.put(None)
                return
            handler, event = item
            if handler is None:
                self.events.put(event)
                continue
            try:
                handler(event)
            except Exception:  # the application's bug must not stop delivery
                log.exception("watch callback for %r failed", event)

    def stop(self) -> None:
        """Stop arming and polling; armed watches are dropped without firing."""
        with self._lock:
            self._closed = True
            self._armed.clear()
            self._changed.notify_all()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for the threads (a held poll ends at its deadline, or at once when the
        session's close reaches the leader), after delivering what was already fired."""
        self.stop()
        self._poll_thread.join(timeout)
        self._deliveries.put(None)
        self._delivery_thread.join(timeout)
        self._poller.close()

"""Long-lived sessions: temporary data that lives while its owner does.

    with Session(peers, session_timeout=5.0) as s:
        s.write(kv.put("lock/x", "me"), temporary=True)   # deleted when the session ends
        ...

The session is registered through the log; a background thread pings the leader when the
session has been idle for half its timeout. Pings are tracked on the leader only; the
leader decides an expiry and replicates it as one entry, which deletes the session's
temporary data on every peer. A new leader gives every session a fresh full timeout, so a
failover never expires a live session. After an expiry every call raises
``SessionExpired``. Clocks are monotonic throughout.

Watches: ``query(q, watch=callback)`` (or ``watch=True`` for ``watch_events()``) arms a
one-shot trigger on what the query read; see ``zraft.session.watching``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from .errors import ClientError, SessionExpired, WriteRequest, ZraftError
from .light import LightSession, Written
from .requests import CallState
from .watching import WatchEvent, WatchHandler, WatchManager

log = logging.getLogger(__name__)


DEFAULT_SESSION_TIMEOUT = 5.0


class Session(LightSession):
    def __init__(
        self,
        peers: str | Sequence[str],
        session_timeout: float | None = None,
        **options: Any,
    ) -> None:
        """Open a session with ``session_timeout`` seconds of allowed silence, after which
        the cluster expires it (see LightSession for ``options``: its ``timeout`` is the
        default time a call may take, as there).

        Deprecated: ``timeout=`` without ``session_timeout`` still means the session's
        timeout, as it did before the two were told apart (with a DeprecationWarning).
        """
        if session_timeout is None:
            session_timeout = DEFAULT_SESSION_TIMEOUT
            if "timeout" in options:
                warnings.warn(
                    "Session(timeout=...) is the session's expiry only when session_timeout "
                    "is not given; pass session_timeout= (timeout= is the per-call default, "
                    "as in LightSession)",
                    DeprecationWarning,
                    stacklevel=2,
                )
                session_timeout = options.pop("timeout")
        timeout = session_timeout
        if not 0 < timeout <= 86_400:
            raise ValueError("a session timeout is between 0 and 86400 seconds")
        super().__init__(peers, **options)
        self.session_timeout = timeout
        self._options = options
        self._watches: WatchManager | None = None
        self._watch_setup = threading.Lock()
        self.expired = False
        self._last_activity = time.monotonic()
        self._closed = threading.Event()
        try:
            self._write("session_open", int(timeout * 1000), None)
        except BaseException:
            super().close()  # no session: its connection goes too
            raise
        # The keep-alive has its own connection (sockets are thread-confined) and the same
        # client id, so the leader counts its pings for this session.
        self._options = {**options, "cluster_uuid": self.cluster_uuid}  # pinned by the open
        self._pinger = LightSession(self.tracker.peers, client_id=self.client_id, **self._options)
        self._keepalive = threading.Thread(target=self._keep_alive, daemon=True)
        self._keepalive.start()

    @property
    def session_id(self) -> str:
        return self.client_id

    def write(self, command: Any, timeout: float | None = None, temporary: bool = False) -> Any:
        """A write; with ``temporary=True`` the data it creates belongs to this session.
        Every write of an expired session is refused (``SessionExpired``)."""
        return self._write("session_write", [temporary, command], timeout)

    def retry(self, error: ClientError, timeout: float | None = None) -> Any:
        """``LightSession.retry``: the write that raised ``error`` again, exactly once."""
        self._check_open()
        return super().retry(error, timeout)

    def write_indexed(  # type: ignore[override]
        self, command: Any, timeout: float | None = None, temporary: bool = False
    ) -> Written:
        """``write``, also returning the log index of the entry that answered it."""
        with self._lock:
            return Written(self.write(command, timeout, temporary), self._last_index)

    def query(
        self,
        query: Any,
        timeout: float | None = None,
        watch: WatchHandler | bool | None = None,
    ) -> Any:
        """A linearizable read. With ``watch``, also a one-shot trigger on what it read:
        a callable gets the ``WatchEvent`` on the session's delivery thread; ``True`` puts
        it on ``watch_events()``. Backends that cannot name what a query read refuse with
        ``NotSupported``."""
        self._check_open()
        if watch is None or watch is False:
            # No keep-alive credit: a follower may have answered it, unheard by the leader.
            return super().query(query, timeout)
        if watch is not True and not callable(watch):
            raise TypeError("watch must be a callable, True or None")
        sent = time.monotonic()
        watches = self._watch_manager()
        watch_id = watches.begin(query, None if watch is True else watch)
        try:
            data, epoch = self._call("watch_query", [query, watch_id], timeout)
        except BaseException as error:
            watches.abandon(watch_id)
            if isinstance(error, SessionExpired):
                self._mark_expired()
            raise
        watches.armed(watch_id, epoch)
        self._last_activity = sent  # watch reads are answered by the leader only
        return data

    @property
    def watch_count(self) -> int:
        """Watches armed and not fired yet."""
        return 0 if self._watches is None else len(self._watches)

    def watch_events(self, timeout: float | None = None) -> Iterator[WatchEvent]:
        """Fired watches armed with ``watch=True``, in commit order. Ends when the session
        closes or expires, or when nothing came for ``timeout`` seconds."""
        if self._watches is None and (self._closed.is_set() or self.expired):
            return
        events = self._watch_manager().events
        while True:
            try:
                event = events.get(timeout=timeout)
            except queue.Empty:
                return
            if event is None:
                events.put(None)  # for any other reader
                return
            yield event

    async def watch_events_async(self, timeout: float | None = None) -> AsyncIterator[WatchEvent]:
        """``watch_events`` for asyncio: waits on the event loop (no thread is parked, so
        cancelling it loses nothing)."""
        if self._watches is None and (self._closed.is_set() or self.expired):
            return
        manager = self._watch_manager()
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        manager.add_async_waiter(loop, ready)
        try:
            while True:
                ready.clear()
                try:
                    event = manager.events.get_nowait()
                except queue.Empty:
                    try:
                        await asyncio.wait_for(ready.wait(), timeout)
                    except TimeoutError:
                        return
                    continue
                if event is None:
                    manager.events.put(None)
                    return
                yield event
        finally:
            manager.remove_async_waiter(loop, ready)

    def _watch_manager(self) -> WatchManager:
        with self._watch_setup:
            if self._watches is None:
                # Polls have their own connection (sockets are thread-confined) and the
                # same client id: the leader keeps the fired watches under that id.
                poller = LightSession(self.tracker.peers, client_id=self.client_id, **self._options)
                wait = min(1.0, self.session_timeout / 3)
                margin = max(self.election_timeout, 0.2)
                self._watches = WatchManager(poller, wait, margin)
                self._watches.on_expired = self._mark_expired
            return self._watches

    def _mark_expired(self) -> None:
        """The session is gone: note it, and fire its watches (once: the manager forgets
        them as they fire)."""
        self.expired = True
        if self._watches is not None and not self._closed.is_set():
            self._watches.expire()

    def close(self) -> None:
        """End the session now: its temporary data is deleted at once."""
        if not self._closed.is_set():
            self._closed.set()
            if self._watches is not None:
                self._watches.stop()
            if not self.expired:
                try:
                    self._write("session_close", None, None)
                except ZraftError as error:  # it will expire on its own
                    log.warning("closing session %s: %s", self.client_id, error)
            self._keepalive.join(timeout=5)
            self._pinger.close()
            if self._watches is not None:
                self._watches.join()
        super().close()

    def __enter__(self) -> Session:
        return self

    def _check_open(self) -> None:
        if not self.expired and time.monotonic() - self._last_activity > self.session_timeout:
            # Silent for longer than the timeout (a paused process, say): ask before acting.
            try:
                sent = time.monotonic()
                self._call("ping", None, self.session_timeout)
                self._last_activity = sent
            except SessionExpired:
                self._mark_expired()
        if self.expired:
            raise SessionExpired(f"session {self.client_id} expired")

    def _write(self, op: str, payload: Any, timeout: float | None) -> Any:
        self._check_open()
        return super()._write(op, payload, timeout)

    def _write_request(self, request: WriteRequest, timeout: float | None, state: CallState) -> Any:
        sent = time.monotonic()
        try:
            result = super()._write_request(request, timeout, state)
        except SessionExpired:
            self._mark_expired()
            raise
        # The leader heard us no earlier than we sent: counting from the answer would
        # let a slow round trip eat into the next ping's margin.
        self._last_activity = sent
        return result

    def _keep_alive(self) -> None:
        """Ping when the session has been idle for half its timeout, counted from the last
        request sent. Sleeps until exactly then (one wakeup per ping, which matters with
        thousands of sessions in one process); a ping unanswered within a quarter of the
        timeout is sent again a twentieth later, so the retry still lands in time."""
        half = self.session_timeout / 2
        while not self._closed.wait(max(0.0, self._last_activity + half - time.monotonic())):
            if self.expired:
                return
            if time.monotonic() - self._last_activity < half:
                continue  # a write or an earlier ping meanwhile
            sent = time.monotonic()
            try:
                self._pinger._call("ping", None, self.session_timeout / 4)
                self._last_activity = sent
            except SessionExpired:
                log.warning("session %s expired", self.client_id)
                self._mark_expired()
                return
            except ZraftError as error:  # no leader right now: keep trying, not spinning
                log.debug("keep-alive of %s: %s", self.client_id, error)
                if self._closed.wait(self.session_timeout / 20):
                    return

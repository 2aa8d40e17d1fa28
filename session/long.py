"""Long-lived sessions: temporary data that lives while its owner does.

    with Session(peers, timeout=5.0) as s:
        s.write(kv.put("lock/x", "me"), temporary=True)   # deleted when the session ends
        ...

The session is registered through the log; a background thread pings the leader when the
session has been idle for half its timeout. Pings are tracked on the leader only; the
leader decides an expiry and replicates it as one entry, which deletes the session's
temporary data on every peer. A new leader gives every session a fresh full timeout, so a
failover never expires a live session. After an expiry every call raises
``SessionExpired``. Clocks are monotonic throughout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from .errors import SessionExpired, ZraftError
from .light import LightSession

log = logging.getLogger(__name__)


class Session(LightSession):
    def __init__(self, peers: str | Sequence[str], timeout: float = 5.0, **options: Any) -> None:
        """Open a session with ``timeout`` seconds of allowed silence (see LightSession for
        ``options``)."""
        if not 0 < timeout <= 86_400:
            raise ValueError("a session timeout is between 0 and 86400 seconds")
        super().__init__(peers, **options)
        self.session_timeout = timeout
        self.expired = False
        self._last_activity = time.monotonic()
        self._closed = threading.Event()
        self._call_write("session_open", int(timeout * 1000), None)
        # The keep-alive has its own connection (sockets are thread-confined) and the same
        # client id, so the leader counts its pings for this session.
        self._pinger = LightSession(self.tracker.peers, client_id=self.client_id, **options)
        self._keepalive = threading.Thread(target=self._keep_alive, daemon=True)
        self._keepalive.start()

    @property
    def session_id(self) -> str:
        return self.client_id

    def write(self, command: Any, timeout: float | None = None, temporary: bool = False) -> Any:
        """A write; with ``temporary=True`` the data it creates belongs to this session.
        Every write of an expired session is refused (``SessionExpired``)."""
        return self._call_write("session_write", [temporary, command], timeout)

    def query(self, query: Any, timeout: float | None = None) -> Any:
        self._check_open()
        self._last_activity = time.monotonic()
        return super().query(query, timeout)

    def close(self) -> None:
        """End the session now: its temporary data is deleted at once."""
        if not self._closed.is_set():
            self._closed.set()
            if not self.expired:
                try:
                    self._call_write("session_close", None, None)
                except ZraftError as error:  # it will expire on its own
                    log.warning("closing session %s: %s", self.client_id, error)
            self._keepalive.join(timeout=5)
            self._pinger.close()
        super().close()

    def __enter__(self) -> Session:
        return self

    def _check_open(self) -> None:
        if not self.expired and time.monotonic() - self._last_activity > self.session_timeout:
            # Silent for longer than the timeout (a paused process, say): ask before acting.
            try:
                self._call("ping", None, self.session_timeout)
                self._last_activity = time.monotonic()
            except SessionExpired:
                self.expired = True
        if self.expired:
            raise SessionExpired(f"session {self.client_id} expired")

    def _call_write(self, op: str, payload: Any, timeout: float | None) -> Any:
        self._check_open()
        with self._lock:
            self._seq += 1
            seq = self._seq
            try:
                result = self._call(op, payload, timeout, seq=seq, acked=self._acked)
            except SessionExpired:
                self.expired = True
                raise
            self._acked = seq
            self._last_activity = time.monotonic()
            return result

    def _keep_alive(self) -> None:
        period = self.session_timeout / 10
        while not self._closed.wait(period):
            if time.monotonic() - self._last_activity < self.session_timeout / 2:
                continue
            try:
                self._pinger._call("ping", None, self.session_timeout / 2)
                self._last_activity = time.monotonic()
            except SessionExpired:
                self.expired = True
                log.warning("session %s expired", self.client_id)
                return
            except ZraftError as error:  # no leader right now: keep trying
                log.debug("keep-alive of %s: %s", self.client_id, error)

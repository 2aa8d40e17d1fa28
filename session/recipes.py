"""Recipes built from sessions, temporary keys and watches.

A lock (on the key-value backend)::

    with Session(peers, session_timeout=5) as s:
        with Lock(s, "locks/report") as token:
            storage.write(data, fencing_token=token)   # the storage refuses older tokens

The lock is a temporary key created by compare-and-set, so it is held by one session at a
time and goes when the holder's session closes or expires. A waiter watches the key and
tries again when the watch fires. **A lock alone cannot protect a resource**: a holder may
be paused (GC, SIGSTOP, a slow disk) past its session timeout, lose the lock, and wake up
still believing it holds it. So every acquisition comes with a *fencing token*: the log
index of the write that created the lock key (a retried write reports its first copy's
index, so the token is that of the creation): tokens grow from holder to holder. A
resource that remembers the highest token it has seen and refuses lower ones never
accepts an older holder's write after a newer holder's (it cannot stop the older one
before the newer one reaches it). Only ``Lock`` may write the key.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from zraft.backends import kv

from .errors import RequestTimeout, SessionExpired
from .long import Session
from .watching import SESSION_EXPIRED, WatchEvent


class Lock:
    def __init__(self, session: Session, key: str, holder: str = "") -> None:
        """A lock on ``key``; ``holder`` is free text stored with it (who holds it)."""
        self.session = session
        self.key = key
        self._value = {"session": session.session_id, "holder": holder}
        self.token: int | None = None  # the fencing token while held

    def acquire(self, timeout: float | None = None) -> int:
        """Wait until the lock is ours; returns its fencing token. ``RequestTimeout`` if
        that takes longer than ``timeout`` seconds (None: wait as long as it takes). Not
        from a watch callback: the wait needs the delivery thread that runs it."""
        if self.token is not None:
            raise RuntimeError(f"lock {self.key!r} is already held by this Lock")
        # One Lock object per key and session: two would take the lock from each other.
        deadline = None if timeout is None else time.monotonic() + timeout

        def budget() -> float | None:  # each call gets what is left (None: its default)
            if deadline is None:
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                raise RequestTimeout(f"lock {self.key!r} not acquired in {timeout}s")
            return left

        while True:
            written = self.session.write_indexed(
                kv.cas(self.key, None, self._value), budget(), temporary=True
            )
            if written.result["swapped"]:
                self.token = written.index
                return written.index
            if written.result["value"] == self._value:
                # Ours from an earlier acquisition whose release was lost: take it anew,
                # for a fresh token.
                self.session.write(kv.delete(self.key, expected=self._value), budget())
                continue
            # Held by someone else: wait until that changes (a one-shot watch on the key).
            wakeup = _Wakeup()
            if not self.session.query(kv.get(self.key), budget(), watch=wakeup)["found"]:
                continue  # released between our write and our read
            event = wakeup.wait(budget())
            if event is None:
                raise RequestTimeout(f"lock {self.key!r} not acquired in {timeout}s")
            if event.reason == SESSION_EXPIRED:
                raise SessionExpired(f"session {self.session.session_id} expired")

    def release(self) -> int | None:
        """Let go (only if still ours: after an expiry someone else may hold it). Returns
        the log index of the release, or None if there was nothing to release."""
        if self.token is None or self.session.expired:
            self.token = None
            return None
        self.token = None
        written = self.session.write_indexed(kv.delete(self.key, expected=self._value))
        return written.index if written.result["deleted"] else None

    def __enter__(self) -> int:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holder(self) -> Any:
        """Who holds the lock now (its stored value), or None."""
        answer = self.session.query(kv.get(self.key))
        return answer["value"] if answer["found"] else None


class _Wakeup:
    """A watch callback that a waiting thread can block on."""

    def __init__(self) -> None:
        self._fired = threading.Event()
        self._event: WatchEvent | None = None

    def __call__(self, event: WatchEvent) -> None:
        self._event = event
        self._fired.set()

    def wait(self, timeout: float | None) -> WatchEvent | None:
        return self._event if self._fired.wait(timeout) else None

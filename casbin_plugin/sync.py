"""Keeping a local enforcer current: apply the cluster's change feed, in order, once each.

``PolicySync`` starts from the whole policy, then applies every change of the feed
(``changes_since``) to the local model in change-counter order; when it has fallen further
behind than the feed reaches, it reloads the whole policy. Writers wait for it
(``wait_for(seq)``): a management call returns once its own change is applied here.

When to look at the feed is pluggable (a ``Waker``). ``PollingWaker`` looks again after a
short interval while a writer waits for its change, and a longer one otherwise; a waker
driven by the cluster's one-shot watches can replace it without touching the rest.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from zraft.session import LightSession

from . import commands as c
from .local_model import LocalModel

log = logging.getLogger(__name__)

__all__ = ["ChangeFeed", "PolicySync", "PollingWaker", "SessionFeed", "Waker", "WatchWaker"]

Listener = Callable[[dict[str, Any]], None]


class ChangeFeed(Protocol):
    """Where changes come from."""

    def fetch(self, since: int, urgent: bool) -> dict[str, Any]:
        """A ``changes_since(since)`` answer; ``urgent``: a writer waits (read fresh)."""

    def fetch_policy(self) -> dict[str, Any]:
        """The whole policy: ``{"seq": n, "policy": [[sec, ptype, rules], ...]}``."""

    def close(self) -> None: ...


class Waker(Protocol):
    """Decides when the sync looks at the feed again."""

    def wait(self, urgent: bool, wake: threading.Event) -> None:
        """Block until it is time to fetch (``wake`` set means: now)."""


class PollingWaker:
    """Poll every ``busy_interval`` s while a writer waits, every ``idle_interval`` s else."""

    def __init__(self, idle_interval: float = 0.01, busy_interval: float = 0.001) -> None:
        self.idle_interval = idle_interval
        self.busy_interval = busy_interval

    def wait(self, urgent: bool, wake: threading.Event) -> None:
        wake.wait(self.busy_interval if urgent else self.idle_interval)


class WatchWaker:
    """Wake on the cluster's one-shot watches instead of polling while idle.

    A watch is armed on ``casbin/seq`` (every change fires it) through a long-lived
    ``Session``; when it fires, the sync reads the feed. After arming, the sync reads once
    more (a change between its last read and the arming is not lost); without a watch (the
    leader changed, the session is busy reconnecting) it reads every ``fallback`` s.
    """

    _NEVER = 2**62  # changes_since(this) answers nothing: the cheapest query on casbin/seq

    def __init__(self, session: Any, busy_interval: float = 0.001,
                 fallback: float = 1.0) -> None:
        self.session = session
        self.busy_interval = busy_interval
        self.fallback = fallback
        self._armed = False
        self._lock = threading.Lock()

    def wait(self, urgent: bool, wake: threading.Event) -> None:
        if urgent:
            wake.wait(self.busy_interval)
            return
        with self._lock:
            arm = not self._armed
            self._armed = True  # before arming: the watch may fire before query() returns
        if arm:
            try:
                self.session.query(c.changes_since(self._NEVER),
                                   watch=lambda _event: self._fired(wake))
                return  # read once more: the arming may have missed a change
            except Exception as error:  # no leader right now: poll slowly meanwhile
                with self._lock:
                    self._armed = False
                log.debug("arming a watch on the change feed: %s", error)
        wake.wait(self.fallback)

    def _fired(self, wake: threading.Event) -> None:
        with self._lock:
            self._armed = False
        wake.set()


class SessionFeed:
    """The feed read through a light session of its own.

    Reads are local reads of one peer: ``peer`` if given (e.g. the embedded one), else the
    leader, learned from a peer's status and looked up again every ``leader_check`` s or
    after a failure (the leader applies a change first, followers up to a heartbeat
    later). A waiting writer whose local reads stop making progress gets a linearizable
    read, which sees its acknowledged change whatever peer lags.
    """

    def __init__(
        self, peers: Sequence[str], peer: str | None = None, timeout: float = 1.0,
        leader_check: float = 1.0, **session_options: Any,
    ) -> None:
        self.session = LightSession(list(peers), timeout=timeout, **session_options)
        self.timeout = timeout
        self.leader_check = leader_check
        self._fixed = peer
        self._leader: str | None = None
        self._checked_at = float("-inf")
        self._turn = 0
        self._stalled = 0  # urgent reads in a row that brought nothing new

    def _peer(self) -> str:
        if self._fixed is not None:
            return self._fixed
        now = time.monotonic()
        if self._leader is None or now - self._checked_at > self.leader_check:
            self._checked_at = now
            peers = self.session.peers
            asked = peers[self._turn % len(peers)]
            try:
                leader = self.session.status(asked, timeout=self.timeout).get("leader")
                self._leader = leader if isinstance(leader, str) and leader else asked
            except Exception:  # that peer is down: ask the next one next time
                self._turn += 1
                self._leader = None
                return asked
        return self._leader

    def fetch(self, since: int, urgent: bool) -> dict[str, Any]:
        query = c.changes_since(since)
        if urgent and self._stalled >= 10:
            self._stalled = 0
            return self.session.query(query, timeout=self.timeout)  # type: ignore[no-any-return]
        try:
            answer: dict[str, Any] = self.session.query_local(
                query, peer=self._peer(), timeout=self.timeout
            )
        except Exception:
            self._leader = None
            self._turn += 1
            raise
        progressed = answer.get("changes") or "full" in answer
        self._stalled = 0 if progressed or not urgent else self._stalled + 1
        return answer

    def fetch_policy(self) -> dict[str, Any]:
        return self.session.query(c.policy(), timeout=self.timeout)  # type: ignore[no-any-return]

    def close(self) -> None:
        self.session.close()


class PolicySync:
    """Applies the change feed to one local model in a background thread."""

    def __init__(self, model: LocalModel, feed: ChangeFeed, waker: Waker | None = None) -> None:
        self.model = model
        self.feed = feed
        self.waker = waker or PollingWaker()
        self.applied_seq = 0
        self.reloads = 0  # whole-policy loads (the first one included)
        self.failed_changes = 0  # changes whose local apply raised (skipped, then reloaded)
        self._listeners: list[Listener] = []
        self._reload_listeners: list[Callable[[int], None]] = []
        self._progress = threading.Condition()
        self._waiters = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 10.0) -> PolicySync:
        """Load the whole policy (retrying until ``timeout``), then follow the feed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                answer = self.feed.fetch_policy()
                break
            except Exception as error:  # the cluster may still be electing a leader
                if time.monotonic() > deadline:
                    raise
                log.debug("loading the policy: %s; retrying", error)
                time.sleep(0.05)
        self._load(answer["seq"], answer["policy"])
        self._thread = threading.Thread(target=self._run, name="zraft-casbin-sync", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.feed.close()

    def add_listener(self, listener: Listener) -> None:
        """``listener(change)`` after each change is applied locally (in the sync thread)."""
        self._listeners.append(listener)

    def add_reload_listener(self, listener: Callable[[int], None]) -> None:
        """``listener(seq)`` after the whole policy was loaded at change ``seq``."""
        self._reload_listeners.append(listener)

    # ------------------------------------------------------------------ waiting

    def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        """Block until change ``seq`` is applied locally; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._progress:
            if self.applied_seq >= seq:
                return True
            self._waiters += 1
            self._wake.set()
            try:
                while self.applied_seq < seq:
                    left = deadline - time.monotonic()
                    if left <= 0 or self._stop.is_set():
                        return False
                    self._progress.wait(left)
                return True
            finally:
                self._waiters -= 1

    def reload(self) -> None:
        """Load the whole policy from the cluster now (what ``load_policy`` becomes)."""
        answer = self.feed.fetch_policy()
        self._load(answer["seq"], answer["policy"])

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before reading: a wake-up during the read is not lost
            try:
                more = self._step(self._waiters > 0)
            except Exception as error:  # the cluster may be unavailable for a while
                log.debug("reading the change feed: %s: %s", type(error).__name__, error)
                more = False
                self._stop.wait(0.05)
            if not more:
                self.waker.wait(self._waiters > 0, self._wake)

    def _step(self, urgent: bool) -> bool:
        answer = self.feed.fetch(self.applied_seq, urgent)
        if "full" in answer:
            log.info("the change feed no longer reaches change %d: reloading the policy",
                     self.applied_seq)
            if answer["seq"] < self.applied_seq:  # a peer further behind than we are
                self.reload()
            else:
                self._load(answer["seq"], answer["full"])
            return False
        for change in answer["changes"]:
            seq = change["seq"]
            if seq <= self.applied_seq:
                continue
            if seq != self.applied_seq + 1:  # cannot happen with a sound feed; recover anyway
                log.warning("change %d after %d: reloading the policy", seq, self.applied_seq)
                self.reload()
                return False
            try:
                self.model.apply(change)
            except Exception:
                # Never retried: the same change would fail the same way, forever, and hold
                # up every change after it. Skip it, then make the model whole again.
                self.failed_changes += 1
                log.exception("change %d could not be applied here: skipped; reloading", seq)
                self._reload_after_failure(seq)
                return False
            self._advance(seq)
            for listener in self._listeners:
                try:
                    listener(change)
                except Exception:
                    log.exception("a change listener failed on change %d", seq)
        return bool(answer.get("more"))

    def _reload_after_failure(self, seq: int) -> None:
        """Reload (which takes the model past ``seq``: a writer waiting for it then finds
        its change in place); if that fails too, go on from the next change anyway."""
        try:
            self.reload()
        except Exception:  # unreachable cluster, or the load failed too
            log.exception("reloading the policy after failed change %d", seq)
        self._advance(seq)

    def metrics(self) -> dict[str, int]:
        """Counters: how far this instance applied the feed, whole-policy loads, changes
        and rules skipped because the local model cannot hold them, changes that failed."""
        return {
            "applied_seq": self.applied_seq,
            "reloads": self.reloads,
            "skipped_changes": getattr(self.model, "skipped_changes", 0),
            "skipped_rules": getattr(self.model, "skipped_rules", 0),
            "failed_changes": self.failed_changes,
        }

    def _load(self, seq: int, policy: list[Any]) -> None:
        self.model.load(policy, seq)
        self.reloads += 1
        self._advance(seq, force=True)
        for listener in self._reload_listeners:
            with contextlib.suppress(Exception):
                listener(seq)

    def _advance(self, seq: int, force: bool = False) -> None:
        with self._progress:
            if force or seq > self.applied_seq:
                self.applied_seq = seq
            self._progress.notify_all()

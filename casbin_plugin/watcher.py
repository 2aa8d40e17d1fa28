"""A WatcherEx for PyCasbin whose notifications go through the Raft log.

A drop-in for a redis watcher: the application keeps its adapter (the database stays the
source of truth) and its enforcer; only the watcher changes::

    w = RaftWatcher(["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"])
    w.set_update_callback(default_update_callback(e, w))    # or your own callback(str)
    e.set_watcher(w)

Every notification the enforcer makes (``update``, ``update_for_add_policy``, ...,
``update_for_update_policies``) becomes one log entry; every subscribed instance receives
every notification exactly once, in log order, as a JSON string in the Go redis-watcher
format (``Method``, ``ID``, ``Sec``, ``Ptype``, ``NewRule``/``NewRules``,
``OldRule``/``OldRules``, ``FieldIndex``, ``FieldValues``). Its own notifications are
skipped (``ignore_self``). An instance that was cut off catches up from the log's change
feed when it can reach the cluster again; one that fell further behind than the feed
reaches gets an ``Update`` message (reload from the adapter). ``AsyncRaftWatcher`` is the
same for ``casbin.AsyncEnforcer``.

Every message is checked when it is published (each Method names the fields it needs; a
message lacking one is refused with ``CommandRejected``), so a subscriber is never handed
one it cannot act on. A callback that raises is reported (logged, and passed to the error
handler, see ``set_error_handler``) and delivery moves on: each message is delivered once,
in log order, and a failed callback is not run again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from casbin.persist.watcher_ex import WatcherEx
from casbin.persist.watcher_update import WatcherUpdatable

from zraft.backends.base import CommandRejected
from zraft.session import LightSession

from . import commands as c
from .commands import MESSAGE_METHODS
from .local_model import LocalModel
from .sync import ChangeFeed, PolicySync, SessionFeed, Waker

log = logging.getLogger(__name__)

__all__ = ["AsyncRaftWatcher", "RaftWatcher", "default_update_callback", "message"]

Callback = Callable[[str], None]
ErrorHandler = Callable[[BaseException, str, int], None]  # (error, message, its change seq)

UPDATE = "Update"
ADD = "UpdateForAddPolicy"
REMOVE = "UpdateForRemovePolicy"
REMOVE_FILTERED = "UpdateForRemoveFilteredPolicy"
SAVE = "UpdateForSavePolicy"
ADD_MANY = "UpdateForAddPolicies"
REMOVE_MANY = "UpdateForRemovePolicies"
UPDATE_ONE = "UpdateForUpdatePolicy"
UPDATE_MANY = "UpdateForUpdatePolicies"


def message(method: str, watcher_id: str, sec: str = "", ptype: str = "", **fields: Any
            ) -> dict[str, Any]:
    """A message with every Go redis-watcher field (zero values where unused)."""
    out: dict[str, Any] = {"Method": method, "ID": watcher_id, "Sec": sec, "Ptype": ptype,
                           "OldRule": None, "OldRules": None, "NewRule": None,
                           "NewRules": None, "FieldIndex": 0, "FieldValues": None}
    out.update(fields)
    return out


def _sectioned(name: str, args: tuple[Any, ...]) -> tuple[str, str, Any, Any]:
    if len(args) == 4:
        return args[0], args[1], args[2], args[3]
    if len(args) == 2:
        return "p", "p", args[0], args[1]
    raise TypeError(f"{name} takes (sec, ptype, old, new) or (old, new), not {len(args)} "
                    "arguments")


def _one_rule(params: tuple[Any, ...]) -> list[Any]:
    """pycasbin passes a single rule as one list argument; Go-style callers spread it.
    Values go as they are: one that is not a string is refused when published, never
    turned into one (peers would then hold a rule the caller does not)."""
    if len(params) == 1 and isinstance(params[0], list | tuple):
        return list(params[0])
    return list(params)


def _many_rules(rules: tuple[Any, ...]) -> list[list[Any]]:
    """pycasbin passes a batch as one list of rules; Go-style callers spread the rules."""
    if len(rules) == 1 and isinstance(rules[0], list | tuple) and all(
        isinstance(r, list | tuple) for r in rules[0]
    ):
        rules = tuple(rules[0])
    return [list(rule) if isinstance(rule, list | tuple) else [rule] for rule in rules]


class _Inbox:
    """What PolicySync drives: delivers ``message`` changes to the callback, in order."""

    def __init__(self, watcher: RaftWatcher) -> None:
        self.watcher = watcher
        self.loaded = False

    def load(self, policy: Any, seq: int | None = None) -> None:
        if self.loaded:  # fell behind the feed: messages were lost to us, so reload
            self.watcher._deliver(message(UPDATE, ""), seq or 0)
        self.loaded = True

    def apply(self, change: dict[str, Any]) -> None:
        if change.get("op") == "message":
            self.watcher._deliver(change["message"], change.get("seq", 0))


class RaftWatcher(WatcherEx, WatcherUpdatable):  # type: ignore[misc]
    """Watcher + WatcherEx + WatcherUpdatable over zraft (see the module docstring)."""

    def __init__(
        self,
        peers: Sequence[str] = (),
        *,
        local_id: str | None = None,
        ignore_self: bool = True,
        waker: Waker | None = None,
        start_timeout: float = 20.0,
        feed: ChangeFeed | None = None,
        write: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        on_error: ErrorHandler | None = None,
        **session_options: Any,
    ) -> None:
        """``peers``: the cluster. ``feed`` and ``write`` replace the sessions made for them
        (an in-process backend, say). ``on_error``: see ``set_error_handler``."""
        self.local_id = local_id or uuid.uuid4().hex
        self.ignore_self = ignore_self
        self.delivered = 0
        self.failed_callbacks = 0  # deliveries whose callback raised (not run again)
        self._on_error = on_error
        self.last_published = 0  # the change counter of this watcher's last notification
        self._callback: Callback | None = None
        self._lock = threading.Lock()
        self._session: LightSession | None = None
        if write is None:
            self._session = LightSession(list(peers), **session_options)
            write = self._session.write
        self._write = write
        if feed is None:
            feed = SessionFeed(list(peers), **session_options)
        self._sync = PolicySync(_Inbox(self), feed, waker)  # type: ignore[arg-type]
        try:
            self._sync.start(timeout=start_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ Watcher

    def set_update_callback(self, callback: Callback) -> None:
        with self._lock:
            self._callback = callback

    def set_error_handler(self, handler: ErrorHandler | None) -> None:
        """``handler(error, message, seq)`` is called (in the delivering thread) when the
        update callback raises on a message; delivery then moves on to the next one."""
        with self._lock:
            self._on_error = handler

    def update(self) -> None:
        self._publish(message(UPDATE, self.local_id))

    def close(self) -> None:
        self._sync.stop()
        if self._session is not None:
            self._session.close()

    # ------------------------------------------------------------------ WatcherEx

    def update_for_add_policy(self, sec: str, ptype: str, *params: Any) -> None:
        self._publish(message(ADD, self.local_id, sec, ptype, NewRule=_one_rule(params)))

    def update_for_remove_policy(self, sec: str, ptype: str, *params: Any) -> None:
        self._publish(message(REMOVE, self.local_id, sec, ptype, NewRule=_one_rule(params)))

    def update_for_remove_filtered_policy(
        self, sec: str, ptype: str, field_index: int, *field_values: str
    ) -> None:
        self._publish(message(REMOVE_FILTERED, self.local_id, sec, ptype,
                              FieldIndex=int(field_index),
                              FieldValues=[str(v) for v in field_values]))

    def update_for_save_policy(self, model: Any) -> None:
        self._publish(message(SAVE, self.local_id))

    def update_for_add_policies(self, sec: str, ptype: str, *rules: Any) -> None:
        self._publish(message(ADD_MANY, self.local_id, sec, ptype, NewRules=_many_rules(rules)))

    def update_for_remove_policies(self, sec: str, ptype: str, *rules: Any) -> None:
        self._publish(message(REMOVE_MANY, self.local_id, sec, ptype,
                              NewRules=_many_rules(rules)))

    def update_for_add_policies_ex(self, sec: str, ptype: str, *rules: Any) -> None:
        """pycasbin's ``add_policies_ex`` asks for this (else it sends ``update()``, a reload
        everywhere): the receivers add the rules they lack, which is what ``_ex`` did."""
        self.update_for_add_policies(sec, ptype, *rules)

    # ------------------------------------------------------------------ WatcherUpdatable

    def update_for_update_policy(self, *args: Any) -> None:
        """``(sec, ptype, old_rule, new_rule)`` (Go's form) or pycasbin's interface form
        ``(old_rule, new_rule)``, which names no section: an ``update_policy``, so ``p``."""
        sec, ptype, old_rule, new_rule = _sectioned("update_for_update_policy", args)
        self._publish(message(UPDATE_ONE, self.local_id, sec, ptype, OldRule=list(old_rule),
                              NewRule=list(new_rule)))

    def update_for_update_policies(self, *args: Any) -> None:
        """``(sec, ptype, old_rules, new_rules)`` or ``(old_rules, new_rules)`` (``p``)."""
        sec, ptype, old_rules, new_rules = _sectioned("update_for_update_policies", args)
        self._publish(message(UPDATE_MANY, self.local_id, sec, ptype,
                              OldRules=[list(r) for r in old_rules],
                              NewRules=[list(r) for r in new_rules]))

    # ------------------------------------------------------------------ plumbing

    @property
    def applied_seq(self) -> int:
        """How far this watcher has read the log."""
        return self._sync.applied_seq

    def wait_for(self, seq: int, timeout: float = 10.0) -> bool:
        return self._sync.wait_for(seq, timeout)

    def _publish(self, msg: dict[str, Any]) -> int:
        command = c.notify(msg)  # checked here: a malformed message is refused, not sent
        result = self._write(command)
        self.last_published = int(result["seq"])
        return self.last_published

    def _deliver(self, msg: dict[str, Any], seq: int) -> None:
        if self.ignore_self and msg.get("ID") == self.local_id:
            return
        with self._lock:
            callback, on_error = self._callback, self._on_error
        if callback is None:
            return
        self.delivered += 1
        raw = json.dumps(msg)
        try:
            callback(raw)
        except Exception as error:
            # Not raised on: the feed would deliver this message again and again, and
            # nothing after it. Reported once; the next message is delivered next.
            self.failed_callbacks += 1
            log.exception("the watcher callback failed on message %d: %.200s", seq, raw)
            if on_error is not None:
                try:
                    on_error(error, raw, seq)
                except Exception:
                    log.exception("the watcher error handler failed on message %d", seq)


class AsyncRaftWatcher(RaftWatcher):
    """The same for ``casbin.AsyncEnforcer``: its notifications are awaited."""

    async def update(self) -> None:  # type: ignore[override]
        await asyncio.to_thread(RaftWatcher.update, self)

    async def update_for_add_policy(self, sec: str, ptype: str, *params: Any) -> None:  # type: ignore[override]
        await asyncio.to_thread(RaftWatcher.update_for_add_policy, self, sec, ptype, *params)

    async def update_for_remove_policy(self, sec: str, ptype: str, *params: Any) -> None:  # type: ignore[override]
        await asyncio.to_thread(RaftWatcher.update_for_remove_policy, self, sec, ptype, *params)

    async def update_for_remove_filtered_policy(  # type: ignore[override]
        self, sec: str, ptype: str, field_index: int, *field_values: str
    ) -> None:
        await asyncio.to_thread(RaftWatcher.update_for_remove_filtered_policy, self, sec, ptype,
                                field_index, *field_values)

    async def update_for_save_policy(self, model: Any) -> None:  # type: ignore[override]
        await asyncio.to_thread(RaftWatcher.update_for_save_policy, self, model)

    async def update_for_add_policies(self, sec: str, ptype: str, *rules: Any) -> None:  # type: ignore[override]
        await asyncio.to_thread(RaftWatcher.update_for_add_policies, self, sec, ptype, *rules)

    async def update_for_remove_policies(self, sec: str, ptype: str, *rules: Any) -> None:  # type: ignore[override]
        await asyncio.to_thread(RaftWatcher.update_for_remove_policies, self, sec, ptype, *rules)


# --------------------------------------------------------------------------- the callback


def default_update_callback(
    enforcer: Any, watcher: RaftWatcher | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
) -> Callback:
    """A callback applying each message to ``enforcer`` incrementally (no reload; each rule
    found as casbin's own model finds it): what Go redis-watcher's default callback does
    with the ``Self*`` methods. ``Update``
    and ``UpdateForSavePolicy`` reload from the adapter (for an AsyncEnforcer, on
    ``loop``). ``watcher`` is accepted for compatibility and not needed: the enforcer's own
    calls change its model too, so the callback keeps no positions that they could move
    (``LocalModel(shared=True)``). A message it cannot act on raises ``ValueError``, which
    the watcher reports."""
    model = LocalModel(enforcer, shared=True)

    def reload() -> None:
        result = enforcer.load_policy()
        if asyncio.iscoroutine(result):
            if loop is None:
                result.close()
                log.error("an AsyncEnforcer needs default_update_callback(..., loop=...)")
                return
            asyncio.run_coroutine_threadsafe(result, loop).result(timeout=60)

    def callback(raw: str) -> None:
        try:
            msg = json.loads(raw)
            method = msg["Method"]
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"a malformed watcher message ({error}): {raw[:200]}") from None
        if method in (UPDATE, SAVE):
            reload()
            return
        if method not in MESSAGE_METHODS:  # from a newer publisher: reloading is safe
            log.warning("unknown watcher method %r: reloading", method)
            reload()
            return
        try:
            c.notify(msg)  # the publisher's check (a message of an older client lacks it)
        except CommandRejected as error:
            raise ValueError(f"a malformed watcher message ({error}): {raw[:200]}") from None
        sec, ptype = msg["Sec"], msg["Ptype"]
        change: dict[str, Any]
        if method in (ADD, ADD_MANY, REMOVE, REMOVE_MANY):
            rules = [msg["NewRule"]] if method in (ADD, REMOVE) else msg["NewRules"]
            op = "add" if method in (ADD, ADD_MANY) else "remove"
            change = {"op": op, "sec": sec, "ptype": ptype, "rules": rules or []}
        elif method == REMOVE_FILTERED:
            with model.reading():
                matched = model.core.model.get_filtered_policy(
                    sec, ptype, msg.get("FieldIndex") or 0, *(msg.get("FieldValues") or []))
            change = {"op": "remove", "sec": sec, "ptype": ptype,
                      "rules": [list(rule) for rule in matched]}
        else:
            old = [msg["OldRule"]] if method == UPDATE_ONE else msg["OldRules"]
            new = [msg["NewRule"]] if method == UPDATE_ONE else msg["NewRules"]
            change = {"op": "update", "sec": sec, "ptype": ptype, "rules": new, "old": old}
        model.apply(change)

    return callback

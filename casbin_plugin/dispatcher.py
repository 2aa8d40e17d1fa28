"""PyCasbin's Dispatcher, backed by the Raft log; and Go's ``SetDispatcher`` for PyCasbin.

``Dispatcher`` implements ``casbin.persist.dispatcher.Dispatcher`` (plus Go's
``update_policies`` and ``update_filtered_policies``): each call is one write through the
cluster, and returns once the change is applied on this instance (its ``PolicySync`` has
reached the change counter the write answered). Batches follow Go's ``*Self`` semantics:
the rules that can be added or removed are.

``set_dispatcher(enforcer, dispatcher)`` does what Go's ``e.SetDispatcher(d)`` does: every
management call of the enforcer (``add_policy``, ``remove_filtered_policy``, the grouping
and named variants, ``update_policy``, ``clear_policy``, and the RBAC helpers built on
them) is sent to the dispatcher instead of changing the local model, and answers what
casbin would have answered. ``load_policy`` reloads from the cluster.

A rule the enforcer's model cannot hold is refused before it is sent, with the exception
plain PyCasbin raises for it (``shape.check_rules``): sent, it would break every instance.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from casbin.persist.dispatcher import Dispatcher as CasbinDispatcher
from casbin.synced_enforcer import SyncedEnforcer

from zraft.session import ZraftError

from . import commands as c
from .local_model import core_enforcer
from .shape import check_rules
from .sync import PolicySync

log = logging.getLogger(__name__)

__all__ = ["DispatchTimeout", "Dispatcher", "set_dispatcher"]

Writer = Callable[[dict[str, Any]], dict[str, Any]]


class DispatchTimeout(ZraftError):
    """The change was committed but this instance did not apply it in time."""


class Dispatcher(CasbinDispatcher):  # type: ignore[misc]
    """Sends policy changes through the cluster; waits until this instance applied them.

    ``write(command) -> result`` sends one command (a light session's ``write``);
    ``sync`` is the instance's ``PolicySync`` (None: do not wait, e.g. a write-only tool).
    """

    def __init__(
        self,
        write: Writer,
        sync: PolicySync | None = None,
        *,
        write_temporary: Writer | None = None,
        apply_timeout: float = 10.0,
    ) -> None:
        self._write = write
        self._write_temporary = write_temporary
        self.sync = sync
        self.apply_timeout = apply_timeout
        self.enforcer: Any = None

    # ------------------------------------------------------------------ casbin's interface

    def add_policies(self, sec: str, ptype: str, rules: Sequence[Sequence[str]]) -> list[Any]:
        self.check(sec, ptype, rules)
        return self.dispatch(c.add(sec, ptype, rules, ex=True))["rules"]  # type: ignore[no-any-return]

    def remove_policies(self, sec: str, ptype: str, rules: Sequence[Sequence[str]]) -> list[Any]:
        return self.dispatch(c.remove(sec, ptype, rules, ex=True))["rules"]  # type: ignore[no-any-return]

    def remove_filtered_policy(
        self, sec: str, ptype: str, field_index: int, field_values: Sequence[str]
    ) -> list[Any]:
        command = c.remove_filtered(sec, ptype, field_index, field_values)
        return self.dispatch(command)["rules"]  # type: ignore[no-any-return]

    def clear_policy(self) -> None:
        self.dispatch(c.clear())

    def update_policy(
        self, sec: str, ptype: str, old_rule: Sequence[str], new_rule: Sequence[str]
    ) -> bool:
        self.check(sec, ptype, [new_rule])
        return bool(self.dispatch(c.update(sec, ptype, [old_rule], [new_rule]))["changed"])

    def update_policies(
        self,
        sec: str,
        ptype: str,
        old_rules: Sequence[Sequence[str]],
        new_rules: Sequence[Sequence[str]],
    ) -> bool:
        self.check(sec, ptype, new_rules)
        return bool(self.dispatch(c.update(sec, ptype, old_rules, new_rules))["changed"])

    def update_filtered_policies(
        self,
        sec: str,
        ptype: str,
        new_rules: Sequence[Sequence[str]],
        field_index: int,
        field_values: Sequence[str],
    ) -> list[Any]:
        self.check(sec, ptype, new_rules)
        command = c.update_filtered(sec, ptype, new_rules, field_index, field_values)
        return self.dispatch(command)["old"]  # type: ignore[no-any-return]

    def set_enforcer(self, enforcer: Any) -> None:
        self.enforcer = enforcer

    def check(self, sec: str, ptype: str, rules: Sequence[Sequence[Any]]) -> None:
        """Raise what PyCasbin raises for rules the enforcer's model cannot hold (no
        enforcer set: nothing to check against; the backend still checks the declared
        shape)."""
        if self.enforcer is not None:
            check_rules(core_enforcer(self.enforcer).model, sec, ptype, rules)

    # ------------------------------------------------------------------ zraft's additions

    def add_temporary_policies(
        self, sec: str, ptype: str, rules: Sequence[Sequence[str]]
    ) -> list[Any]:
        """Rules that vanish from every instance when this instance's session ends."""
        if self._write_temporary is None:
            raise RuntimeError("this dispatcher has no session for temporary rules")
        self.check(sec, ptype, rules)
        command = c.add(sec, ptype, rules, ex=True)
        result = self._write_temporary(command)
        self._wait(result)
        return result["rules"]  # type: ignore[no-any-return]

    def dispatch(self, command: dict[str, Any]) -> dict[str, Any]:
        """One command through the log; returns its result once applied here."""
        result = self._write(command)
        self._wait(result)
        return result

    def _wait(self, result: dict[str, Any]) -> None:
        if self.sync is not None and not self.sync.wait_for(result["seq"], self.apply_timeout):
            raise DispatchTimeout(
                f"change {result['seq']} committed but not applied here within "
                f"{self.apply_timeout}s"
            )


# --------------------------------------------------------------------------- wiring

# The enforcer's write methods that exist only to be routed elsewhere; RBAC helpers
# (add_role_for_user, delete_user, ...) call these on the same enforcer, so they follow.
_MANAGEMENT = (
    "add_policy", "add_policies", "add_policies_ex", "add_named_policy", "add_named_policies",
    "add_named_policies_ex", "remove_policy", "remove_policies", "remove_filtered_policy",
    "remove_named_policy", "remove_named_policies", "remove_filtered_named_policy",
    "update_policy", "update_policies", "update_named_policy", "update_named_policies",
    "update_filtered_policies", "update_filtered_named_policies",
    "add_grouping_policy", "add_grouping_policies", "add_grouping_policies_ex",
    "add_named_grouping_policy", "add_named_grouping_policies",
    "add_named_grouping_policies_ex", "remove_grouping_policy", "remove_grouping_policies",
    "remove_filtered_grouping_policy", "remove_named_grouping_policy",
    "remove_named_grouping_policies", "remove_filtered_named_grouping_policy",
    "update_grouping_policy", "update_named_grouping_policy", "clear_policy", "load_policy",
)
# A SyncedEnforcer's own versions take its write lock and call the inner enforcer; while
# a call waits for its change, the sync needs that lock: the outer methods must not hold it.
_RBAC = (
    "add_role_for_user", "delete_role_for_user", "delete_roles_for_user", "delete_user",
    "delete_role", "delete_permission", "add_permission_for_user",
    "delete_permission_for_user", "delete_permissions_for_user",
    "add_role_for_user_in_domain", "delete_roles_for_user_in_domain",
)


def _is_rule(rule: Any) -> bool:
    return bool(rule) and all(isinstance(value, str) for value in rule)


def _rule(params: tuple[Any, ...]) -> list[str]:
    if len(params) == 1 and isinstance(params[0], list):
        return list(params[0])
    return list(params)


class _NoRules:
    policy: list[list[str]] = []


_NO_RULES = _NoRules()


class _Routes:
    """The routed management methods of one enforcer (bound to its core enforcer)."""

    def __init__(self, core: Any, dispatcher: Dispatcher, reload: Callable[[], None]) -> None:
        self.core = core
        self.d = dispatcher
        self.reload = reload

    def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        return self.d.dispatch(command)

    def _check_priority(self, ptype: str, old: Sequence[Sequence[str]],
                        new: Sequence[Sequence[str]]) -> None:
        assertion = (self.core.model["p"] or {}).get(ptype)
        index = assertion.priority_index if assertion is not None else -1
        if index >= 0 and any(o[index] != n[index] for o, n in zip(old, new, strict=False)):
            raise Exception("New rule should have the same priority with old rule.")

    # -------------------------------------------------------------- generic forms

    def add_one(self, sec: str, ptype: str, *params: Any) -> bool:
        rule = _rule(params)
        self.d.check(sec, ptype, [rule])
        return bool(self._send(c.add(sec, ptype, [rule]))["changed"])

    def add_many(self, sec: str, ptype: str, rules: Sequence[Sequence[str]], ex: bool) -> bool:
        if not rules:
            return not ex  # casbin: nothing to add is done, but not "all of them new"
        self.d.check(sec, ptype, rules)
        return bool(self._send(c.add(sec, ptype, rules, ex=ex))["changed"])

    def remove_one(self, sec: str, ptype: str, *params: Any) -> bool:
        return self.remove_many(sec, ptype, [_rule(params)])

    def remove_many(self, sec: str, ptype: str, rules: Sequence[Sequence[str]]) -> bool:
        if not rules:
            return True  # casbin: nothing to remove is done
        if not all(_is_rule(rule) for rule in rules):
            return False  # casbin: not found (every rule held is a list of str)
        return bool(self._send(c.remove(sec, ptype, rules))["changed"])

    def remove_filtered(self, sec: str, ptype: str, field_index: int, *values: str) -> Any:
        field_index = self._filter_start(sec, ptype, field_index, values)
        while len(values) > 1 and values[-1] == "":  # casbin skips empty values, so a
            values = values[:-1]  # trailing one may lie past a rule's end
        if not all(isinstance(value, str) for value in values):
            return [] if sec == "g" else False  # casbin: nothing matches
        if sec == "g" and not values:
            return []  # casbin removes no grouping rule for an empty filter (all policies)
        result = self._send(c.remove_filtered(sec, ptype, field_index, values))
        # casbin answers a bool for policies and the removed rules for grouping policies
        return result["rules"] if sec == "g" else bool(result["changed"])

    def update(self, sec: str, ptype: str, old: Sequence[Sequence[str]],
               new: Sequence[Sequence[str]]) -> bool:
        if len(old) != len(new):
            return False  # casbin's answer for lists of different lengths
        if not old:
            return True  # nothing to update is done
        if (self.core.model[sec] or {}).get(ptype) is None:
            return False  # casbin's update answers False for a ptype the model lacks
        if sec == "p":
            self._check_priority(ptype, old, new)
        self.d.check(sec, ptype, new)
        if not all(_is_rule(rule) for rule in old):
            return False  # casbin: the old rule is not found
        return bool(self._send(c.update(sec, ptype, old, new))["changed"])

    def _filter_start(self, sec: str, ptype: str, field_index: Any, values: Sequence[Any]) -> int:
        """The first field a filter looks at, as casbin reads ``field_index``: an int (else
        casbin's own TypeError), counted from the end when negative (Python's indexing;
        a filter that would wrap past the last field is refused), and past a rule's end
        casbin's IndexError."""
        if type(field_index) is not int:
            raise TypeError(f"field_index must be an int, not {type(field_index).__name__}")
        rules = ((self.core.model[sec] or {}).get(ptype) or _NO_RULES).policy
        if field_index < 0 and rules:
            width = len(rules[0])
            if field_index + len(values) > 0 or any(len(rule) != width for rule in rules):
                raise ValueError("a negative field_index must not reach past the last field")
            field_index += width
        reach = max((i + 1 for i, value in enumerate(values) if value != ""), default=0)
        if reach and any(len(rule) < field_index + reach for rule in rules):
            raise IndexError("list index out of range")  # casbin reads only non-empty ones
        return max(field_index, 0)

    def update_filtered(self, sec: str, ptype: str, new_rules: Sequence[Sequence[str]],
                        field_index: int, *values: str) -> bool:
        self.d.check(sec, ptype, new_rules)
        result = self._send(c.update_filtered(sec, ptype, new_rules, field_index, values))
        return bool(result["changed"]) and len(new_rules) != 0  # casbin's answer

    def methods(self) -> dict[str, Callable[..., Any]]:
        """Every routed method by name, with casbin's signatures."""
        m: dict[str, Callable[..., Any]] = {}
        for sec, word in (("p", "policy"), ("g", "grouping_policy")):
            plural = "policies" if sec == "p" else "grouping_policies"
            m[f"add_{word}"] = lambda *p, s=sec: self.add_one(s, s, *p)
            m[f"add_named_{word}"] = lambda t, *p, s=sec: self.add_one(s, t, *p)
            m[f"add_{plural}"] = lambda r, s=sec: self.add_many(s, s, r, False)
            m[f"add_named_{plural}"] = lambda t, r, s=sec: self.add_many(s, t, r, False)
            m[f"add_{plural}_ex"] = lambda r, s=sec: self.add_many(s, s, r, True)
            m[f"add_named_{plural}_ex"] = lambda t, r, s=sec: self.add_many(s, t, r, True)
            m[f"remove_{word}"] = lambda *p, s=sec: self.remove_one(s, s, *p)
            m[f"remove_named_{word}"] = lambda t, *p, s=sec: self.remove_one(s, t, *p)
            m[f"remove_{plural}"] = lambda r, s=sec: self.remove_many(s, s, r)
            m[f"remove_named_{plural}"] = lambda t, r, s=sec: self.remove_many(s, t, r)
            m[f"remove_filtered_{word}"] = lambda i, *v, s=sec: self.remove_filtered(s, s, i, *v)
            m[f"remove_filtered_named_{word}"] = (
                lambda t, i, *v, s=sec: self.remove_filtered(s, t, i, *v))
            m[f"update_{word}"] = lambda o, n, s=sec: self.update(s, s, [o], [n])
            m[f"update_named_{word}"] = lambda t, o, n, s=sec: self.update(s, t, [o], [n])
        m["update_policies"] = lambda o, n: self.update("p", "p", o, n)
        m["update_named_policies"] = lambda t, o, n: self.update("p", t, o, n)
        m["update_filtered_policies"] = (
            lambda r, i, *v: self.update_filtered("p", "p", r, i, *v))
        m["update_filtered_named_policies"] = (
            lambda t, r, i, *v: self.update_filtered("p", t, r, i, *v))
        m["clear_policy"] = self.clear
        m["load_policy"] = self.reload
        return m

    def clear(self) -> None:
        self._send(c.clear())


def set_dispatcher(enforcer: Any, dispatcher: Dispatcher) -> None:
    """Go's ``e.SetDispatcher(d)`` for PyCasbin: route the enforcer's management calls
    through ``dispatcher`` (see the module docstring). Works on ``casbin.Enforcer``,
    ``SyncedEnforcer`` and ``DistributedEnforcer``; a plain enforcer's ``enforce`` also
    takes the lock its dispatcher's sync holds while applying a change."""
    dispatcher.set_enforcer(enforcer)
    core = core_enforcer(enforcer)
    sync = dispatcher.sync
    reload = sync.reload if sync is not None else (lambda: None)
    routes = _Routes(core, dispatcher, reload).methods()
    for name in _MANAGEMENT:
        setattr(core, name, routes[name])
    if isinstance(enforcer, SyncedEnforcer):
        for name in _MANAGEMENT:  # the update methods too, which SyncedEnforcer lacks
            setattr(enforcer, name, routes[name])
        for name in _RBAC:
            if hasattr(enforcer, name):
                setattr(enforcer, name, getattr(core, name))
    elif sync is not None:
        _guard_enforce(enforcer, sync.model.lock)


def _guard_enforce(enforcer: Any, lock: threading.RLock) -> None:
    """A plain enforcer's enforce holds the model still while it reads."""
    for name in ("enforce", "enforce_ex"):
        original = getattr(enforcer, name)

        def guarded(*rvals: Any, _original: Callable[..., Any] = original) -> Any:
            with lock:
                return _original(*rvals)

        setattr(enforcer, name, guarded)

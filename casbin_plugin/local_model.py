"""Applying replicated changes to one enforcer's in-memory model, at O(1) per rule.

PyCasbin's ``*_self`` methods check each rule with a list scan (``rule in policy``), so one
change costs O(rules). Here a position index (rule -> its slot in the assertion's list)
makes adding, removing and updating a rule O(1): a removal moves the last rule into the
freed slot. That changes the order of the list, which matters to casbin only for the
priority effects (``priority(p_eft)``, ``subjectPriority``); for those ptypes the list
keeps casbin's order (sorted insertion, order-preserving removal in C).

Role links follow every grouping change incrementally, through the enforcer's role
managers (and conditional role managers), as casbin's own incremental path does.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from casbin.model.policy_op import PolicyOp
from casbin.synced_enforcer import SyncedEnforcer

log = logging.getLogger(__name__)

Rule = tuple[str, ...]


def core_enforcer(enforcer: Any) -> Any:
    """The enforcer that holds the model: a SyncedEnforcer wraps one in ``_e``."""
    return enforcer._e if isinstance(enforcer, SyncedEnforcer) else enforcer


def _priority_key(index: int) -> Any:
    def key(rule: list[str]) -> Any:
        value = rule[index]
        return int(value) if value.isdigit() else value  # casbin's own sort key

    return key


class LocalModel:
    """The model of one local enforcer, changed only through :meth:`apply` and :meth:`load`.

    ``lock`` is held while changing it: the SyncedEnforcer's write lock, or for a plain
    enforcer a lock that :func:`guard_enforce` also takes around ``enforce``.
    """

    def __init__(self, enforcer: Any) -> None:
        self.enforcer = enforcer
        self.core = core_enforcer(enforcer)
        if isinstance(enforcer, SyncedEnforcer):
            self.lock: Any = enforcer._wl
        else:
            self.lock = threading.RLock()
        self._positions: dict[tuple[str, str], dict[Rule, int]] = {}
        self._model: Any = None

    # ------------------------------------------------------------------ whole policy

    def load(self, policy: Iterable[list[Any]]) -> None:
        """Replace the whole policy (``[[sec, ptype, rules], ...]``) and rebuild role links."""
        with self.lock:
            model = self.core.model
            model.clear_policy()
            for sec, ptype, rules in policy:
                assertion = self._assertion(model, sec, ptype)
                if assertion is not None:
                    assertion.policy = [list(rule) for rule in rules]
            model.sort_policies_by_subject_hierarchy()
            model.sort_policies_by_priority()
            self._rebuild_positions(model)
            self._rebuild_role_links()

    def _rebuild_positions(self, model: Any) -> None:
        self._model = model
        self._positions = {}
        for sec in ("p", "g"):
            for ptype, assertion in (model[sec] or {}).items():
                self._positions[(sec, ptype)] = {
                    tuple(rule): i for i, rule in enumerate(assertion.policy)
                }

    def _rebuild_role_links(self) -> None:
        core = self.core
        if not core.auto_build_role_links:
            return
        for rm in core.rm_map.values():
            rm.clear()
        for crm in core.cond_rm_map.values():
            crm.clear()
        if core.rm_map:
            core.model.build_role_links(core.rm_map)
        if core.cond_rm_map:
            core.model.build_conditional_role_links(core.cond_rm_map)

    # ------------------------------------------------------------------ one change

    def apply(self, change: dict[str, Any]) -> None:
        """Apply one change of the feed (see ``CasbinBackend``): add, remove, update, clear."""
        with self.lock:
            model = self.core.model
            if model is not self._model:  # someone replaced the model (load_model, say)
                self._rebuild_positions(model)
            op = change["op"]
            if op == "message":  # a watcher notification: not a policy change
                return
            if op == "clear":
                model.clear_policy()
                self._rebuild_positions(model)
                self._rebuild_role_links()
                return
            sec, ptype = change["sec"], change["ptype"]
            assertion = self._assertion(model, sec, ptype)
            if assertion is None:
                return
            if len(assertion.policy) != len(self._positions.get((sec, ptype), ())):
                self._rebuild_positions(model)  # casbin changed the list itself
            rules = [tuple(rule) for rule in change["rules"]]
            if op == "add":
                self._add(sec, ptype, assertion, rules)
                self._links(sec, ptype, PolicyOp.Policy_add, rules)
            elif op == "remove":
                self._remove(sec, ptype, assertion, rules)
                self._links(sec, ptype, PolicyOp.Policy_remove, rules)
            elif op == "update":
                old = [tuple(rule) for rule in change["old"]]
                self._update(sec, ptype, assertion, old, rules)
                self._links(sec, ptype, PolicyOp.Policy_remove, old)
                self._links(sec, ptype, PolicyOp.Policy_add, rules)
            else:
                log.warning("ignoring a change with unknown op %r", op)
                return
            if sec == "p" and self._subject_priority():
                model.sort_policies_by_subject_hierarchy()
                self._rebuild_positions(model)

    def mark_stale(self) -> None:
        """The enforcer changed its own model (a WatcherEx instance's local calls): the
        position index is rebuilt before the next change is applied."""
        self._model = None

    def _assertion(self, model: Any, sec: str, ptype: str) -> Any:
        assertion = (model[sec] or {}).get(ptype)
        if assertion is None:
            log.warning("the local model has no %s/%s: its rules are ignored here", sec, ptype)
        return assertion

    def _ordered(self, sec: str, assertion: Any) -> bool:
        """Does list order change enforce results for this ptype?"""
        return sec == "p" and (assertion.priority_index >= 0 or "riority" in self._effect())

    def _effect(self) -> str:
        section = self.core.model["e"]  # Model.__getitem__ answers None when absent
        return str(section["e"].value) if section else ""

    def _subject_priority(self) -> bool:
        return "subjectPriority" in self._effect()

    def _add(self, sec: str, ptype: str, assertion: Any, rules: list[Rule]) -> None:
        positions = self._positions.setdefault((sec, ptype), {})
        policy = assertion.policy
        ordered = self._ordered(sec, assertion)
        for rule in rules:
            if rule in positions:
                continue
            if ordered and assertion.priority_index >= 0:
                key = _priority_key(assertion.priority_index)
                at = bisect.bisect_right(policy, key(list(rule)), key=key)
                policy.insert(at, list(rule))
                positions.clear()  # slots after ``at`` moved; rebuilt below
            else:
                positions[rule] = len(policy)
                policy.append(list(rule))
        if ordered:
            self._reindex(positions, policy)

    def _remove(self, sec: str, ptype: str, assertion: Any, rules: list[Rule]) -> None:
        positions = self._positions.setdefault((sec, ptype), {})
        policy = assertion.policy
        if self._ordered(sec, assertion):
            slots = [positions.pop(rule) for rule in rules if rule in positions]
            for slot in sorted(slots, reverse=True):  # later slots first: earlier ones stay
                del policy[slot]
            self._reindex(positions, policy)
            return
        for rule in rules:
            slot = positions.pop(rule, None)
            if slot is None:
                continue
            last = policy.pop()
            if slot < len(policy):
                policy[slot] = last
                positions[tuple(last)] = slot

    def _update(
        self, sec: str, ptype: str, assertion: Any, old: list[Rule], new: list[Rule]
    ) -> None:
        positions = self._positions.setdefault((sec, ptype), {})
        slots = [(positions.pop(o, None), n) for o, n in zip(old, new, strict=True)]
        for slot, rule in slots:  # in place, as casbin's update does
            if slot is not None:
                assertion.policy[slot] = list(rule)
                positions[rule] = slot

    @staticmethod
    def _reindex(positions: dict[Rule, int], policy: list[list[str]]) -> None:
        positions.clear()
        positions.update((tuple(rule), i) for i, rule in enumerate(policy))

    def _links(self, sec: str, ptype: str, op: PolicyOp, rules: list[Rule]) -> None:
        core = self.core
        if sec != "g" or not rules or not core.auto_build_role_links:
            return
        as_lists = [list(rule) for rule in rules]
        try:
            rm = core.rm_map.get(ptype)
            if rm is not None:
                core.model.build_incremental_role_links(rm, op, "g", ptype, as_lists)
            crm = core.cond_rm_map.get(ptype)
            if crm is not None:
                core.model.build_incremental_conditional_role_links(crm, op, "g", ptype, as_lists)
        except (RuntimeError, TypeError) as error:  # a link casbin cannot represent
            log.warning("role links for %s: %s; rebuilding them all", ptype, error)
            self._rebuild_role_links()

    # ------------------------------------------------------------------ reading

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Hold the model still (for a plain enforcer's enforce)."""
        if isinstance(self.enforcer, SyncedEnforcer):
            with self.enforcer._rl:
                yield
        else:
            with self.lock:
                yield

    def rules(self) -> dict[tuple[str, str], set[Rule]]:
        """Every rule by (sec, ptype), e.g. to compare instances."""
        with self.reading():
            return self.rules_held()

    def rules_held(self) -> dict[tuple[str, str], set[Rule]]:
        """``rules()`` for a caller already inside ``reading()`` (casbin's read lock is not
        reentrant: a second acquire waits behind a waiting writer, forever)."""
        out: dict[tuple[str, str], set[Rule]] = {}
        for sec in ("p", "g"):
            for ptype, assertion in (self.core.model[sec] or {}).items():
                if assertion.policy:
                    out[(sec, ptype)] = {tuple(rule) for rule in assertion.policy}
        return out

"""Applying replicated changes to one enforcer's in-memory model.

Two ways, chosen by who else changes the model:

* **owned** (the Dispatcher path: the enforcer's management calls are routed through the
  cluster, so only this class changes the model). PyCasbin's ``*_self`` methods check each
  rule with a list scan (``rule in policy``), so one change costs O(rules); here a position
  index (rule -> its slot in the assertion's list) makes adding, removing and updating a
  rule O(1): a removal moves the last rule into the freed slot. That changes the order of
  the list, which matters to casbin only for the priority effects (``priority(p_eft)``,
  ``subjectPriority``); for those ptypes the list keeps casbin's order (sorted insertion,
  order-preserving removal in C). The index is checked before it is trusted: a list that
  was replaced, changed length, or no longer holds a rule at the slot the index names is
  indexed again.
* **shared** (the WatcherEx path: the enforcer's own management calls change its model
  through PyCasbin's code, which moves positions as it likes). No position is kept: each
  rule is found the way PyCasbin's own model finds it (a scan of that ptype's list), and
  the list keeps PyCasbin's order.

Either way a rule the model cannot hold (a ptype it lacks, a wrong field count, a value
that is no str; see ``shape.py``) is skipped, the same on every instance sharing the model:
logged once with its change's number and counted (``skipped_changes``, ``skipped_rules``).

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

from .shape import rule_fits

log = logging.getLogger(__name__)

Rule = tuple[str, ...]
_SHOWN = 3  # skipped rules named in the log line


def core_enforcer(enforcer: Any) -> Any:
    """The enforcer that holds the model: a SyncedEnforcer wraps one in ``_e``."""
    return enforcer._e if isinstance(enforcer, SyncedEnforcer) else enforcer


def _priority_key(index: int) -> Any:
    def key(rule: list[str]) -> Any:
        value = rule[index]
        return int(value) if value.isdigit() else value  # casbin's own sort key

    return key


class LocalModel:
    """The model of one local enforcer, changed through :meth:`apply` and :meth:`load`.

    ``lock`` is held while changing it: the SyncedEnforcer's write lock, or for a plain
    enforcer a lock that :func:`guard_enforce` also takes around ``enforce``. ``shared``:
    the enforcer changes its own model too (see the module docstring).
    """

    def __init__(self, enforcer: Any, *, shared: bool = False) -> None:
        self.enforcer = enforcer
        self.core = core_enforcer(enforcer)
        self.shared = shared
        if isinstance(enforcer, SyncedEnforcer):
            self.lock: Any = enforcer._wl
        else:
            self.lock = threading.RLock()
        # (sec, ptype) -> (the list indexed, rule -> slot); owned mode only
        self._index: dict[tuple[str, str], tuple[list[Any], dict[Rule, int]]] = {}
        self.skipped_changes = 0  # changes with at least one rule that does not fit
        self.skipped_rules = 0

    # ------------------------------------------------------------------ whole policy

    def load(self, policy: Iterable[list[Any]], seq: int | None = None) -> None:
        """Replace the whole policy (``[[sec, ptype, rules], ...]``) and rebuild role links;
        rules the model cannot hold are left out (and counted)."""
        with self.lock:
            model = self.core.model
            model.clear_policy()
            for sec, ptype, rules in policy:
                kept = self._fitting(sec, ptype, [tuple(rule) for rule in rules],
                                     f"the policy at change {seq}")
                assertion = (model[sec] or {}).get(ptype)
                if assertion is not None and kept:
                    assertion.policy = [list(rule) for rule in kept]
            model.sort_policies_by_subject_hierarchy()
            model.sort_policies_by_priority()
            self._index = {}
            self._rebuild_role_links()

    def _rebuild_role_links(self) -> None:
        core = self.core
        if not core.auto_build_role_links:
            return
        for rm in core.rm_map.values():
            rm.clear()
        for crm in core.cond_rm_map.values():
            crm.clear()
        try:
            if core.rm_map:
                core.model.build_role_links(core.rm_map)
            if core.cond_rm_map:
                core.model.build_conditional_role_links(core.cond_rm_map)
        except (RuntimeError, TypeError) as error:  # a rule the enforcer itself let in
            log.error("rebuilding role links: %s; links after that rule are missing", error)

    # ------------------------------------------------------------------ one change

    def apply(self, change: dict[str, Any]) -> None:
        """Apply one change of the feed (see ``CasbinBackend``): add, remove, update, clear."""
        with self.lock:
            op = change.get("op")
            if op == "message":  # a watcher notification: not a policy change
                return
            model = self.core.model
            if op == "clear":
                model.clear_policy()
                self._index = {}
                self._rebuild_role_links()
                return
            if op not in ("add", "remove", "update"):
                log.warning("change %s: unknown op %r, skipped", change.get("seq"), op)
                return
            sec, ptype = change["sec"], change["ptype"]
            where = f"change {change.get('seq', '(unnumbered)')}"
            rules = self._fitting(sec, ptype, _as_rules(change["rules"]), where)
            old = self._fitting(sec, ptype, _as_rules(change.get("old", ())), where)
            assertion = (model[sec] or {}).get(ptype)
            if assertion is None:  # the whole ptype did not fit: counted above
                return
            rules_of = _Rules(assertion, self._ordered(sec, assertion),
                              None if self.shared else self._positions(sec, ptype, assertion))
            if op == "add":
                self._links(sec, ptype, PolicyOp.Policy_add, rules_of.add(rules))
            elif op == "remove":
                self._links(sec, ptype, PolicyOp.Policy_remove, rules_of.remove(rules))
            else:
                removed, added = rules_of.update(old, rules, _as_rules(change.get("old", ())),
                                                 _as_rules(change["rules"]))
                self._links(sec, ptype, PolicyOp.Policy_remove, removed)
                self._links(sec, ptype, PolicyOp.Policy_add, added)
            if sec == "p" and self._subject_priority():
                model.sort_policies_by_subject_hierarchy()
                self._index.pop((sec, ptype), None)

    def mark_stale(self) -> None:
        """The enforcer changed its own model: index it again before the next change.
        (Kept for callers of earlier versions: the index is checked before each use.)"""
        self._index = {}

    def _fitting(self, sec: str, ptype: str, rules: list[Rule], where: str) -> list[Rule]:
        """The rules the model can hold; the others are logged (once: each change is
        applied once) and counted."""
        model = self.core.model
        kept = [rule for rule in rules if rule_fits(model, sec, ptype, rule)]
        if len(kept) != len(rules):
            unfit = [list(rule) for rule in rules if not rule_fits(model, sec, ptype, rule)]
            self.skipped_changes += 1
            self.skipped_rules += len(unfit)
            log.warning("%s: %d %s/%s rule(s) do not fit the local model and are skipped: %s",
                        where, len(unfit), sec, ptype, unfit[:_SHOWN])
        return kept

    def _positions(self, sec: str, ptype: str, assertion: Any) -> dict[Rule, int]:
        """The index of one ptype's list, indexed again if the list is not the one indexed
        or its length changed (someone else changed it)."""
        indexed = self._index.get((sec, ptype))
        policy = assertion.policy
        if indexed is None or indexed[0] is not policy or len(indexed[1]) != len(policy):
            indexed = (policy, {tuple(rule): i for i, rule in enumerate(policy)})
            self._index[(sec, ptype)] = indexed
        return indexed[1]

    def _ordered(self, sec: str, assertion: Any) -> bool:
        """Does list order change enforce results for this ptype?"""
        return sec == "p" and (assertion.priority_index >= 0 or "riority" in self._effect())

    def _effect(self) -> str:
        section = self.core.model["e"]  # Model.__getitem__ answers None when absent
        return str(section["e"].value) if section else ""

    def _subject_priority(self) -> bool:
        return "subjectPriority" in self._effect()

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


def _as_rules(raw: Iterable[Any]) -> list[Rule]:
    return [tuple(rule) for rule in raw]


class _Rules:
    """One ptype's list, changed in casbin's order rules; ``positions`` (owned mode) is the
    checked index, None (shared mode) means: find rules by scanning, as casbin does.
    Each method answers the rules it really changed (for the role links)."""

    def __init__(self, assertion: Any, ordered: bool, positions: dict[Rule, int] | None):
        self.assertion = assertion
        self.policy: list[list[str]] = assertion.policy
        self.ordered = ordered
        self.positions = positions

    def slot(self, rule: Rule) -> int | None:
        """Where ``rule`` is, or None."""
        if self.positions is None:
            try:
                return self.policy.index(list(rule))
            except ValueError:
                return None
        slot = self.positions.get(rule)
        if slot is not None and (slot >= len(self.policy) or tuple(self.policy[slot]) != rule):
            self._reindex()  # moved behind our back: trust the list, not the index
            slot = self.positions.get(rule)
        return slot

    def add(self, rules: list[Rule]) -> list[Rule]:
        added = []
        for rule in rules:
            if rule in added or self.slot(rule) is not None:
                continue
            added.append(rule)
            index = self.assertion.priority_index
            if self.ordered and index >= 0:
                key = _priority_key(index)
                at = bisect.bisect_right(self.policy, key(list(rule)), key=key)
                self.policy.insert(at, list(rule))
                if self.positions is not None:  # slots after ``at`` moved
                    self._reindex()
            else:
                if self.positions is not None:
                    self.positions[rule] = len(self.policy)
                self.policy.append(list(rule))
        return added

    def remove(self, rules: list[Rule]) -> list[Rule]:
        removed = []
        for rule in rules:
            slot = self.slot(rule)
            if slot is None:
                continue
            removed.append(rule)
            if self.positions is None or self.ordered:
                del self.policy[slot]  # casbin's order kept
                if self.positions is not None:
                    self._reindex()
                continue
            del self.positions[rule]
            last = self.policy.pop()
            if slot < len(self.policy):
                self.policy[slot] = last
                self.positions[tuple(last)] = slot
        return removed

    def update(
        self, old: list[Rule], new: list[Rule], all_old: list[Rule], all_new: list[Rule]
    ) -> tuple[list[Rule], list[Rule]]:
        """Replace each old rule by its new one in place, as casbin does; a pair whose old
        (or new) rule was skipped as unfit becomes an add (or a removal)."""
        fit_old, fit_new = set(old), set(new)
        pairs = list(zip(all_old, all_new, strict=True))
        # Removals first, then the in-place pairs (their slots looked up after the
        # removals moved rules), then additions: a new rule may be another pair's old one.
        removed = self.remove([o for o, n in pairs if o in fit_old and n not in fit_new])
        in_place = [(self.slot(o), o, n) for o, n in pairs if o in fit_old and n in fit_new]
        in_place = [(slot, o, n) for slot, o, n in in_place if slot is not None]
        for slot, _o, n in in_place:
            self.policy[slot] = list(n)
        if self.positions is not None:
            for _slot, o, _n in in_place:
                self.positions.pop(o, None)
            for slot, _o, n in in_place:
                self.positions[n] = slot
        replaced = {o for _, o, _ in in_place}
        added = self.add([n for o, n in pairs if n in fit_new
                          and (o not in fit_old or (o not in replaced and o not in removed))])
        return removed + [o for _, o, _ in in_place], added + [n for _, _, n in in_place]

    def _reindex(self) -> None:
        assert self.positions is not None
        self.positions.clear()
        self.positions.update((tuple(rule), i) for i, rule in enumerate(self.policy))

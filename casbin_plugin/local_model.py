"""Applying replicated changes to one enforcer's in-memory model.

Two ways, chosen by who else changes the model:

* **owned** (the Dispatcher path: the enforcer's management calls are routed through the
  cluster, so only this class changes the model). PyCasbin's ``*_self`` methods find each
  rule with a list scan (``rule in policy``), so one change costs O(rules); here an index
  finds a rule's slot in O(log rules) (``_SlotIndex``), and the list keeps casbin's own
  order (new rules at the end, or by priority; removal keeps the order; an update takes
  the old rule's place), the order the backend answers too, so every instance lists the
  policy in the same order as a plain enforcer. The index is checked before it is trusted:
  a list that was replaced, changed length, or does not hold a rule at the slot the index
  names is indexed again.
* **shared** (the WatcherEx path: the enforcer's own management calls change its model
  through PyCasbin's code, which moves positions as it likes). No position is kept: each
  rule is found the way PyCasbin's own model finds it (a scan of that ptype's list).

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

from .shape import fitter

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
        self._index: dict[tuple[str, str], _SlotIndex] = {}  # owned mode only
        self.skipped_changes = 0  # changes with at least one rule that does not fit
        self.skipped_rules = 0  # in those changes, and left out of whole-policy loads

    # ------------------------------------------------------------------ whole policy

    def load(self, policy: Iterable[list[Any]], seq: int | None = None) -> None:
        """Replace the whole policy (``[[sec, ptype, rules], ...]``) and rebuild role links;
        rules the model cannot hold are left out (and counted)."""
        with self.lock:
            model = self.core.model
            model.clear_policy()
            for sec, ptype, rules in policy:
                (kept,), _ = self._fitting(sec, ptype, [[tuple(rule) for rule in rules]],
                                           f"the policy at change {seq}")
                assertion = (model[sec] or {}).get(ptype)
                if assertion is not None and kept:
                    assertion.policy = [list(rule) for rule in kept]
            model.sort_policies_by_subject_hierarchy()
            model.sort_policies_by_priority()
            self._index = {}
            if not self.shared:  # indexed now, as part of the load, not by the next change
                for sec in ("p", "g"):
                    for ptype, assertion in (model[sec] or {}).items():
                        self._slots(sec, ptype, assertion)
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
            (rules, old), skipped = self._fitting(
                sec, ptype, [_as_rules(change["rules"]), _as_rules(change.get("old", ()))],
                where)
            self.skipped_changes += skipped > 0
            assertion = (model[sec] or {}).get(ptype)
            if assertion is None:  # the whole ptype did not fit: counted above
                return
            rules_of = _Rules(assertion, self._ordered(sec, assertion),
                              None if self.shared else self._slots(sec, ptype, assertion))
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

    def _fitting(
        self, sec: str, ptype: str, groups: list[list[Rule]], where: str
    ) -> tuple[list[list[Rule]], int]:
        """Each group's rules the model can hold, and how many it cannot; those are
        counted and logged in one line (once: each change is applied once)."""
        fit = fitter(self.core.model, sec, ptype)
        kept = [[rule for rule in rules if fit(rule)] for rules in groups]
        unfit = [list(rule) for rules in groups for rule in rules if not fit(rule)]
        if unfit:
            self.skipped_rules += len(unfit)
            log.warning("%s: %d %s/%s rule(s) do not fit the local model and are skipped: %s",
                        where, len(unfit), sec, ptype, unfit[:_SHOWN])
        return kept, len(unfit)

    def _slots(self, sec: str, ptype: str, assertion: Any) -> _SlotIndex:
        """The index of one ptype's list, made again if the list is not the one indexed or
        its length changed (someone else changed it)."""
        index = self._index.get((sec, ptype))
        if index is None or not index.covers(assertion.policy):
            index = self._index[(sec, ptype)] = _SlotIndex(assertion.policy)
        return index

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
        if op is PolicyOp.Policy_remove:
            rules = self._unheld_links(ptype, rules)
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

    def _unheld_links(self, ptype: str, removed: list[Rule]) -> list[Rule]:
        """The removed rules whose role link no held rule still implies, one per link.
        Casbin links a grouping rule by its first fields only (as many as the role
        definition has), so two rules may share a link: removing one must keep it, as a
        rebuild from the policy would (plain pycasbin drops it, and then disagrees with
        its own reload; every instance here must agree)."""
        assertion = self.core.model["g"][ptype]
        width = str(assertion.value).count("_")
        held = {tuple(rule[:width]) for rule in assertion.policy}
        unheld: dict[tuple[str, ...], Rule] = {}
        for rule in removed:
            unheld.setdefault(tuple(rule[:width]), rule)
        return [rule for key, rule in unheld.items() if key not in held]

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


class _SlotIndex:
    """Where each rule of one list is, with removals that keep the list's order.

    Each rule gets an id when it is indexed or appended, increasing along the list; a
    removal marks its id in a Fenwick tree. A rule's slot is its id less the removed ids
    before it: O(log n), however many rules were removed before it. Ids are handed out
    afresh when they run past the tree (after about as many appends as the list holds), so
    that costs O(1) per append, amortized.
    """

    def __init__(self, policy: list[list[str]]) -> None:
        self.policy = policy
        self.ids: dict[Rule, int] = {}
        self.next_id = 0
        self.removed: list[int] = []  # the Fenwick tree, 1-based
        self.rebuild()

    def rebuild(self) -> None:
        self.ids = {tuple(rule): i for i, rule in enumerate(self.policy)}
        self.next_id = len(self.policy)
        self.removed = [0] * (2 * self.next_id + 17)

    def covers(self, policy: list[list[str]]) -> bool:
        return policy is self.policy and len(self.ids) == len(policy)

    def slot(self, rule: Rule) -> int | None:
        """Where ``rule`` is (None: absent), checked against the list."""
        rule_id = self.ids.get(rule)
        if rule_id is None:
            return None
        slot = rule_id - self._removed_before(rule_id)
        if slot < len(self.policy) and tuple(self.policy[slot]) == rule:
            return slot
        self.rebuild()  # moved behind our back: trust the list, not the index
        return self.ids.get(rule)

    def append(self, rule: Rule) -> None:
        if self.next_id + 1 >= len(self.removed):
            self.rebuild()
        self.ids[rule] = self.next_id
        self.next_id += 1
        self.policy.append(list(rule))

    def delete(self, rule: Rule, slot: int) -> None:
        del self.policy[slot]
        position = self.ids.pop(rule) + 1
        while position < len(self.removed):
            self.removed[position] += 1
            position += position & -position

    def replace(self, pairs: list[tuple[int, Rule, Rule]]) -> None:
        """Each (slot, old, new): new takes old's place (all olds out first: a new rule may
        be another pair's old one)."""
        ids = [self.ids.pop(old) for _, old, _ in pairs]
        for rule_id, (slot, _, new) in zip(ids, pairs, strict=True):
            self.policy[slot] = list(new)
            self.ids[new] = rule_id

    def _removed_before(self, rule_id: int) -> int:
        count, position = 0, rule_id
        while position > 0:
            count += self.removed[position]
            position -= position & -position
        return count


class _Rules:
    """One ptype's list, changed as casbin changes it; ``index`` (owned mode) finds rules,
    None (shared mode) means: find them by scanning, as casbin does. Each method answers
    the rules it really changed (for the role links)."""

    def __init__(self, assertion: Any, ordered: bool, index: _SlotIndex | None) -> None:
        self.assertion = assertion
        self.policy: list[list[str]] = assertion.policy
        self.ordered = ordered
        self.index = index

    def slot(self, rule: Rule) -> int | None:
        """Where ``rule`` is, or None."""
        if self.index is not None:
            return self.index.slot(rule)
        try:
            return self.policy.index(list(rule))
        except ValueError:
            return None

    def add(self, rules: list[Rule]) -> list[Rule]:
        added = []
        for rule in rules:
            if rule in added or self.slot(rule) is not None:
                continue
            added.append(rule)
            priority = self.assertion.priority_index
            if self.ordered and priority >= 0:  # casbin's sorted insertion
                key = _priority_key(priority)
                at = bisect.bisect_right(self.policy, key(list(rule)), key=key)
                self.policy.insert(at, list(rule))
                if self.index is not None:  # the slots after ``at`` moved
                    self.index.rebuild()
            elif self.index is not None:
                self.index.append(rule)
            else:
                self.policy.append(list(rule))
        return added

    def remove(self, rules: list[Rule]) -> list[Rule]:
        removed = []
        for rule in rules:
            slot = self.slot(rule)
            if slot is None:
                continue
            removed.append(rule)
            if self.index is not None:
                self.index.delete(rule, slot)
            else:
                del self.policy[slot]
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
        found = [(self.slot(o), o, n) for o, n in pairs if o in fit_old and n in fit_new]
        in_place = [(slot, o, n) for slot, o, n in found if slot is not None]
        if self.index is not None:
            self.index.replace(in_place)
        else:
            for slot, _o, n in in_place:
                self.policy[slot] = list(n)
        replaced = {o for _, o, _ in in_place}
        added = self.add([n for o, n in pairs if n in fit_new
                          and (o not in fit_old or (o not in replaced and o not in removed))])
        return removed + [o for _, o, _ in in_place], added + [n for _, _, n in in_place]

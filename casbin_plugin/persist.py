"""Persisting the replicated policy to the user's casbin adapter ("the database").

One instance writes: the one whose ``is_active()`` says so (embedded: the instance whose
peer leads; side-car: the one process started with persistence on). When it becomes
active it *reconciles*: it loads what the adapter holds, compares it with the policy it has
applied, and writes the difference. From then on it writes each change the sync applies,
idempotently: it keeps the set of rules the adapter holds, adds only rules the adapter
lacks and removes only rules it has, so a change written twice (a leader change in the
middle of a write, say) changes nothing the second time. While inactive it writes nothing
and reconciles again on its next activation, so a new leader repairs whatever the old one
left half done.

Adapters whose single-rule methods do nothing (casbin's ``FileAdapter``) get the whole
policy saved instead, once per batch of changes.

``load_adapter_policy`` reads an adapter into ``[[sec, ptype, rules], ...]``: what a new
cluster starts from (``commands.seed``).
"""

from __future__ import annotations

import copy
import logging
import queue
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

from casbin.persist.adapters.file_adapter import FileAdapter

from .local_model import LocalModel, Rule
from .sync import PolicySync

log = logging.getLogger(__name__)

__all__ = ["AdapterPersister", "load_adapter_policy"]

Sets = dict[tuple[str, str], set[Rule]]


def load_adapter_policy(adapter: Any, model: Any) -> list[list[Any]]:
    """The adapter's policy for ``model`` (an enforcer's model, used as a template)."""
    scratch = copy.deepcopy(model)
    scratch.clear_policy()
    adapter.load_policy(scratch)
    out: list[list[Any]] = []
    for sec in ("p", "g"):
        for ptype, assertion in sorted((scratch[sec] or {}).items()):
            if assertion.policy:
                out.append([sec, ptype, [list(rule) for rule in assertion.policy]])
    return out


class AdapterPersister:
    """Writes every applied change to ``adapter`` while ``is_active()``; see the module doc."""

    def __init__(
        self,
        sync: PolicySync,
        adapter: Any,
        is_active: Callable[[], bool],
        *,
        check_interval: float = 0.5,
        whole_policy: bool | None = None,
    ) -> None:
        self.sync = sync
        self.model: LocalModel = sync.model
        self.adapter = adapter
        self.is_active = is_active
        self.check_interval = check_interval
        if whole_policy is None:  # FileAdapter's single-rule methods do nothing
            whole_policy = isinstance(adapter, FileAdapter)
        self.whole_policy = whole_policy
        self.reconciled_at: int | None = None  # seq of the last reconcile, None: inactive
        self.reconciles = 0
        self.writes = 0  # rules written (added or removed) to the adapter
        self._held: Sets = {}  # what the adapter holds, while active
        self._changes: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="zraft-casbin-persist",
                                        daemon=True)
        sync.add_listener(self._changes.put)
        sync.add_reload_listener(lambda seq: self._changes.put({"op": "reload", "seq": seq}))

    def start(self) -> AdapterPersister:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._changes.put(None)
        self._thread.join(timeout=10)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every change applied so far was handled (tests, shutdown)."""
        done = threading.Event()
        self._changes.put({"op": "flush", "event": done})
        return done.wait(timeout)

    # ------------------------------------------------------------------ the loop

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._changes.get(timeout=self.check_interval)
            except queue.Empty:
                first = {"op": "tick"}
            if first is None:
                return
            batch = [first]
            while not self._changes.empty() and len(batch) < 10_000:
                item = self._changes.get_nowait()
                if item is None:
                    return
                batch.append(item)
            try:
                self._handle(batch)
            except Exception:  # the database may be down: reconcile once it answers
                log.exception("persisting to the adapter failed; will reconcile")
                self.reconciled_at = None
            for item in batch:
                if item.get("op") == "flush":
                    item["event"].set()

    def _handle(self, batch: list[dict[str, Any]]) -> None:
        if not self.is_active():
            if self.reconciled_at is not None:
                log.info("no longer the persisting instance")
            self.reconciled_at = None
            return
        if self.reconciled_at is None or any(i["op"] == "reload" for i in batch):
            self._reconcile()
            return  # the reconcile covered every change applied before it
        changes = [i for i in batch if i["op"] in ("add", "remove", "update", "clear")]
        if not changes:
            return
        if self.whole_policy:
            with self.model.reading():
                self.adapter.save_policy(self.model.core.model)
            self.writes += sum(len(ch.get("rules", ())) for ch in changes)
            return
        for change in changes:
            self._write(change)

    def _reconcile(self) -> None:
        with self.model.reading():
            seq = self.sync.applied_seq
            wanted = self.model.rules_held()
            if self.whole_policy:
                self.adapter.save_policy(self.model.core.model)
        if self.whole_policy:
            self._held = wanted
        else:
            loaded = load_adapter_policy(self.adapter, self.model.core.model)
            held = _as_sets(loaded)
            doubled = {(sec, ptype, tuple(rule)) for sec, ptype, rules in loaded
                       for rule, n in Counter(map(tuple, rules)).items() if n > 1}
            for key in sorted(set(held) | set(wanted)):
                sec, ptype = key
                extra = sorted(held.get(key, set()) - wanted.get(key, set()))
                missing = sorted(wanted.get(key, set()) - held.get(key, set()))
                missing += sorted(r for r in wanted.get(key, set()) & held.get(key, set())
                                  if (sec, ptype, r) in doubled)  # stored twice: once again
                for rule in extra:
                    self.adapter.remove_policy(sec, ptype, list(rule))
                for rule in missing:
                    self._add(sec, ptype, list(rule))
                self.writes += len(extra) + len(missing)
            self._held = wanted
        self.reconciled_at = seq
        self.reconciles += 1
        log.info("adapter reconciled with the policy at change %d", seq)

    def _write(self, change: dict[str, Any]) -> None:
        op = change["op"]
        if op == "clear":
            for (sec, ptype), rules in sorted(self._held.items()):
                for rule in sorted(rules):
                    self.adapter.remove_policy(sec, ptype, list(rule))
                    self.writes += 1
            self._held = {}
            return
        key = (change["sec"], change["ptype"])
        held = self._held.setdefault(key, set())
        gone = change.get("old", []) if op == "update" else (
            change["rules"] if op == "remove" else [])
        new = change["rules"] if op in ("add", "update") else []
        for raw in gone:
            rule = tuple(raw)
            if rule in held:
                self.adapter.remove_policy(key[0], key[1], list(rule))
                held.discard(rule)
                self.writes += 1
        for raw in new:
            rule = tuple(raw)
            if rule not in held:
                self._add(key[0], key[1], list(rule))
                held.add(rule)
                self.writes += 1

    def _add(self, sec: str, ptype: str, rule: list[str]) -> None:
        # Delete first: adapters insert a second row for a rule they hold, and another
        # instance may have written it already (two writers overlap around a leader change).
        self.adapter.remove_policy(sec, ptype, rule)
        self.adapter.add_policy(sec, ptype, rule)


def _as_sets(policy: list[list[Any]]) -> Sets:
    return {(sec, ptype): {tuple(rule) for rule in rules} for sec, ptype, rules in policy}

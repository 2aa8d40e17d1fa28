"""The ``casbin`` workload of the fault suite: Casbin instances that must converge.

Peers run the Casbin backend (:class:`ChaosCasbinBackend`: ``zraft.casbin``'s backend plus
the suite's applied-command digest, so the peers' states are compared like every other
run's). Each client is one PyCasbin enforcer connected through ``zraft.casbin.connect``
(side-car mode, its local model kept current by ``PolicySync``) making random add, remove
and update calls on policies and role links over a small domain of subjects and objects.
Every call is recorded with its outcome and, when acknowledged, the backend's result (the
change counter ``seq`` it produced).

After healing, the final read takes the committed change feed (``changes_since(0)``; a
feed truncated by the backend's bound starts from the snapshot policy it answers instead),
waits for every instance to apply all of it, and takes each instance's policy and its
``enforce`` answers on a request grid. The check:

* a strict serial replay of the feed: each change must be possible where it stands (an
  add of a rule already present, a removal of an absent one, is a change applied twice);
* every acknowledged change sits in the feed at the ``seq`` its call answered, with the
  same rules, no two calls claim one change, and the feed orders them as real time did
  (a call acknowledged before another began has the smaller ``seq``);
* no change is in the feed more often than calls that could have made it were invoked;
* every instance holds the replayed policy (less the rules its model cannot hold), and all
  answer ``enforce`` as a reference enforcer loaded with it does; no change failed to apply
  on any instance.

Poison is mixed into the stream (issue 17), rules the model cannot hold: through an
enforcer (a policy rule of the wrong length, a grouping rule too short, a ptype the model
lacks), which must raise pycasbin's exception before anything is sent; written directly by
a client that ignores the model, which the cluster must refuse; and written by a client of
another model that first declares its own shape (a ptype ``p9``, one-field grouping rules),
which the cluster takes, so the log holds rules the instances must skip while carrying on.

Why one module: the workload, its model of the expected policy and its checker share one
encoding of operations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgpack

from zraft.backends.base import ApplyResult, QueryResult, SnapshotWriter
from zraft.casbin import commands as c
from zraft.casbin.backend import CasbinBackend
from zraft.casbin.models import RBAC_MODEL
from zraft.linearizability import Operation, Status
from zraft.session import LightSession, Rejected, ZraftError

from .backend import DIGEST_FILE
from .workloads import FINAL_CLIENT, ClientContext, Verdict, Workload, _tally

log = logging.getLogger(__name__)

CASBIN_CHAOS_BACKEND: Final = "zraft.chaos.casbin_workload:ChaosCasbinBackend"
_EMPTY_DIGEST: Final = hashlib.sha256(b"zraft-chaos").hexdigest()  # as ChaosBackend's

USERS: Final = ("alice", "bob", "carol")
ROLES: Final = ("admin", "reader")
OBJECTS: Final = ("data1", "data2")
ACTIONS: Final = ("read", "write")
REQUESTS: Final = [(sub, obj, act) for sub in USERS + ROLES for obj in OBJECTS for act in ACTIONS]

Policy = dict[str, set[tuple[str, ...]]]  # "sec/ptype" -> rules

POISON_RATE: Final = 0.1  # of a client's operations
# The shape of the workload's model (zraft.casbin.shape.model_shape of it: tested), and the
# one a client of another model declares: the same p, a p9 and one-field grouping rules.
WORKLOAD_SHAPE: Final = [("p", "p", 3, -1), ("g", "g", 2, -1)]
OTHER_SHAPE: Final = [("p", "p", 3, -1), ("p", "p9", 3, -1), ("g", "g", 1, -1)]


def fits_model(name: str, rule: tuple[str, ...]) -> bool:
    """Can the workload's RBAC model hold ``rule`` of ``name`` ("sec/ptype")?"""
    for sec, ptype, fields, priority in WORKLOAD_SHAPE:
        if name == f"{sec}/{ptype}":
            return c.fits(sec, fields, rule, priority)
    return False


def held_by_model(policy: Policy) -> Policy:
    """``policy`` less the rules the model cannot hold (what every instance skips)."""
    out = {
        name: {rule for rule in rules if fits_model(name, rule)} for name, rules in policy.items()
    }
    return {name: rules for name, rules in out.items() if rules}


class ChaosCasbinBackend(CasbinBackend):
    """The Casbin backend plus the suite's running digest of applied commands (query
    ``{"op": "digest"}``), which travels in snapshots (see :mod:`zraft.chaos.backend`)."""

    def __init__(self) -> None:
        super().__init__()
        self._applied = 0
        self._digest = _EMPTY_DIGEST

    def query(self, query: Any) -> QueryResult:
        if isinstance(query, dict) and query.get("op") == "digest":
            return QueryResult({"applied": self._applied, "digest": self._digest})
        return super().query(query)

    def apply(self, command: Any) -> ApplyResult:
        result = super().apply(command)
        self._fold(command, None)
        return result

    def apply_session(self, command: Any, session_id: str) -> ApplyResult:
        result = super().apply_session(command, session_id)
        self._fold(command, session_id)
        return result

    def expire_session(self, session_id: str) -> frozenset[str]:
        keys = super().expire_session(session_id)
        self._fold({"expire": session_id}, None)
        return keys

    def snapshot(self) -> SnapshotWriter:
        inner = super().snapshot()
        state = json.dumps({"applied": self._applied, "digest": self._digest})

        def write(directory: Path) -> None:
            inner.write(directory)
            (Path(directory) / DIGEST_FILE).write_text(state, encoding="utf-8")

        return SnapshotWriter(write, background=inner.background)

    def install(self, directory: Path) -> None:
        super().install(directory)
        try:
            state = json.loads((Path(directory) / DIGEST_FILE).read_text(encoding="utf-8"))
            self._applied, self._digest = int(state["applied"]), str(state["digest"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            # Restarting the digest shows up as a divergence instead of hiding one.
            log.error("snapshot %s has no usable chaos digest: %s", directory, error)
            self._applied, self._digest = 0, _EMPTY_DIGEST

    def _fold(self, command: Any, session_id: str | None) -> None:
        packed = msgpack.packb([session_id, command], use_bin_type=True)
        self._digest = hashlib.sha256(self._digest.encode("ascii") + packed).hexdigest()
        self._applied += 1


# --------------------------------------------------------------------------- final state


@dataclass(slots=True)
class InstanceState:
    """One instance after healing: how far it applied, what it holds, what it answers."""

    applied_seq: int
    policy: Policy
    answers: list[bool]
    metrics: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class CasbinFinal:
    """The committed feed (from ``base``, the policy at ``base_seq``) and the instances."""

    base_seq: int = 0
    base: Policy = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    seq: int = 0
    instances: dict[str, InstanceState | None] = field(default_factory=dict)

    @property
    def truncated(self) -> bool:
        return self.base_seq > 0


def policy_of(enforcer: Any) -> Policy:
    """An enforcer's rules as sets per "sec/ptype" (order differs between instances)."""
    out: Policy = {}
    for sec in ("p", "g"):
        for ptype, assertion in (enforcer.get_model()[sec] or {}).items():
            if assertion.policy:
                out[f"{sec}/{ptype}"] = {tuple(rule) for rule in assertion.policy}
    return out


def _from_listing(listing: list[Any]) -> Policy:
    """The backend's ``[[sec, ptype, rules], ...]`` as a Policy."""
    return {f"{sec}/{ptype}": {tuple(r) for r in rules} for sec, ptype, rules in listing if rules}


def _to_listing(policy: Policy) -> list[list[Any]]:
    return [
        [*name.split("/", 1), [list(rule) for rule in sorted(rules)]]
        for name, rules in sorted(policy.items())
        if rules
    ]


def new_enforcer() -> Any:
    """A PyCasbin enforcer on the workload's RBAC model (PyCasbin imported here only:
    peers import this module for the backend and need no PyCasbin)."""
    import casbin
    from casbin.model import Model

    model = Model()
    model.load_model_from_text(RBAC_MODEL)
    return casbin.SyncedEnforcer(model)


def reference_answers(policy: Policy) -> list[bool]:
    """``enforce`` on the request grid by a fresh enforcer holding ``policy``."""
    from zraft.casbin.local_model import LocalModel

    enforcer = new_enforcer()
    LocalModel(enforcer).load(_to_listing(policy))
    return [bool(enforcer.enforce(*request)) for request in REQUESTS]


# --------------------------------------------------------------------------- the workload


class CasbinWorkload(Workload):
    """Policy and role-link changes from several Casbin instances (see the module doc)."""

    name = "casbin"
    backend = CASBIN_CHAOS_BACKEND
    clients = 3
    CONNECT_TIMEOUT = 20.0

    def __init__(self, seed: int, history_path: Path | None = None) -> None:
        super().__init__(seed, history_path)
        self._lock = threading.Lock()
        self.nodes: dict[int, Any] = {}  # client -> CasbinNode (closed by close())
        self.enforcers: dict[int, Any] = {}
        self._results: dict[int, dict[str, Any]] = {}  # client -> its last dispatch result
        self.final: CasbinFinal | None = None
        self.final_error = ""
        # poison: kind -> outcome -> count; and what went wrong with it
        self.poison: dict[str, Counter[str]] = {kind: Counter() for kind in POISON_KINDS}
        self.poison_anomalies: list[str] = []
        # One poison at a time; True while the cluster may hold the other model's shape
        # (then a direct write of poison may be taken, rightly).
        self._poison_lock = threading.Lock()
        self._other_shape_maybe = False

    # ------------------------------------------------------------------ clients

    def run_client(self, client: int, context: ClientContext, stop: threading.Event) -> None:
        """Connect one enforcer (retrying while the cluster cannot answer), then make
        changes through it until ``stop``. The instance stays connected for the check."""
        rng = random.Random(f"{self.seed}-{self.name}-{client}")
        while not stop.is_set() and client not in self.nodes:
            try:
                self._connect(client, context)
            except Exception as error:  # no leader yet, a fault: try again
                log.warning("casbin instance %d could not connect: %s", client, error)
                stop.wait(0.5)
        with context.session() as session:  # for the writes of a client ignoring the model
            while not stop.is_set():
                try:
                    self.operate(client, session, rng, context.op_timeout)
                except Exception:  # a bug in the workload must not kill the run silently
                    log.exception("%s client %d", self.name, client)
                    stop.wait(0.1)

    def _connect(self, client: int, context: ClientContext) -> None:
        from zraft.casbin.cluster import connect

        enforcer = new_enforcer()
        node = connect(
            enforcer, list(context.peers), cluster_id=context.cluster_id,
            election_timeout=context.election_timeout, timeout=context.op_timeout,
            apply_timeout=context.op_timeout, start_timeout=self.CONNECT_TIMEOUT,
        )  # fmt: skip
        original = node.dispatcher.dispatch

        def dispatch(command: dict[str, Any]) -> dict[str, Any]:
            # Keep the backend's answer (its seq): the enforcer's methods return a bool.
            result: dict[str, Any] = original(command)
            self._results[client] = result
            return result

        node.dispatcher.dispatch = dispatch
        with self._lock:
            self.nodes[client] = node
            self.enforcers[client] = enforcer

    def operate(
        self, client: int, session: LightSession, rng: random.Random, timeout: float
    ) -> None:
        """One random change through instance ``client``'s enforcer (which writes through
        its own sessions), or now and then poison (``session``: a client ignoring the
        model)."""
        if rng.random() < POISON_RATE:
            self.poison_once(client, session, rng)
            return
        enforcer = self.enforcers[client]
        sec = "p" if rng.random() < 0.6 else "g"
        held = [
            tuple(r)
            for r in (enforcer.get_policy() if sec == "p" else enforcer.get_grouping_policy())
        ]
        roll = rng.random()
        if roll < 0.45 or not held:
            rule, old, op = _random_rule(sec, rng), None, "add"
        elif roll < 0.8:  # mostly a rule this instance holds, sometimes one it may not
            rule, old, op = _held_or_random(held, sec, rng), None, "remove"
        else:
            old, op = rng.choice(held), "update"
            rule = _random_rule(sec, rng)
            while rule == old:
                rule = _random_rule(sec, rng)
        self.change(client, op, sec, rule, old)

    def change(
        self,
        client: int,
        op: str,
        sec: str,
        rule: tuple[str, ...],
        old: tuple[str, ...] | None = None,
    ) -> Status:
        """Make one change through ``client``'s enforcer and record it with its outcome."""
        enforcer = self.enforcers[client]
        word = "policy" if sec == "p" else "grouping_policy"
        value: dict[str, Any] = {"sec": sec, "ptype": sec, "rules": [list(rule)]}
        if op == "update":
            assert old is not None
            value["old"] = [list(old)]
            call = lambda: getattr(enforcer, f"update_{word}")(list(old), list(rule))  # noqa: E731
        else:
            call = lambda: getattr(enforcer, f"{op}_{word}")(*rule)  # noqa: E731
        handle = self.history.invoke(client, op, f"{sec}/{sec}", value=value)
        self._results.pop(client, None)
        try:
            returned = call()
        except Rejected:
            self.history.fail(handle)
            return Status.FAIL
        except ZraftError:  # timeouts, no leader, committed but not applied here in time
            self.history.unknown(handle)
            time.sleep(0.05)
            return Status.UNKNOWN
        result = self._results.get(client) or {}
        self.history.ok(
            handle,
            {
                "returned": bool(returned),
                "changed": bool(result.get("changed")),
                "seq": int(result.get("seq", -1)),
            },
        )
        return Status.OK

    # ------------------------------------------------------------------ poison

    def poison_once(self, client: int, session: LightSession, rng: random.Random) -> None:
        kind = rng.choice(POISON_KINDS)
        if kind == "enforcer":
            self._poison_through_enforcer(client, rng)
            return
        with self._poison_lock:
            if kind == "direct":
                sec, ptype, rule = rng.choice(_DIRECT_POISON)
                self._poison_write(client, session, kind, sec, ptype, rule)
                return
            # a client of another model: declares its shape, adds or removes one of its
            # rules, then the shape goes back
            sec, ptype, rule = _other_model_rule(rng)
            op = "remove" if rng.random() < 0.3 else "add"
            self._other_shape_maybe = True
            if self._raw(session, c.define(OTHER_SHAPE)):
                self._poison_write(client, session, kind, sec, ptype, rule, op)
            if self._raw(session, c.define(WORKLOAD_SHAPE)):
                self._other_shape_maybe = False

    def _poison_through_enforcer(self, client: int, rng: random.Random) -> None:
        enforcer = self.enforcers[client]
        name, args, refusal = rng.choice(_ENFORCER_POISON)
        try:
            getattr(enforcer, name)(*args)
        except refusal:
            self._count("enforcer", "refused at the caller")
            return
        except Exception as error:  # sent, or refused the wrong way
            self._poison_anomaly(
                f"{name}{args} raised {type(error).__name__}: {error}, "
                f"not pycasbin's {refusal.__name__}"
            )
            return
        self._poison_anomaly(f"{name}{args} was taken (it must raise {refusal.__name__})")

    def _poison_write(
        self,
        client: int,
        session: LightSession,
        kind: str,
        sec: str,
        ptype: str,
        rule: tuple[str, ...],
        op: str = "add",
    ) -> None:
        """A raw write, recorded like every change: if the cluster takes it, it is in the
        feed, and the checker wants it replayed (and skipped by every instance)."""
        value = {"sec": sec, "ptype": ptype, "rules": [list(rule)]}
        handle = self.history.invoke(client, op, f"{sec}/{ptype}", value=value)
        build = c.add if op == "add" else c.remove
        try:
            result = session.write(build(sec, ptype, [list(rule)]))
        except Rejected:
            self.history.fail(handle)
            self._count(kind, "refused by the cluster")
            return
        except ZraftError:
            self.history.unknown(handle)
            self._count(kind, "unknown")
            return
        self.history.ok(
            handle,
            {
                "returned": bool(result["changed"]),
                "changed": bool(result["changed"]),
                "seq": int(result["seq"]),
            },
        )
        self._count(kind, f"{op}s taken into the log" if result["changed"] else "no change")
        if kind == "direct" and not self._other_shape_maybe:
            self._poison_anomaly(
                f"the cluster took {sec}/{ptype} {list(rule)}, which the declared model cannot hold"
            )

    def _raw(self, session: LightSession, command: dict[str, Any]) -> bool:
        try:
            session.write(command)
            return True
        except ZraftError:
            return False

    def _count(self, kind: str, outcome: str) -> None:
        with self._lock:
            self.poison[kind][outcome] += 1

    def _poison_anomaly(self, text: str) -> None:
        with self._lock:
            self.poison_anomalies.append(text)

    # ------------------------------------------------------------------ after healing

    def final_read(self, session: LightSession, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        final = CasbinFinal()
        try:
            since = 0
            while True:
                answer = session.query(
                    c.changes_since(since, limit=1000), max(0.5, deadline - time.monotonic())
                )
                if "full" in answer:  # the feed no longer reaches back: start from its policy
                    final.base_seq, final.base = answer["seq"], _from_listing(answer["full"])
                    final.changes = []
                    since = answer["seq"]
                    continue
                final.changes.extend(answer["changes"])
                since = answer["seq"]
                if not answer.get("more"):
                    break
            final.seq = since
        except ZraftError as error:
            self.final_error = f"reading the change feed failed: {error}"
            log.warning("%s", self.final_error)
            return
        for client in sorted(self.nodes):
            node, enforcer = self.nodes[client], self.enforcers[client]
            node.sync.wait_for(final.seq, max(0.1, deadline - time.monotonic()))
            # No lock taken: the clients have stopped, and the enforcer's own read lock
            # (taken by get_model and enforce) keeps out a straggling change.
            final.instances[f"instance-{client}"] = InstanceState(
                node.sync.applied_seq,
                policy_of(enforcer),
                [bool(enforcer.enforce(*request)) for request in REQUESTS],
                node.metrics(),
            )
        for client in range(self.clients):
            final.instances.setdefault(f"instance-{client}", None)  # never connected
        self.final = final

    def check(self, timeout: float) -> Verdict:
        ops = self.history.operations()
        verdict = _tally(self.name, ops)
        if self.final is None:
            verdict.ok = None
            verdict.anomalies.append(self.final_error or "no final read: nothing checked")
            return verdict
        verdict.anomalies.extend(check_casbin(ops, self.final))
        _note(verdict.anomalies, "poison handled wrongly", self.poison_anomalies)
        if verdict.anomalies:
            verdict.ok = False
        truncated = (
            f" (feed truncated: replayed from the policy at {self.final.base_seq})"
            if self.final.truncated
            else ""
        )
        poison = "; ".join(
            f"{kind}: " + ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
            for kind, counts in self.poison.items()
            if counts
        )
        unfit = sum(
            1 for change in self.final.changes
            if change.get("op") in ("add", "update", "remove") and not all(
                fits_model(f"{change['sec']}/{change['ptype']}", tuple(rule))
                for rule in change.get("rules", []))
        )  # fmt: skip
        verdict.detail = (
            f"casbin: {len(self.final.changes)} changes replayed{truncated}, "
            f"{unfit} of them poison skipped by every instance; poison ({poison or 'none'}); "
            f"{len(self.final.instances)} instances, "
            + (
                "no anomaly"
                if not verdict.anomalies
                else "anomalies:\n" + "\n".join(f"  {a}" for a in verdict.anomalies)
            )
        )
        return verdict

    def close(self) -> None:
        with self._lock:
            nodes, self.nodes = dict(self.nodes), {}
        for node in nodes.values():
            try:
                node.close()
            except Exception:  # closing one must not leave the others open
                log.exception("closing a casbin instance")
        super().close()


POISON_KINDS: Final = ("enforcer", "direct", "other model")
# (call, args, the exception plain pycasbin raises, or raises later: see zraft.casbin.shape)
_ENFORCER_POISON: Final[list[tuple[str, tuple[Any, ...], type[Exception]]]] = [
    ("add_policy", ("alice", "data1"), RuntimeError),  # enforce would raise on it
    ("add_grouping_policy", ("alice",), TypeError),
    ("add_named_policy", ("p9", "alice", "data1", "read"), KeyError),
]
_DIRECT_POISON: Final = [
    ("p", "p", ("alice", "data1")),
    ("g", "g", ("alice",)),
    ("p", "p9", ("alice", "data1", "read")),
]


def _other_model_rule(rng: random.Random) -> tuple[str, str, tuple[str, ...]]:
    """A rule of the other model that the workload's cannot hold."""
    if rng.random() < 0.5:
        return "p", "p9", (rng.choice(USERS + ROLES), rng.choice(OBJECTS), rng.choice(ACTIONS))
    return "g", "g", (rng.choice(USERS + ROLES),)


def _held_or_random(held: list[tuple[str, ...]], sec: str, rng: random.Random) -> tuple[str, ...]:
    return rng.choice(held) if rng.random() < 0.8 else _random_rule(sec, rng)


def _random_rule(sec: str, rng: random.Random) -> tuple[str, ...]:
    if sec == "g":
        return (rng.choice(USERS), rng.choice(ROLES))
    return (rng.choice(USERS + ROLES), rng.choice(OBJECTS), rng.choice(ACTIONS))


# --------------------------------------------------------------------------- the checker

_LISTED = 10


def replay(final: CasbinFinal) -> tuple[Policy, list[str]]:
    """The feed applied serially to its base, strictly: (the policy, what was impossible)."""
    state: Policy = {name: set(rules) for name, rules in final.base.items()}
    problems: list[str] = []
    expected = final.base_seq + 1
    for change in final.changes:
        seq = change.get("seq")
        if seq != expected:
            problems.append(f"the feed skips from change {expected - 1} to {seq}")
        expected = (seq if isinstance(seq, int) else expected) + 1
        op = change.get("op")
        if op == "message":
            continue
        if op == "clear":
            state = {}
            continue
        rules = state.setdefault(f"{change['sec']}/{change['ptype']}", set())
        if op == "update":
            for rule in map(tuple, change.get("old", [])):
                if rule not in rules:
                    problems.append(f"change {seq} updates {list(rule)}, which is absent")
                rules.discard(rule)
        for rule in map(tuple, change.get("rules", [])):
            if op == "remove":
                if rule not in rules:
                    problems.append(f"change {seq} removes {list(rule)} again (applied twice)")
                rules.discard(rule)
            else:
                if rule in rules:
                    problems.append(f"change {seq} adds {list(rule)} again (applied twice)")
                rules.add(rule)
    return {name: rules for name, rules in state.items() if rules}, problems


def _content(op: str, sec: str, ptype: str, rules: Any, old: Any = None) -> str:
    return json.dumps([op, sec, ptype, rules, old or []])


def check_casbin(ops: list[Operation], final: CasbinFinal) -> list[str]:
    """The anomalies of a casbin history given the final read (empty: none)."""
    problems: list[str] = []
    state, impossible = replay(final)
    _note(problems, "changes impossible where the feed has them", impossible)
    by_seq = {change["seq"]: change for change in final.changes if "seq" in change}
    changes = [op for op in ops if op.client != FINAL_CLIENT]
    acked = [
        op for op in changes
        if op.status is Status.OK and isinstance(op.output, dict) and op.output.get("changed")
    ]  # fmt: skip
    acked_ids = {op.id for op in acked}
    missing, claims = [], Counter[int]()
    for op in acked:
        seq = op.output["seq"]
        claims[seq] += 1
        if seq <= final.base_seq:
            continue  # before the truncated feed: only the end state vouches for it
        change = by_seq.get(seq)
        want = _content(
            op.op, op.value["sec"], op.value["ptype"], op.value["rules"], op.value.get("old")
        )
        if (
            change is None
            or _content(
                change.get("op", ""),
                change.get("sec", ""),
                change.get("ptype", ""),
                change.get("rules"),
                change.get("old"),
            )
            != want
        ):
            missing.append(f"#{op.id} {op.op} {op.value['rules']} (seq {seq})")
    _note(problems, "acknowledged changes missing from the feed", missing)
    _note(
        problems,
        "changes claimed by two acknowledged calls",
        [f"seq {s}" for s, n in claims.items() if n > 1],
    )
    # Real-time order: a call acknowledged before another began holds the smaller seq.
    by_complete = sorted(
        (op for op in acked if op.complete is not None), key=lambda op: op.complete or 0.0
    )
    out_of_order, latest, position = [], (-1, -1), 0
    for op in sorted(acked, key=lambda op: op.invoke):
        while position < len(by_complete) and (by_complete[position].complete or 0) < op.invoke:
            done = by_complete[position]
            latest = max(latest, (done.output["seq"], done.id))
            position += 1
        if latest[0] >= op.output["seq"]:
            out_of_order.append(
                f"#{op.id} (seq {op.output['seq']}) after #{latest[1]} (seq {latest[0]})"
            )
    _note(problems, "acknowledged changes ordered against real time", out_of_order)
    # Nothing is in the feed more often than calls that could have made it were invoked.
    possible = Counter(
        _content(op.op, op.value["sec"], op.value["ptype"], op.value["rules"],
                 op.value.get("old"))
        for op in changes
        if op.status is Status.UNKNOWN or op.id in acked_ids
    )  # fmt: skip
    present = Counter(
        _content(ch.get("op", ""), ch.get("sec", ""), ch.get("ptype", ""), ch.get("rules"),
                 ch.get("old"))
        for ch in final.changes if ch.get("op") in ("add", "remove", "update")
    )  # fmt: skip
    _note(
        problems,
        "changes in the feed more often than invoked (applied twice or invented)",
        [f"{content} x{n}" for content, n in present.items() if n > possible[content]],
    )
    # The instances: converged, holding the replay (less what the model cannot hold: every
    # instance skips that), answering alike.
    state = held_by_model(state)
    want_answers = reference_answers(state)
    for name, instance in sorted(final.instances.items()):
        if instance is None:
            problems.append(f"{name}: never connected, so never checked")
            continue
        if instance.metrics.get("failed_changes"):
            problems.append(
                f"{name}: {instance.metrics['failed_changes']} change(s) failed "
                "to apply (skipped, then the policy reloaded)"
            )
        if instance.applied_seq != final.seq:
            problems.append(
                f"{name}: applied up to change {instance.applied_seq}, not "
                f"{final.seq}, within the timeout (did not converge)"
            )
        if instance.policy != state:
            problems.append(
                f"{name}: its policy differs from the serial replay: "
                + _difference(instance.policy, state)
            )
        if instance.answers != want_answers:
            wrong = [
                list(REQUESTS[i])
                for i, (a, b) in enumerate(zip(instance.answers, want_answers, strict=False))
                if a != b
            ]
            problems.append(f"{name}: enforce answers differ from the replay's on {wrong}")
    return problems


def _difference(have: Policy, want: Policy) -> str:
    extra = sorted(f"{n} {list(r)}" for n in have for r in have[n] - want.get(n, set()))
    lost = sorted(f"{n} {list(r)}" for n in want for r in want[n] - have.get(n, set()))
    return f"extra {extra[:_LISTED]}, missing {lost[:_LISTED]}"


def _note(problems: list[str], what: str, items: list[str]) -> None:
    if items:
        shown = ", ".join(items[:_LISTED]) + (" ..." if len(items) > _LISTED else "")
        problems.append(f"{len(items)} {what}: {shown}")


# Registered here, not in workloads.py: this module needs the base classes there, and
# workloads.py imports this one at its end (either may be imported first).

__all__ = [
    "CASBIN_CHAOS_BACKEND", "CasbinFinal", "CasbinWorkload", "ChaosCasbinBackend",
    "InstanceState", "check_casbin", "replay",
]  # fmt: skip

"""Dispatcher, enforcer wiring and the local sync, against an in-process backend.

Several enforcers (plain, Synced, Distributed) share one CasbinBackend through an
in-memory "cluster"; every management call goes through the dispatcher. After every call
all instances must answer ``enforce`` like a reference enforcer that ran the same calls
through casbin's own code, and return what casbin returned.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import casbin
import pytest

from zraft.backends import Failure, checked_apply
from zraft.casbin import commands as c
from zraft.casbin.backend import CasbinBackend
from zraft.casbin.dispatcher import Dispatcher, set_dispatcher
from zraft.casbin.local_model import LocalModel
from zraft.casbin.sync import PolicySync, PollingWaker
from zraft.session import Rejected

MODELS = Path(__file__).parent / "casbin_models"


class MemoryCluster:
    """One backend behind a lock: what a Raft cluster looks like to one client."""

    def __init__(self) -> None:
        self.backend = CasbinBackend()
        self.lock = threading.Lock()

    def write(self, command: dict[str, Any], session: str | None = None) -> dict[str, Any]:
        with self.lock:
            outcome = checked_apply(self.backend, command, session)
        if isinstance(outcome, Failure):
            raise Rejected(outcome.reason, outcome.code)
        return outcome.result  # type: ignore[no-any-return]

    def expire(self, session: str) -> None:
        with self.lock:
            self.backend.expire_session(session)

    def query(self, query: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            return self.backend.query(query).data  # type: ignore[no-any-return]


class MemoryFeed:
    def __init__(self, cluster: MemoryCluster) -> None:
        self.cluster = cluster

    def fetch(self, since: int, urgent: bool) -> dict[str, Any]:
        return self.cluster.query(c.changes_since(since, limit=7))  # small pages on purpose

    def fetch_policy(self) -> dict[str, Any]:
        return self.cluster.query(c.policy())

    def close(self) -> None:
        pass


def attach(enforcer: Any, cluster: MemoryCluster) -> PolicySync:
    sync = PolicySync(LocalModel(enforcer), MemoryFeed(cluster), PollingWaker(0.002, 0.0005))
    sync.start()
    set_dispatcher(enforcer, Dispatcher(cluster.write, sync,
                                        write_temporary=lambda cmd: cluster.write(cmd, "s")))
    return sync


def seed_cluster(cluster: MemoryCluster, reference: Any) -> None:
    for sec in ("p", "g"):
        for ptype, assertion in (reference.get_model()[sec] or {}).items():
            if assertion.policy:
                cluster.write(c.add(sec, ptype, assertion.policy))


CASES = {
    "basic": ("basic_model.conf", "basic_policy.csv"),
    "rbac": ("rbac_model.conf", "rbac_policy.csv"),
    "domains": ("rbac_with_domains_model.conf", "rbac_with_domains_policy.csv"),
    "priority": ("priority_model.conf", "priority_policy.csv"),
    "explicit_priority": ("explicit_priority_model.conf", "explicit_priority_policy.csv"),
}


def grid(case: str) -> list[tuple[str, ...]]:
    subjects = ["alice", "bob", "carol", "admin", "data2_admin"]
    objects = ["data1", "data2", "data3"]
    actions = ["read", "write"]
    if case == "domains":
        return [(s, d, o, a) for s in subjects[:3] for d in ("domain1", "domain2")
                for o in objects[:2] for a in actions]
    return [(s, o, a) for s in subjects for o in objects for a in actions]


def random_call(rng: random.Random, case: str) -> tuple[str, tuple[Any, ...]]:
    subjects = ["alice", "bob", "carol", "admin", "data2_admin", "data1_deny_group",
                "data2_allow_group"]
    objects = ["data1", "data2", "data3"]

    def rule() -> list[str]:
        body = [rng.choice(subjects), rng.choice(objects), rng.choice(["read", "write"])]
        if case == "domains":
            body.insert(1, rng.choice(["domain1", "domain2"]))
        if case == "priority":
            body.append(rng.choice(["allow", "deny"]))
        if case == "explicit_priority":
            body = [rng.choice(["1", "5", "10"]), *body, rng.choice(["allow", "deny"])]
        return body

    def link() -> list[str]:
        pair = [rng.choice(subjects[:3]), rng.choice(subjects[3:])]
        return pair + [rng.choice(["domain1", "domain2"])] if case == "domains" else pair

    kind = rng.randrange(10)
    if kind <= 2:
        return "add_policy", tuple(rule())
    if kind == 3:
        return "remove_policy", tuple(rule())
    if kind == 4:
        return "add_policies", ([rule() for _ in range(rng.randint(1, 3))],)
    if kind == 5 and case != "basic":
        return "add_grouping_policy", tuple(link())
    if kind == 6 and case != "basic":
        return "remove_grouping_policy", tuple(link())
    if kind == 7:
        return "remove_filtered_policy", (1 if case == "explicit_priority" else 0,
                                          rng.choice(subjects))
    if kind == 8:
        old = rule()
        new = list(old)
        new[-1 if case != "explicit_priority" else -2] = rng.choice(["read", "write", "x"])
        return "update_policy", (old, new)
    return "add_policy", tuple(rule())


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", sorted(CASES))
def test_instances_answer_like_casbin_after_every_call(case: str) -> None:
    model, policy = (str(MODELS / name) for name in CASES[case])
    reference = casbin.Enforcer(model, policy)
    reference.enable_auto_save(False)  # the file adapter cannot save single changes
    cluster = MemoryCluster()
    seed_cluster(cluster, reference)
    instances = [casbin.Enforcer(model), casbin.SyncedEnforcer(model),
                 casbin.DistributedEnforcer(model)]
    syncs = [attach(e, cluster) for e in instances]
    requests = grid(case)
    rng = random.Random(case)
    try:
        for step in range(90):
            name, args = random_call(rng, case)
            if name == "update_policy" and args[0] != args[1] and reference.has_policy(args[1]):
                continue  # casbin would hold the rule twice; the backend refuses instead
            expected = getattr(reference, name)(*args)
            target = instances[step % 3]
            answer = getattr(target, name)(*args)
            assert answer == expected, (step, name, args)
            seq = cluster.backend.seq
            for sync in syncs:
                assert sync.wait_for(seq, 5)
            want = [reference.enforce(*r) for r in requests]
            for e in instances:
                assert [e.enforce(*r) for r in requests] == want, (step, name, args)
        rules = {key: set(map(tuple, rs)) for key, rs in _policy_sets(reference).items()}
        for sync in syncs:
            assert sync.model.rules() == rules
    finally:
        for sync in syncs:
            sync.stop()


def _policy_sets(e: Any) -> dict[tuple[str, str], list[list[str]]]:
    out = {}
    for sec in ("p", "g"):
        for ptype, assertion in (e.get_model()[sec] or {}).items():
            if assertion.policy:
                out[(sec, ptype)] = assertion.policy
    return out


@pytest.mark.timeout(30)
def test_grouping_rbac_helpers_updates_and_clear_route_through_the_cluster() -> None:
    model = str(MODELS / "rbac_model.conf")
    cluster = MemoryCluster()
    a, b = casbin.SyncedEnforcer(model), casbin.Enforcer(model)
    syncs = [attach(a, cluster), attach(b, cluster)]
    try:
        assert a.add_role_for_user("alice", "admin") is True
        assert a.add_permission_for_user("admin", "data1", "read") is True
        assert a.enforce("alice", "data1", "read")  # read-your-writes on a
        assert syncs[1].wait_for(cluster.backend.seq, 5)  # b follows
        assert b.enforce("alice", "data1", "read")
        assert b.has_role_for_user("alice", "admin")
        assert b.remove_filtered_grouping_policy(0, "alice") == [["alice", "admin"]]
        syncs[0].wait_for(cluster.backend.seq)
        assert not a.enforce("alice", "data1", "read")
        assert a.update_policies([["admin", "data1", "read"]], [["admin", "data2", "read"]])
        assert b.update_filtered_policies([["admin", "data3", "read"]], 1, "data2")
        syncs[0].wait_for(cluster.backend.seq)
        assert a.get_policy() == [["admin", "data3", "read"]]
        a.clear_policy()
        syncs[1].wait_for(cluster.backend.seq)
        assert b.get_policy() == [] and a.get_policy() == []
        # The local model is never changed except through the feed.
        assert a.delete_user("nobody") is False
    finally:
        for sync in syncs:
            sync.stop()


@pytest.mark.timeout(30)
def test_dispatcher_interface_follows_go_self_semantics() -> None:
    model = str(MODELS / "basic_model.conf")
    cluster = MemoryCluster()
    e = casbin.DistributedEnforcer(model)
    sync = attach(e, cluster)
    d = Dispatcher(cluster.write, sync)
    d.set_enforcer(e)
    try:
        assert d.add_policies("p", "p", [["a", "d", "r"], ["b", "d", "r"]]) == [
            ["a", "d", "r"], ["b", "d", "r"]]
        assert d.add_policies("p", "p", [["a", "d", "r"], ["c", "d", "r"]]) == [["c", "d", "r"]]
        assert d.remove_policies("p", "p", [["a", "d", "r"], ["zz", "d", "r"]]) == [
            ["a", "d", "r"]]
        assert d.update_policy("p", "p", ["b", "d", "r"], ["b", "d", "w"]) is True
        assert d.update_policies("p", "p", [["b", "d", "w"]], [["b", "d", "x"]]) is True
        assert d.update_filtered_policies("p", "p", [["e", "d", "r"]], 0, ["c"]) == [
            ["c", "d", "r"]]
        assert d.remove_filtered_policy("p", "p", 1, ["d"]) == [["b", "d", "x"], ["e", "d", "r"]]
        assert e.get_policy() == []  # applied here before each call returned
        d.clear_policy()
        # Temporary rules need a session
        with pytest.raises(RuntimeError):
            d.add_temporary_policies("p", "p", [["t", "d", "r"]])
    finally:
        sync.stop()


@pytest.mark.timeout(30)
def test_temporary_rules_vanish_everywhere_when_the_session_ends() -> None:
    model = str(MODELS / "basic_model.conf")
    cluster = MemoryCluster()
    a, b = casbin.Enforcer(model), casbin.Enforcer(model)
    syncs = [attach(a, cluster), attach(b, cluster)]
    try:
        dispatcher = Dispatcher(cluster.write, syncs[0],
                                write_temporary=lambda cmd: cluster.write(cmd, "s"))
        assert dispatcher.add_temporary_policies("p", "p", [["guest", "data1", "read"]])
        assert a.enforce("guest", "data1", "read")
        cluster.expire("s")
        for sync in syncs:
            assert sync.wait_for(cluster.backend.seq, 5)
        assert not a.enforce("guest", "data1", "read")
        assert not b.enforce("guest", "data1", "read")
    finally:
        for sync in syncs:
            sync.stop()


@pytest.mark.timeout(30)
def test_a_sync_that_fell_behind_the_feed_reloads_the_whole_policy() -> None:
    model = str(MODELS / "rbac_model.conf")
    cluster = MemoryCluster()
    cluster.backend.max_feed_changes = 5
    e = casbin.Enforcer(model)
    sync = PolicySync(LocalModel(e), MemoryFeed(cluster), PollingWaker(3600, 3600))
    sync.start()
    try:
        for i in range(20):
            cluster.write(c.add("p", "p", [[f"u{i}", "d", "r"]]))
        cluster.write(c.add("g", "g", [["alice", "u3"]]))
        assert sync.reloads == 1
        assert sync.wait_for(cluster.backend.seq, 5)  # a waiter wakes the sync at once
        assert sync.reloads == 2
        assert e.enforce("alice", "d", "r")
        assert len(e.get_policy()) == 20
    finally:
        sync.stop()


@pytest.mark.timeout(30)
def test_local_model_keeps_positions_right_under_churn() -> None:
    model = str(MODELS / "rbac_model.conf")
    e = casbin.Enforcer(model)
    local = LocalModel(e)
    local.load([])
    rng = random.Random(7)
    present: set[tuple[str, ...]] = set()
    backend = CasbinBackend()
    for _ in range(2000):
        rule = [f"u{rng.randrange(30)}", f"d{rng.randrange(5)}", "r"]
        command = c.add("p", "p", [rule]) if rng.random() < 0.6 else c.remove("p", "p", [rule])
        before = backend.seq
        backend.apply(command)
        if backend.seq != before:
            local.apply(backend.query(c.changes_since(before)).data["changes"][0])
            if command["op"] == "add":
                present.add(tuple(rule))
            else:
                present.discard(tuple(rule))
    assert {tuple(r) for r in e.get_policy()} == present
    assert len(e.get_policy()) == len(present)

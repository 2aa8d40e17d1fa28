"""Issue 17, part 2: the WatcherEx default callback never depends on positions that the
enforcer's own calls move.

Property: three PyCasbin instances sharing one database (sqlalchemy-adapter on SQLite), each
with a ``RaftWatcher`` whose callback is ``default_update_callback`` in either form (Go's
one-argument ``(e)`` or ``(e, w)``), make random management calls; after every call, once
every watcher has read the log that far, every instance holds the rules a plain reference
enforcer that made the same calls holds, and answers ``enforce`` like it on a grid.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import casbin
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy_adapter import Adapter as SQLAdapter

from tests.casbin_plugin.test_casbin_sync import MemoryCluster
from tests.casbin_plugin.test_casbin_watcher import memory_watcher
from zraft.casbin.watcher import RaftWatcher, default_update_callback

MODELS = Path(__file__).parent / "casbin_models"
RBAC = str(MODELS / "rbac_model.conf")

USERS = ("alice", "bob", "carol")
ROLES = ("admin", "reader")
OBJECTS = ("data1", "data2")
ACTIONS = ("read", "write")
GRID = [(s, o, a) for s in USERS + ROLES for o in OBJECTS for a in ACTIONS]

p_rules = st.tuples(st.sampled_from(USERS + ROLES), st.sampled_from(OBJECTS),
                    st.sampled_from(ACTIONS)).map(list)
g_rules = st.tuples(st.sampled_from(USERS), st.sampled_from(ROLES)).map(list)
calls = st.one_of(
    st.tuples(st.just("add_policy"), p_rules),
    st.tuples(st.just("remove_policy"), p_rules),
    st.tuples(st.just("add_policies"), st.lists(p_rules, min_size=1, max_size=3,
                                                unique_by=tuple)),
    st.tuples(st.just("remove_policies"), st.lists(p_rules, min_size=1, max_size=3,
                                                   unique_by=tuple)),
    st.tuples(st.just("remove_filtered_policy"), st.sampled_from(USERS + ROLES + OBJECTS)),
    st.tuples(st.just("update_policy"), st.tuples(p_rules, p_rules)),
    st.tuples(st.just("add_grouping_policy"), g_rules),
    st.tuples(st.just("remove_grouping_policy"), g_rules),
    st.tuples(st.just("delete_user"), st.sampled_from(USERS)),
)


def call(e: Any, name: str, arg: Any) -> Any:
    if name in ("add_policy", "remove_policy", "add_grouping_policy",
                "remove_grouping_policy"):
        return getattr(e, name)(*arg)
    if name == "remove_filtered_policy":  # by subject, or by object
        return e.remove_filtered_policy(1 if arg in OBJECTS else 0, arg)
    if name == "update_policy":
        return e.update_policy(*arg)
    return getattr(e, name)(arg)


def pycasbin_leaves_itself_inconsistent(reference: Any, name: str, arg: Any) -> bool:
    """Calls after which plain pycasbin's enforcer and its database disagree (not made)."""
    if name == "remove_policies":  # one missing: pycasbin drops the others from its
        return not all(reference.has_policy(rule) for rule in arg)  # model, not the database
    if name == "update_policy":  # onto a rule it holds: the model holds it twice
        old, new = arg
        return old != new and reference.has_policy(new)
    return False


def rules_of(e: Any) -> dict[str, list[list[str]]]:
    return {"p": sorted(e.get_policy()), "g": sorted(e.get_grouping_policy())}


class Instances:
    """Three enforcers on one database, each with a watcher on one in-process log."""

    def __init__(self, url: str, go_style: bool) -> None:
        self.cluster = MemoryCluster()
        self.enforcers = [casbin.Enforcer(RBAC, SQLAdapter(url)) for _ in range(3)]
        self.watchers: list[RaftWatcher] = []
        for n, e in enumerate(self.enforcers):
            w = memory_watcher(self.cluster, f"instance-{n}")
            w.set_update_callback(default_update_callback(e) if go_style
                                  else default_update_callback(e, w))
            e.set_watcher(w)
            self.watchers.append(w)

    def settle(self) -> None:
        for w in self.watchers:
            assert w.wait_for(self.cluster.backend.seq, 10)

    def close(self) -> None:
        for w in self.watchers:
            w.close()


_database = itertools.count()


@pytest.mark.timeout(300)
@pytest.mark.parametrize("go_style", [True, False], ids=["callback(e)", "callback(e, w)"])
def test_every_instance_equals_a_plain_enforcer_after_every_call(
    tmp_path: Path, go_style: bool
) -> None:
    @settings(max_examples=25, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.function_scoped_fixture,
                                     HealthCheck.too_slow])
    @given(st.lists(st.tuples(st.integers(0, 2), calls), min_size=1, max_size=25))
    def property_holds(steps: list[tuple[int, tuple[str, Any]]]) -> None:
        url = f"sqlite:///{tmp_path / f'policy-{next(_database)}.db'}"
        instances = Instances(url, go_style)
        reference = casbin.Enforcer(RBAC)
        try:
            for number, (who, (name, arg)) in enumerate(steps):
                if pycasbin_leaves_itself_inconsistent(reference, name, arg):
                    continue
                expected = call(reference, name, arg)
                assert call(instances.enforcers[who], name, arg) == expected, (number, name)
                instances.settle()
                want = [reference.enforce(*request) for request in GRID]
                for n, e in enumerate(instances.enforcers):
                    assert rules_of(e) == rules_of(reference), (number, name, arg, n)
                    assert [e.enforce(*request) for request in GRID] == want, (number, n)
        finally:
            instances.close()

    property_holds()

"""The local model keeps casbin's own order and never trusts a position it has not checked.

Owned mode (the Dispatcher path) finds rules through an index of slots; after any number of
changes the list must be exactly what pycasbin's own model operations make of the same
changes, and a list changed behind the index's back (someone moving rules) must be noticed,
not written through.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import casbin
import pytest

from zraft.casbin.local_model import LocalModel

MODELS = Path(__file__).parent / "casbin_models"
RBAC = str(MODELS / "rbac_model.conf")


def change(op: str, rules: list[list[str]], old: list[list[str]] | None = None
           ) -> dict[str, Any]:
    out: dict[str, Any] = {"op": op, "sec": "p", "ptype": "p", "rules": rules}
    if old is not None:
        out["old"] = old
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shared", [False, True], ids=["owned", "shared"])
def test_the_list_is_exactly_what_casbins_own_operations_make(shared: bool) -> None:
    e, reference = casbin.Enforcer(RBAC), casbin.Enforcer(RBAC)
    local = LocalModel(e, shared=shared)
    local.load([["p", "p", [[f"u{i}", "d0", "r"] for i in range(20)]]])
    for i in range(20):
        reference.get_model().add_policy("p", "p", [f"u{i}", "d0", "r"])
    model = reference.get_model()
    rng = random.Random(17)
    for _ in range(4000):  # enough appends to hand ids out afresh several times
        held = model["p"]["p"].policy
        rule = [f"u{rng.randrange(60)}", f"d{rng.randrange(3)}", "r"]
        roll = rng.random()
        if roll < 0.45:
            if model.add_policy("p", "p", rule):
                local.apply(change("add", [rule]))
        elif roll < 0.85 and held:
            gone = list(rng.choice(held))
            model.remove_policy("p", "p", gone)
            local.apply(change("remove", [gone]))
        elif held and rule not in held:
            old = list(rng.choice(held))
            model.update_policy("p", "p", old, rule)
            local.apply(change("update", [rule], [old]))
        assert e.get_policy() == model["p"]["p"].policy


@pytest.mark.timeout(30)
def test_rules_moved_behind_the_index_are_found_where_they_are() -> None:
    e = casbin.Enforcer(RBAC)
    local = LocalModel(e)
    rules = [[f"u{i}", "d", "r"] for i in range(6)]
    local.load([["p", "p", rules]])
    local.apply(change("remove", [["u0", "d", "r"]]))  # the index has an entry to correct
    policy = e.get_model()["p"]["p"].policy
    policy.reverse()  # someone else reorders the list in place: same object, same length
    local.apply(change("remove", [["u2", "d", "r"]]))
    local.apply(change("update", [["u9", "d", "r"]], [["u4", "d", "r"]]))
    assert policy == [["u5", "d", "r"], ["u9", "d", "r"], ["u3", "d", "r"], ["u1", "d", "r"]]
    policy[0], policy[3] = policy[3], policy[0]  # and swaps two rules
    local.apply(change("remove", [["u1", "d", "r"], ["u3", "d", "r"]]))
    assert policy == [["u9", "d", "r"], ["u5", "d", "r"]]
    e.get_model()["p"]["p"].policy = [["x", "d", "r"]]  # or replaces the list
    local.apply(change("add", [["y", "d", "r"]]))
    assert e.get_policy() == [["x", "d", "r"], ["y", "d", "r"]]


@pytest.mark.timeout(30)
def test_an_update_with_a_side_the_model_cannot_hold_becomes_an_add_or_a_removal() -> None:
    e = casbin.Enforcer(str(MODELS / "rbac_with_domains_model.conf"))
    local = LocalModel(e)
    local.load([["p", "p", [["a", "dom", "d", "r"], ["b", "dom", "d", "r"]]]])
    local.apply(change("update", [["a", "d", "r"]], [["a", "dom", "d", "r"]]))  # new unfit
    local.apply(change("update", [["x", "dom", "d", "r"]], [["x", "d", "r"]]))  # old unfit
    local.apply(change("update", [["z"]], [["y"]]))  # neither fits: one change skipped
    assert e.get_policy() == [["b", "dom", "d", "r"], ["x", "dom", "d", "r"]]
    assert (local.skipped_changes, local.skipped_rules) == (3, 4)

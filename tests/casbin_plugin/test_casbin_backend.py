"""The Casbin backend: casbin's results for every op, the change feed, temporary rules,
watch keys, determinism and snapshots."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from zraft.backends import CommandRejected, InvalidSnapshot, checked_apply
from zraft.casbin import commands as c
from zraft.casbin.backend import (
    SEQ_KEY,
    SNAPSHOT_FILE,
    CasbinBackend,
    ptype_key,
    rule_key,
    subject_key,
)


def make() -> CasbinBackend:
    backend = CasbinBackend()
    backend.init("127.0.0.1:7000")
    return backend


def policy(backend: CasbinBackend) -> list[Any]:
    return backend.query(c.policy()).data["policy"]


def snapshot_bytes(backend: CasbinBackend, directory: Path) -> bytes:
    directory.mkdir(parents=True, exist_ok=True)
    backend.snapshot()(directory)
    return (directory / SNAPSHOT_FILE).read_bytes()


@pytest.mark.timeout(10)
def test_add_and_remove_answer_like_casbin() -> None:
    b = make()
    r = b.apply(c.add("p", "p", [["alice", "data1", "read"]])).result
    assert r == {"changed": True, "rules": [["alice", "data1", "read"]], "old": [], "seq": 1}
    # An existing rule: casbin's add_policy answers False and changes nothing.
    assert b.apply(c.add("p", "p", [["alice", "data1", "read"]])).result["changed"] is False
    # add_policies is all-or-nothing; add_policies_ex adds the missing ones.
    both = [["alice", "data1", "read"], ["bob", "data2", "write"]]
    assert b.apply(c.add("p", "p", both)).result["changed"] is False
    r = b.apply(c.add("p", "p", both, ex=True)).result
    assert r["rules"] == [["bob", "data2", "write"]] and r["seq"] == 2
    assert b.apply(c.remove("p", "p", [["nobody", "x", "y"], ["bob", "data2", "write"]])
                   ).result["changed"] is False
    assert policy(b) == [["p", "p", both]]
    r = b.apply(c.remove("p", "p", [["bob", "data2", "write"]])).result
    assert r["changed"] and r["rules"] == [["bob", "data2", "write"]] and r["seq"] == 3
    assert b.query(c.has("p", "p", ["alice", "data1", "read"])).data is True
    assert b.query(c.has("p", "p", ["bob", "data2", "write"])).data is False


@pytest.mark.timeout(10)
def test_filtered_removal_and_updates_keep_policy_order() -> None:
    b = make()
    rules = [["alice", "d1", "read"], ["bob", "d1", "read"], ["alice", "d2", "write"],
             ["carol", "d1", "write"]]
    b.apply(c.add("p", "p", rules))
    r = b.apply(c.remove_filtered("p", "p", 0, ["alice"])).result
    assert r["rules"] == [["alice", "d1", "read"], ["alice", "d2", "write"]]
    # "" matches anything; field_index shifts the filter.
    assert b.query(c.filtered("p", "p", 1, ["d1", ""])).data == [["bob", "d1", "read"],
                                                                   ["carol", "d1", "write"]]
    r = b.apply(c.update("p", "p", [["bob", "d1", "read"]], [["bob", "d9", "read"]])).result
    assert r["changed"] and r["old"] == [["bob", "d1", "read"]]
    assert policy(b) == [["p", "p", [["bob", "d9", "read"], ["carol", "d1", "write"]]]]
    # An update onto an existing rule, or from a missing one, changes nothing.
    assert not b.apply(c.update("p", "p", [["bob", "d9", "read"]], [["carol", "d1", "write"]])
                       ).result["changed"]
    assert not b.apply(c.update("p", "p", [["x", "y", "z"]], [["a", "b", "c"]])).result["changed"]
    # Swapping two rules in one batch is allowed.
    r = b.apply(c.update("p", "p", [["bob", "d9", "read"], ["carol", "d1", "write"]],
                         [["carol", "d1", "write"], ["bob", "d9", "read"]])).result
    assert r["changed"]
    assert policy(b) == [["p", "p", [["carol", "d1", "write"], ["bob", "d9", "read"]]]]
    r = b.apply(c.update_filtered("p", "p", [["dave", "d3", "read"]], 1, ["d1"])).result
    assert r["old"] == [["carol", "d1", "write"]] and r["rules"] == [["dave", "d3", "read"]]
    assert policy(b) == [["p", "p", [["bob", "d9", "read"], ["dave", "d3", "read"]]]]


@pytest.mark.timeout(10)
def test_clear_and_grouping_and_subject_query() -> None:
    b = make()
    b.apply(c.add("p", "p", [["admin", "d1", "read"], ["alice", "d2", "read"]]))
    b.apply(c.add("g", "g", [["alice", "admin"]]))
    b.apply(c.add("g", "g2", [["d1", "group1"]]))
    assert b.query(c.subject("alice")).data == [["g", "g", ["alice", "admin"]],
                                                ["p", "p", ["alice", "d2", "read"]]]
    assert b.query(c.subject("admin")).data == [["g", "g", ["alice", "admin"]],
                                                ["p", "p", ["admin", "d1", "read"]]]
    r = b.apply(c.clear())
    assert r.result["changed"] and subject_key("alice") in r.trigger_keys
    assert policy(b) == [] and len(b) == 0
    assert b.apply(c.clear()).result["changed"] is False


@pytest.mark.timeout(10)
def test_bad_commands_are_rejected_with_a_reason() -> None:
    b = make()
    bad = [
        "add", {"op": "nope"}, {"op": "add", "sec": "p", "ptype": "p"},
        {"op": "add", "sec": "x", "ptype": "p", "rules": [["a"]]},
        {"op": "add", "sec": "p", "ptype": "g", "rules": [["a"]]},
        {"op": "add", "sec": "p", "ptype": "p", "rules": []},
        {"op": "add", "sec": "p", "ptype": "p", "rules": [[1, 2]]},
        {"op": "add", "sec": "p", "ptype": "p", "rules": [["a"]], "extra": 1},
        {"op": "remove_filtered", "sec": "p", "ptype": "p", "field_index": 0, "field_values": [1]},
        {"op": "define", "shape": [["p", "p", 3]]},
        {"op": "define", "shape": [["p", "p", 0, -1]]},
        {"op": "define", "shape": [["p", "p", 3, 3]]},
        {"op": "define", "shape": [["g", "g", 2, 0]]},
        {"op": "define", "shape": [["p", "p", 3, -1], ["p", "p", 4, -1]]},
        {"op": "update", "sec": "p", "ptype": "p", "old_rules": [["a"]], "new_rules": []},
        {"op": "policy"},  # a query is not a command
    ]
    for command in bad:
        with pytest.raises(CommandRejected):
            b.apply(command)
        assert checked_apply(b, command).code == "rejected"  # type: ignore[union-attr]
    with pytest.raises(CommandRejected):
        b.query(c.add("p", "p", [["a"]]))
    assert b.seq == 0 and len(b) == 0


@pytest.mark.timeout(10)
def test_trigger_and_watch_keys_name_subjects_and_rules() -> None:
    b = make()
    r = b.apply(c.add("g", "g", [["alice", "admin"]]))
    assert r.trigger_keys == {SEQ_KEY, ptype_key("g", "g"), subject_key("alice"),
                              subject_key("admin"), rule_key("g", "g", ["alice", "admin"])}
    assert b.apply(c.add("g", "g", [["alice", "admin"]])).trigger_keys == frozenset()
    assert b.query(c.has("g", "g", ["alice", "admin"])).watch_keys == {
        rule_key("g", "g", ["alice", "admin"])}
    assert b.query(c.subject("bob")).watch_keys == {subject_key("bob")}
    assert b.query(c.changes_since(0)).watch_keys == {SEQ_KEY}


@pytest.mark.timeout(10)
def test_change_feed_in_order_then_full_policy_when_too_old() -> None:
    b = make()
    b.max_feed_changes = 3
    for i in range(5):
        b.apply(c.add("p", "p", [[f"u{i}", "d", "read"]]))
    b.apply(c.update("p", "p", [["u0", "d", "read"]], [["u0", "d", "write"]]))
    feed = b.query(c.changes_since(3)).data
    assert [ch["seq"] for ch in feed["changes"]] == [4, 5, 6] and feed["more"] is False
    assert feed["changes"][-1] == {"seq": 6, "op": "update", "sec": "p", "ptype": "p",
                                   "rules": [["u0", "d", "write"]], "old": [["u0", "d", "read"]]}
    assert b.query(c.changes_since(4, limit=1)).data["more"] is True
    assert b.query(c.changes_since(6)).data == {"seq": 6, "changes": [], "more": False}
    assert b.query(c.changes_since(60)).data["changes"] == []  # a lagging peer: nothing new
    full = b.query(c.changes_since(2)).data
    assert full["seq"] == 6 and full["full"] == policy(b)


@pytest.mark.timeout(10)
def test_temporary_rules_go_with_their_session() -> None:
    b = make()
    b.apply(c.add("p", "p", [["alice", "d1", "read"]]))
    r = b.apply_session(c.add("p", "p", [["alice", "d1", "read"], ["tmp", "d1", "read"]],
                              ex=True), "s1")
    assert r.result["rules"] == [["tmp", "d1", "read"]]
    b.apply_session(c.add("g", "g", [["tmp", "admin"]]), "s1")
    b.apply_session(c.add("g", "g", [["other", "admin"]]), "s2")
    assert b.owner("p", "p", ["tmp", "d1", "read"]) == "s1"
    assert b.owner("p", "p", ["alice", "d1", "read"]) is None  # existed before: not taken over
    with pytest.raises(CommandRejected):
        b.apply_session(c.remove("p", "p", [["alice", "d1", "read"]]), "s1")
    # An update keeps the rule temporary.
    b.apply(c.update("p", "p", [["tmp", "d1", "read"]], [["tmp", "d2", "read"]]))
    keys = b.expire_session("s1")
    assert {rule_key("p", "p", ["tmp", "d2", "read"]), rule_key("g", "g", ["tmp", "admin"]),
            SEQ_KEY} <= keys
    assert policy(b) == [["g", "g", [["other", "admin"]]], ["p", "p", [["alice", "d1", "read"]]]]
    assert b.expire_session("s1") == frozenset()
    b.apply(c.remove("g", "g", [["other", "admin"]]))  # removing makes the session own nothing
    assert b.expire_session("s2") == frozenset()


def random_commands(rng: random.Random, count: int) -> list[tuple[Any, str | None]]:
    subjects = [f"u{i}" for i in range(6)]
    objects = [f"d{i}" for i in range(4)]

    def rule() -> list[str]:
        return [rng.choice(subjects), rng.choice(objects), rng.choice(["read", "write"])]

    out: list[tuple[Any, str | None]] = []
    for _ in range(count):
        kind = rng.randrange(9)
        session = rng.choice([None, None, "s1", "s2"])
        if kind <= 2:
            out.append((c.add("p", "p", [rule() for _ in range(rng.randint(1, 3))],
                              ex=rng.random() < 0.5), session))
        elif kind == 3:
            out.append((c.add("g", "g", [[rng.choice(subjects), "admin"]]), session))
        elif kind == 4:
            out.append((c.remove("p", "p", [rule()], ex=True), None))
        elif kind == 5:
            out.append((c.remove_filtered("p", "p", rng.randrange(2),
                                          [rng.choice(subjects + objects)]), None))
        elif kind == 6:
            out.append((c.update("p", "p", [rule()], [rule()]), None))
        elif kind == 7:
            out.append((c.update_filtered("p", "p", [rule()], 1, [rng.choice(objects)]), None))
        else:
            out.append(({"expire": rng.choice(["s1", "s2"])}, None) if rng.random() < 0.8
                       else (c.clear(), None))
    return out


def run(backend: CasbinBackend, commands: list[tuple[Any, str | None]]) -> list[Any]:
    results = []
    for command, session in commands:
        if "expire" in command:
            results.append(sorted(backend.expire_session(command["expire"])))
        else:
            outcome = checked_apply(backend, command, session)
            results.append((outcome.result, sorted(outcome.trigger_keys)))  # type: ignore[union-attr]
    return results


@pytest.mark.timeout(60)
def test_same_commands_same_results_and_snapshot_bytes(tmp_path: Path) -> None:
    for seed in range(20):
        commands = random_commands(random.Random(seed), 200)
        one, two = make(), make()
        assert run(one, commands) == run(two, commands)
        first = snapshot_bytes(one, tmp_path / f"{seed}a")
        assert first == snapshot_bytes(two, tmp_path / f"{seed}b")


@pytest.mark.timeout(60)
def test_snapshot_round_trip_then_same_future(tmp_path: Path) -> None:
    for seed in range(10):
        rng = random.Random(seed)
        before, after = random_commands(rng, 150), random_commands(rng, 150)
        original = make()
        original.max_feed_changes = 40
        run(original, before)
        directory = tmp_path / str(seed)
        first = snapshot_bytes(original, directory)
        copy = make()
        copy.max_feed_changes = 40
        copy.install(directory)
        assert snapshot_bytes(copy, tmp_path / f"{seed}-copy") == first
        for since in (0, copy.seq - 3, copy.seq):
            assert copy.query(c.changes_since(since)).data == \
                original.query(c.changes_since(since)).data
        assert run(original, after) == run(copy, after)
        assert policy(original) == policy(copy)


@pytest.mark.timeout(10)
def test_install_refuses_damaged_snapshots_and_keeps_the_state(tmp_path: Path) -> None:
    b = make()
    b.apply(c.add("p", "p", [["alice", "d1", "read"]]))
    good = snapshot_bytes(b, tmp_path / "good")
    target = make()
    target.apply(c.add("g", "g", [["bob", "admin"]]))
    kept = policy(target)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(InvalidSnapshot, match="missing"):
        target.install(broken)
    for damaged in (good[:10], good[:-1], good[:25] + bytes([good[25] ^ 1]) + good[26:],
                    b"ZRKV" + good[4:]):
        (broken / SNAPSHOT_FILE).write_bytes(damaged)
        with pytest.raises(InvalidSnapshot):
            target.install(broken)
        assert policy(target) == kept


@pytest.mark.timeout(10)
def test_seed_applies_only_to_a_cluster_that_never_changed() -> None:
    b = make()
    initial = [("p", "p", [["alice", "d1", "read"]]), ("g", "g", [["alice", "admin"]])]
    r = b.apply(c.seed(initial)).result
    assert r["changed"] and r["seq"] == 2  # one change per ptype, in (sec, ptype) order
    assert [ch["ptype"] for ch in b.query(c.changes_since(0)).data["changes"]] == ["g", "p"]
    assert b.apply(c.seed([("p", "p", [["mallory", "d1", "read"]])])).result["changed"] is False
    assert policy(b) == [["g", "g", [["alice", "admin"]]], ["p", "p", [["alice", "d1", "read"]]]]
    with pytest.raises(CommandRejected):
        b.apply({"op": "seed", "policy": [["p", "p", []], ["p", "p", []]]})


@pytest.mark.timeout(10)
def test_notify_orders_a_message_without_touching_the_policy() -> None:
    b = make()
    message = {"Method": "UpdateForAddPolicy", "ID": "w1", "Sec": "p", "Ptype": "p",
               "NewRule": ["eve", "d3", "read"], "NewRules": None, "FieldIndex": 0}
    r = b.apply(c.notify(message))
    assert r.result["seq"] == 1 and r.trigger_keys == {SEQ_KEY, "casbin/messages"}
    assert b.query(c.changes_since(0)).data["changes"] == [
        {"seq": 1, "op": "message", "message": message}]
    assert policy(b) == []
    for bad in ({"ID": "x"}, {"Method": "Update", "Bogus": 1}, {"Method": "Update",
                                                               "NewRule": [1]},
                {"Method": "Update", "FieldIndex": "0"}):
        with pytest.raises(CommandRejected):
            b.apply({"op": "notify", "message": bad})

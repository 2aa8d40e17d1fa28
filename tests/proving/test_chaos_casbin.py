"""The fault suite's ``casbin`` workload: its checker catches planted anomalies (an instance
that diverges, an acknowledged change missing from the feed, a change applied twice, ...),
its backend digests what it applied, workloads of different backends run apart, and one
bounded run of Casbin instances under kills and partitions ends with no anomaly."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.clocks import TickClock
from zraft.casbin import commands as c
from zraft.casbin.shape import model_shape
from zraft.chaos.backend import DIGEST_QUERY
from zraft.chaos.casbin_workload import (
    WORKLOAD_SHAPE,
    CasbinFinal,
    CasbinWorkload,
    ChaosCasbinBackend,
    InstanceState,
    Policy,
    check_casbin,
    new_enforcer,
    reference_answers,
    replay,
)
from zraft.chaos.nemesis import ScheduleOptions
from zraft.chaos.registry import WORKLOADS
from zraft.chaos.runner import RunOptions, backend_groups, run_once
from zraft.linearizability import History, Operation

# (client, op, sec, rule, old, outcome, seq): seq None = no output (unknown)
CALLS: list[tuple[int, str, str, list[str], list[str] | None, str, int | None]] = [
    (0, "add", "p", ["alice", "data1", "read"], None, "ok", 1),
    (1, "add", "g", ["bob", "admin"], None, "ok", 2),
    (2, "update", "p", ["alice", "data2", "write"], ["alice", "data1", "read"], "ok", 3),
    (0, "remove", "g", ["bob", "admin"], None, "ok", 4),
    (1, "add", "p", ["admin", "data1", "write"], None, "unknown", None),  # it did happen: 5
    (2, "add", "g", ["carol", "admin"], None, "ok", 6),
    (0, "remove", "p", ["bob", "data1", "read"], None, "fail", None),
]


def _history(calls: list[Any] = CALLS) -> list[Operation]:
    history = History(clock=TickClock())
    for client, op, sec, rule, old, outcome, seq in calls:
        value: dict[str, Any] = {"sec": sec, "ptype": sec, "rules": [rule]}
        if old is not None:
            value["old"] = [old]
        handle = history.invoke(client, op, f"{sec}/{sec}", value=value)
        if outcome == "ok":
            history.ok(handle, {"returned": True, "changed": True, "seq": seq})
        elif outcome == "fail":
            history.fail(handle)
        else:
            history.unknown(handle)
    return history.operations()


def _feed() -> list[dict[str, Any]]:
    changes = []
    for _client, op, sec, rule, old, outcome, _seq in CALLS:
        if outcome == "fail":
            continue
        change: dict[str, Any] = {
            "seq": len(changes) + 1,
            "op": op,
            "sec": sec,
            "ptype": sec,
            "rules": [rule],
        }
        if old is not None:
            change["old"] = [old]
        changes.append(change)
    return changes


WANT: Policy = {
    "p/p": {("alice", "data2", "write"), ("admin", "data1", "write")},
    "g/g": {("carol", "admin")},
}


def _final(changes: list[dict[str, Any]] | None = None, policy: Policy = WANT) -> CasbinFinal:
    changes = _feed() if changes is None else changes
    answers = reference_answers(policy)
    return CasbinFinal(
        changes=changes,
        seq=changes[-1]["seq"] if changes else 0,
        instances={
            f"instance-{n}": InstanceState(changes[-1]["seq"], copy.deepcopy(policy), answers)
            for n in range(3)
        },
    )


def _renumbered(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [dict(change, seq=n + 1) for n, change in enumerate(changes)]


# --------------------------------------------------------------------------- checker


@pytest.mark.timeout(30)
def test_checker_passes_a_clean_history() -> None:
    final = _final()
    assert replay(final) == (WANT, [])
    assert check_casbin(_history(), final) == []
    answers = final.instances["instance-0"].answers  # type: ignore[union-attr]
    assert any(answers) and not all(answers)  # the grid tells policies apart


@pytest.mark.timeout(30)
def test_checker_catches_an_instance_that_diverges() -> None:
    final = _final()
    diverged = final.instances["instance-1"]
    assert diverged is not None
    diverged.policy["g/g"].add(("bob", "admin"))
    diverged.answers = reference_answers(diverged.policy)
    problems = check_casbin(_history(), final)
    assert len(problems) == 2, problems
    assert "instance-1: its policy differs from the serial replay" in problems[0]
    assert "extra [\"g/g ['bob', 'admin']\"], missing []" in problems[0]
    assert "instance-1: enforce answers differ" in problems[1]


@pytest.mark.timeout(30)
def test_checker_catches_an_instance_that_did_not_converge() -> None:
    final = _final()
    final.instances["instance-2"] = InstanceState(5, copy.deepcopy(WANT), reference_answers(WANT))
    final.instances["instance-3"] = None
    problems = check_casbin(_history(), final)
    assert any("instance-2: applied up to change 5, not 6" in p for p in problems), problems
    assert any("instance-3: never connected" in p for p in problems), problems


@pytest.mark.timeout(30)
def test_checker_catches_an_acknowledged_change_missing_from_the_feed() -> None:
    lost = _renumbered([ch for ch in _feed() if ch["seq"] != 4])  # "remove g bob admin"
    state, impossible = replay(_final(lost))
    assert impossible == [] and ("bob", "admin") in state["g/g"]
    problems = check_casbin(_history(), _final(lost, state))  # instances agree with the feed
    assert problems and "acknowledged changes missing from the feed" in problems[0], problems
    assert "#3 remove" in problems[0] and "#5 add" in problems[0]  # 6 moved to seq 5


@pytest.mark.timeout(30)
def test_checker_catches_a_change_applied_twice() -> None:
    changes = _feed()
    changes.append(dict(changes[-1], seq=7))  # "add g carol admin" once more
    problems = check_casbin(_history(), _final(changes))
    assert any("adds ['carol', 'admin'] again (applied twice)" in p for p in problems), problems
    assert any("more often than invoked" in p for p in problems), problems
    # A removal applied twice, with the rule re-added in between by a call nobody made.
    changes = _feed()
    changes += [
        {"seq": 7, "op": "add", "sec": "g", "ptype": "g", "rules": [["bob", "admin"]]},
        {"seq": 8, "op": "remove", "sec": "g", "ptype": "g", "rules": [["bob", "admin"]]},
    ]
    problems = check_casbin(_history(), _final(changes))
    assert len(problems) == 1 and "more often than invoked" in problems[0], problems
    assert '["add", "g", "g", [["bob", "admin"]], []] x2' in problems[0]
    assert '["remove", "g", "g", [["bob", "admin"]], []] x2' in problems[0]


@pytest.mark.timeout(30)
def test_checker_catches_misordered_and_doubly_claimed_acknowledgements() -> None:
    swapped = [list(call) for call in CALLS]
    swapped[0][6], swapped[1][6] = 2, 1  # the first call's change after the second's
    feed = _feed()
    feed[0], feed[1] = dict(feed[1], seq=1), dict(feed[0], seq=2)
    problems = check_casbin(_history(swapped), _final(feed))
    assert len(problems) == 1, problems
    assert "1 acknowledged changes ordered against real time: #1 (seq 1) after #0" in problems[0]
    claimed = [list(call) for call in CALLS]
    claimed[5][6] = 3  # two calls answered with the same change
    problems = check_casbin(_history(claimed), _final())
    assert any("claimed by two acknowledged calls: seq 3" in p for p in problems), problems


@pytest.mark.timeout(30)
def test_a_truncated_feed_replays_from_the_snapshot_policy() -> None:
    base: Policy = {"p/p": {("alice", "data2", "write")}, "g/g": {("bob", "admin")}}  # at 3
    final = _final(_feed()[3:])
    final.base_seq, final.base = 3, base
    assert final.truncated and replay(final) == (WANT, [])
    assert check_casbin(_history(), final) == []  # seqs 1..3 vouched for by the end state
    final.changes = final.changes[1:]  # change 4 is gone too: the feed has a hole
    assert any("skips from change 3 to 5" in p for p in check_casbin(_history(), final))


@pytest.mark.timeout(30)
def test_workload_check_without_a_final_read_decides_nothing() -> None:
    workload = CasbinWorkload(1)
    try:
        workload.history = History(clock=TickClock())
        verdict = workload.check(timeout=10)
        assert verdict.ok is None and verdict.anomalies == ["no final read: nothing checked"]
        workload.final = _final()
        for op in _history():
            handle = workload.history.invoke(op.client, op.op, op.key, value=op.value)
            if op.output is not None:
                workload.history.ok(handle, op.output)
            else:
                workload.history.unknown(handle)
        verdict = workload.check(timeout=10)
        assert verdict.ok is True and verdict.completed == 5, verdict
        workload.final.instances["instance-0"] = None
        assert workload.check(timeout=10).ok is False
    finally:
        workload.close()


@pytest.mark.timeout(30)
def test_checker_wants_poison_in_the_feed_skipped_by_every_instance() -> None:
    assert model_shape(new_enforcer().get_model()) == WORKLOAD_SHAPE
    poison = [
        {"seq": 7, "op": "add", "sec": "g", "ptype": "g", "rules": [["bob"]]},
        {"seq": 8, "op": "add", "sec": "p", "ptype": "p9", "rules": [["bob", "data1", "read"]]},
    ]
    calls = [*CALLS, (1, "add", "g", ["bob"], None, "ok", 7), (2, "add", "p", ["bob", "data1",
                                                                            "read"], None,
                                                               "unknown", None)]
    history = _history(calls)
    history[-1].value["ptype"] = "p9"
    final = _final(_feed() + poison)  # instances hold WANT: the poison skipped
    assert check_casbin(history, final) == []
    held = final.instances["instance-0"]
    assert held is not None
    held.policy["g/g"].add(("bob",))  # one that did not skip it
    problems = check_casbin(history, final)
    assert len(problems) == 1 and "instance-0: its policy differs" in problems[0], problems
    held.policy["g/g"].discard(("bob",))
    held.metrics["failed_changes"] = 1  # one whose apply failed (then reloaded)
    problems = check_casbin(history, final)
    assert problems == ["instance-0: 1 change(s) failed to apply (skipped, then the policy "
                        "reloaded)"], problems


@pytest.mark.timeout(30)
def test_workload_check_reports_poison_handled_wrongly() -> None:
    workload = CasbinWorkload(1)
    try:
        workload.final = _final()
        for op in _history():
            handle = workload.history.invoke(op.client, op.op, op.key, value=op.value)
            if op.output is not None:
                workload.history.ok(handle, op.output)
            else:
                workload.history.unknown(handle)
        assert workload.check(timeout=10).ok is True
        workload.poison_anomalies.append("add_policy('alice', 'data1') was taken")
        verdict = workload.check(timeout=10)
        assert verdict.ok is False
        assert verdict.anomalies == ["1 poison handled wrongly: add_policy('alice', 'data1') "
                                     "was taken"]
    finally:
        workload.close()


# --------------------------------------------------------------------------- pieces


@pytest.mark.timeout(30)
def test_backend_digests_applied_commands_and_keeps_the_digest_in_snapshots(
    tmp_path: Path,
) -> None:
    first, second = ChaosCasbinBackend(), ChaosCasbinBackend()
    for backend in (first, second):
        assert backend.apply(c.add("p", "p", [["a", "d", "read"]])).result["seq"] == 1
        backend.apply(c.add("g", "g", [["a", "admin"]]))
    assert first.query(DIGEST_QUERY).data == second.query(DIGEST_QUERY).data
    assert first.query(DIGEST_QUERY).data["applied"] == 2
    first.apply(c.remove("g", "g", [["a", "admin"]]))
    second.apply(c.remove("p", "p", [["a", "d", "read"]]))
    assert first.query(DIGEST_QUERY).data != second.query(DIGEST_QUERY).data
    first.snapshot()(tmp_path)
    restored = ChaosCasbinBackend()
    restored.install(tmp_path)
    assert restored.query(DIGEST_QUERY).data == first.query(DIGEST_QUERY).data
    assert restored.query(c.policy()).data == first.query(c.policy()).data


@pytest.mark.timeout(30)
def test_workloads_of_different_backends_run_apart() -> None:
    assert WORKLOADS["casbin"] is CasbinWorkload
    assert backend_groups(("kv", "casbin", "counter")) == [("kv", "counter"), ("casbin",)]
    RunOptions(workloads=("kv", "casbin")).validate()  # a series runs them one at a time
    with pytest.raises(ValueError, match="one backend"):
        run_once(RunOptions(workloads=("casbin", "kv")))


# --------------------------------------------------------------------------- a real run


@pytest.mark.timeout(300)
def test_casbin_instances_converge_under_kills_and_partitions(chaos_out: Path) -> None:
    nemeses = ("kill", "partition")
    options = RunOptions(
        seed=21,
        seconds=25.0,
        baseline_seconds=3.0,
        nemeses=nemeses,
        workloads=("casbin",),
        out=chaos_out,
        check_timeout=60.0,
        schedule=ScheduleOptions(mixed=0.5),
    )
    report = run_once(options)
    text = report.summary()
    print(text)
    assert report.verdict == "pass", text
    assert not report.errors, text
    assert {fault["nemesis"] for fault in report.faults} == set(nemeses), text
    (verdict,) = report.workloads
    assert verdict["workload"] == "casbin" and verdict["completed"] > 30, text
    assert "3 instances, no anomaly" in verdict["detail"], text
    replayed = re.match(r"casbin: (\d+) changes replayed", verdict["detail"])
    assert replayed and int(replayed[1]) > 30, verdict["detail"]  # real changes, not no-ops
    # Poison was mixed in, refused where it must be, and some of it, in the log, was
    # skipped by every instance while they carried on (the anomalies above: none).
    skipped = re.search(r"(\d+) of them poison skipped by every instance", verdict["detail"])
    assert skipped and int(skipped[1]) > 0, verdict["detail"]
    assert re.search(r"enforcer: \d+ refused at the caller", verdict["detail"]), text
    assert re.search(r"direct: [^;]*\d+ refused by the cluster", verdict["detail"]), text
    assert report.convergence["ok"] is True, text  # same digest on every peer, same logs
    assert not Path(report.run_dir, "peers").exists()  # a passing run keeps no bulk

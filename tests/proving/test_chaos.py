"""The fault suite (zraft.chaos): its checkers catch planted anomalies, its pieces work, and
a few bounded runs against 5 real peers under kills, pauses, partitions, membership changes
and a failing disk end with no anomaly.

CI runs three short runs (about 30 s each). ``ZRAFT_CHAOS_MINUTES=N`` replaces them with a
series of full runs, every nemesis mixed, for N minutes.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.clocks import TickClock
from zraft.backends import kv
from zraft.chaos.backend import DIGEST_QUERY, ChaosBackend, count, incr
from zraft.chaos.cli import _NEMESES, _WORKLOADS, add_chaos_command
from zraft.chaos.convergence import Convergence, compare_logs
from zraft.chaos.nemesis import NEMESES, Schedule, ScheduleOptions
from zraft.chaos.registry import WORKLOADS
from zraft.chaos.report import RunReport
from zraft.chaos.runner import RunOptions, run_once, run_series, summarize
from zraft.chaos.workloads import CounterWorkload, RegisterWorkload, check_counter
from zraft.cli import main
from zraft.core import Entry
from zraft.linearizability import History, Operation
from zraft.storage import SegmentedLog

LONG_MINUTES = float(os.environ.get("ZRAFT_CHAOS_MINUTES", "0") or 0)


# --------------------------------------------------------------------------- checkers


def _counter_history() -> list[Operation]:
    """Two acknowledged increments, then a read that saw both."""
    history = History(clock=TickClock())
    a = history.invoke(0, "incr", "ctr-0", value="0-0")
    history.ok(a, 1)
    b = history.invoke(1, "incr", "ctr-0", value="1-1")
    history.ok(b, 2)
    r = history.invoke(0, "read", "ctr-0")
    history.ok(r, 2)
    return history.operations()


@pytest.mark.timeout(30)
def test_counter_checker_passes_a_clean_history() -> None:
    assert check_counter(_counter_history(), ["0-0", "1-1"], "ctr-0") == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("final", "expected"),
    [
        (["0-0"], "1 acknowledged increments lost: 1-1"),
        (["0-0", "1-1", "1-1"], "1 increments applied twice: 1-1"),
        (["0-0", "1-1", "9-9"], "1 ids never invoked: 9-9"),
        (None, "final read failed"),
    ],
)
def test_counter_checker_catches_planted_anomalies(final: list[str] | None, expected: str) -> None:
    problems = check_counter(_counter_history(), final, "ctr-0")
    assert any(expected in p for p in problems), problems


@pytest.mark.timeout(30)
def test_counter_checker_catches_stale_and_future_reads() -> None:
    history = History(clock=TickClock())
    a = history.invoke(0, "incr", "c", value="a")
    history.ok(a, 1)
    stale = history.invoke(1, "read", "c")
    history.ok(stale, 0)  # began after "a" was acknowledged: must see it
    future = history.invoke(1, "read", "c")
    history.ok(future, 2)  # only one increment was ever invoked
    problems = check_counter(history.operations(), ["a"], "c")
    assert len(problems) == 1 and "2 reads out of bounds" in problems[0], problems


@pytest.mark.timeout(60)
def test_workload_checks_catch_a_lost_write_and_a_stale_read() -> None:
    """The suite's own check path (Workload.check), fed doctored histories."""
    register = RegisterWorkload(1)
    register.history = History(clock=TickClock())
    register.record(0, "write", "reg-0-0", lambda: None, value=1)
    register.record(1, "read", "reg-0-0", lambda: 1)
    register.record("final", "read", "reg-0-0", lambda: None)  # the acknowledged 1 is gone
    verdict = register.check(timeout=30)
    assert verdict.ok is False and "not linearizable" in verdict.anomalies[0], verdict

    clean = RegisterWorkload(1)
    clean.history = History(clock=TickClock())
    clean.record(0, "write", "k", lambda: None, value=1)
    clean.record(1, "cas", "k", lambda: True, value=2, expected=1)
    clean.record("final", "read", "k", lambda: 2)
    assert clean.check(timeout=30).ok is True

    counter = CounterWorkload(1)
    counter.history = History(clock=TickClock())
    counter.record(0, "incr", "ctr-0", lambda: 1, value="0-0")
    counter.record(0, "incr", "ctr-0", lambda: 2, value="0-1")
    counter.final = {"ctr-0": ["0-0"]}
    verdict = counter.check(timeout=30)
    assert verdict.ok is False and "lost: 0-1" in verdict.anomalies[0], verdict


# --------------------------------------------------------------------------- pieces


@pytest.mark.timeout(30)
def test_backend_counts_unique_increments_and_digests_what_it_applied(tmp_path: Path) -> None:
    first, second = ChaosBackend(), ChaosBackend()
    for backend in (first, second):
        assert backend.apply(incr("c", "a")).result == {"count": 1}
        assert backend.apply(incr("c", "b")).result == {"count": 2}
        backend.apply(kv.put("k", 1))
    assert first.query(count("c")).data == {"count": 2}
    assert first.query(kv.get("c")).data == {"found": True, "value": ["a", "b"]}
    assert first.query(DIGEST_QUERY).data == second.query(DIGEST_QUERY).data
    assert first.query(DIGEST_QUERY).data["applied"] == 3
    second.apply(kv.put("k", 2))
    first.apply(kv.put("k", 3))  # same count, different command: different digest
    assert first.query(DIGEST_QUERY).data != second.query(DIGEST_QUERY).data

    first.snapshot()(tmp_path)
    restored = ChaosBackend()
    restored.install(tmp_path)
    assert restored.query(DIGEST_QUERY).data == first.query(DIGEST_QUERY).data
    assert restored.query(count("c")).data == {"count": 2}


@pytest.mark.timeout(30)
def test_compare_logs_finds_a_diverging_committed_entry(tmp_path: Path) -> None:
    entries = [Entry(i, 1, data=f"e{i}".encode()) for i in range(1, 6)]
    dirs = {}
    for peer, diverged in (("a", False), ("b", False), ("c", True)):
        dirs[peer] = tmp_path / peer
        with SegmentedLog(dirs[peer] / "log", fsync=False) as raft_log:
            own = list(entries)
            if diverged:
                own[3] = Entry(4, 2, data=b"other")
            raft_log.append(own)
    clean = Convergence(ok=True)
    compare_logs({p: dirs[p] for p in ("a", "b")}, 5, clean)
    assert clean.ok is True and clean.entries_compared == 5 and not clean.problems
    found = Convergence(ok=True)
    compare_logs(dirs, 5, found)
    assert found.ok is False and "committed entry 4 differs" in found.problems[0]
    beyond = Convergence(ok=True)
    compare_logs(dirs, 3, beyond)  # entry 4 was never committed: may differ
    assert beyond.ok is True


@pytest.mark.timeout(30)
def test_schedule_is_seeded_and_visits_every_nemesis_early() -> None:
    names = list(NEMESES)

    def plan(seed: int) -> list[tuple[float, list[str], float]]:
        schedule = Schedule(None, names, seed, options=ScheduleOptions(mixed=0.5))  # type: ignore[arg-type]
        windows = schedule.windows()
        return [(q, chosen, h) for q, chosen, h, _ in (next(windows) for _ in range(8))]

    assert plan(3) == plan(3) and plan(3) != plan(4)
    first = plan(3)
    seen: list[str] = []
    for _, chosen, _ in first[:5]:
        assert len(set(chosen)) == len(chosen)
        seen += chosen
    assert set(seen) == set(names)  # five windows hold at least five nemeses: all of them
    with pytest.raises(ValueError, match="unknown nemeses"):
        Schedule(None, ["flood"], 1)  # type: ignore[arg-type]


@pytest.mark.timeout(30)
def test_command_line_names_match_the_suite_and_reject_unknown_ones() -> None:
    assert set(_NEMESES) == set(NEMESES) and set(_WORKLOADS) == set(WORKLOADS)
    parser = argparse.ArgumentParser()
    add_chaos_command(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["chaos", "--nemesis", "kill,pause", "--workload", "all"])
    assert args.nemesis == ["kill", "pause"] and args.workload == list(_WORKLOADS)
    with pytest.raises(SystemExit):
        parser.parse_args(["chaos", "--nemesis", "kill,meteor"])
    with pytest.raises(ValueError, match="unknown workloads"):
        RunOptions(workloads=("kv", "bank")).validate()


# --------------------------------------------------------------------------- real runs

# Nemeses come in seeded rounds, each once per round, and a mixed window holds two: so
# every nemesis of a run strikes within its first two windows, well inside these durations.
CI_RUNS: list[dict[str, Any]] = [
    {"seed": 11, "nemeses": ("kill", "pause"), "seconds": 12.0, "cli": True},
    {"seed": 12, "nemeses": ("partition", "membership"), "seconds": 12.0, "mixed": 1.0},
    {"seed": 13, "nemeses": ("fsync", "partition", "kill"), "seconds": 14.0, "mixed": 1.0},
    {"seed": 14, "nemeses": ("operator", "kill"), "seconds": 16.0, "mixed": 1.0},
]


def _assert_passed(report: RunReport, nemeses: tuple[str, ...]) -> None:
    text = report.summary()
    assert report.verdict == "pass", text
    assert not report.errors, text
    injected = {fault["nemesis"] for fault in report.faults}
    assert injected == set(nemeses), text  # every nemesis of the run did strike
    kinds = {w["workload"]: w for w in report.workloads}
    assert set(kinds) == {"kv", "counter"}, text
    assert all(w["completed"] > 50 for w in kinds.values()), text
    assert report.convergence["ok"] is True, text  # same digest on every peer, same logs
    assert Path(report.run_dir, "report.txt").exists()


@pytest.mark.timeout(300 if not LONG_MINUTES else int(LONG_MINUTES * 60 * 2 + 300))
@pytest.mark.parametrize(
    "run", CI_RUNS if not LONG_MINUTES else [{"seed": 100, "long": LONG_MINUTES}],
    ids=lambda run: "+".join(run.get("nemeses", ("all",))),
)  # fmt: skip
def test_runs_under_faults_find_no_anomaly(run: dict[str, Any], chaos_out: Path) -> None:
    if "long" in run:
        options = RunOptions(seed=run["seed"], seconds=60.0, out=chaos_out)
        reports = run_series(options, run["long"])
        summary = summarize(reports)
        print(f"{summary.to_json()}")
        for report in reports:
            assert report.verdict == "pass", report.summary()
        return
    if run.get("cli"):  # through `zraft chaos`, as a user would run it
        report = _run_command_line(run, chaos_out)
        _assert_passed(report, run["nemeses"])
        return
    options = RunOptions(
        seed=run["seed"],
        seconds=run["seconds"],
        baseline_seconds=3.0,
        nemeses=run["nemeses"],
        out=chaos_out,
        check_timeout=60.0,
        schedule=ScheduleOptions(mixed=run.get("mixed", 0.35)),
    )
    report = run_once(options)
    print(report.summary())
    _assert_passed(report, run["nemeses"])
    if report.timeline is not None:
        assert Path(report.run_dir, report.timeline).stat().st_size > 1000
    # A passing run keeps its report and picture, not its bulk.
    assert not Path(report.run_dir, "peers").exists()
    assert not list(Path(report.run_dir).glob("history-*.jsonl"))


def _run_command_line(run: dict[str, Any], out: Path) -> RunReport:
    argv = [
        "--log-level", "WARNING", "chaos", "--minutes", "0.01",
        "--run-seconds", str(run["seconds"]), "--baseline-seconds", "3",
        "--seed", str(run["seed"]), "--nemesis", ",".join(run["nemeses"]),
        "--workload", "kv,counter", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"] == 1 and summary["passed"] == 1 and summary["anomalies"] == 0
    (report_txt,) = summary["reports"]
    data = json.loads((Path(report_txt).parent / "report.json").read_text())
    return RunReport(**data)


@pytest.mark.timeout(300)
def test_a_flood_of_writes_in_flight_is_never_refused_or_misreported(chaos_out: Path) -> None:
    """Two thousand increments in flight in one asyncio session, under kills and pauses:
    nothing lost or doubled, no valid write refused, nothing reported as not applied that
    was applied."""
    options = RunOptions(
        seed=15,
        seconds=15.0,
        baseline_seconds=3.0,
        nemeses=("kill", "pause"),
        workloads=("flood",),
        out=chaos_out,
        check_timeout=60.0,
        schedule=ScheduleOptions(mixed=1.0),
    )
    report = run_once(options)
    text = report.summary()
    assert report.verdict == "pass" and not report.errors, text
    (flood,) = report.workloads
    assert flood["completed"] > 5 * 2000, text  # the window was really that deep, often
    assert report.convergence["ok"] is True, text


def test_the_flood_check_finds_refused_and_misreported_writes() -> None:
    workload = WORKLOADS["flood"](seed=1)
    history = workload.history
    ok = history.invoke(0, "incr", "flood-0", value="0-0")
    history.ok(ok, 1)
    refused = history.invoke(0, "incr", "flood-0", value="0-1")
    history.fail(refused)
    workload.refused.append("0-1: request 2 was already acknowledged")  # type: ignore[attr-defined]
    workload.final = {"flood-0": ["0-0", "0-1"]}  # type: ignore[attr-defined]
    verdict = workload.check(5.0)
    assert verdict.ok is False
    assert any("failed increments applied" in a for a in verdict.anomalies)
    assert any("valid writes refused" in a for a in verdict.anomalies)

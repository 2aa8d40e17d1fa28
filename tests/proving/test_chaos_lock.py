"""The fault suite's ``lock`` workload (sessions, temporary keys, a lock with fencing): its
checker catches planted anomalies, the chaos backend's lock audit and fenced resource are
right, deterministic and survive snapshots, and a bounded run against 5 real peers under
kills and pauses finds no anomaly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.clocks import TickClock
from zraft.backends import kv
from zraft.backends.base import CommandRejected, InvalidSnapshot
from zraft.chaos.backend import (
    AUDIT_FILE,
    DIGEST_QUERY,
    ChaosBackend,
    fenced_append,
    lock_audit,
)
from zraft.chaos.lock_workload import LOCK_KEY, RESOURCE, LockWorkload, check_lock
from zraft.chaos.nemesis import ScheduleOptions
from zraft.chaos.registry import WORKLOADS
from zraft.chaos.runner import RunOptions, run_once
from zraft.linearizability import History, Operation

L = LOCK_KEY


def _history(
    acquisitions: list[tuple[str, int, int | None]], appended: bool | None = True
) -> list[Operation]:
    """Per (holder, token, release index): an acknowledged acquisition, an append (its
    answer ``appended``; None: unknown) and an acknowledged release."""
    history = History(clock=TickClock())
    for holder, token, released in acquisitions:
        client = int(holder.split("-")[0])
        handle = history.invoke(client, "acquire", L, value=holder)
        history.ok(handle, token)
        handle = history.invoke(client, "append", RESOURCE, value=[token, holder])
        if appended is None:
            history.unknown(handle)
        else:
            history.ok(handle, appended)
        handle = history.invoke(client, "release", L, value=holder)
        history.ok(handle, released)
    return history.operations()


def _audit(*events: tuple[str, str]) -> list[list[Any]]:
    return [[n, kind, L, holder] for n, (kind, holder) in enumerate(events, start=1)]


CLEAN_OPS = [("0-0", 10, 12), ("1-0", 15, 17)]
CLEAN_AUDIT = _audit(("create", "0-0"), ("delete", "0-0"), ("create", "1-0"), ("delete", "1-0"))
CLEAN_RESOURCE = [[10, "0-0"], [15, "1-0"]]


# --------------------------------------------------------------------------- checker


@pytest.mark.timeout(30)
def test_the_checker_passes_a_clean_history_and_counts_it() -> None:
    result = check_lock(_history(CLEAN_OPS), CLEAN_AUDIT, CLEAN_RESOURCE)
    assert result.anomalies == [] and result.unchecked == []
    assert (result.acquired, result.released, result.appended, result.audit_events) == (
        2, 2, 2, 4,
    )  # fmt: skip
    # Unknown outcomes may be absent: an unknown append missing from the resource is fine.
    unknown = check_lock(_history(CLEAN_OPS, appended=None), CLEAN_AUDIT, [])
    assert unknown.anomalies == []
    # A release answered by a retry carries the retry's index, after the next acquisition.
    retried = check_lock(_history([("0-0", 10, 16), ("1-0", 15, 17)]), CLEAN_AUDIT,
                         CLEAN_RESOURCE)  # fmt: skip
    assert retried.anomalies == []


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("ops", "audit", "resource", "leftovers", "expected"),
    [
        pytest.param(  # someone wrote over the held lock
            CLEAN_OPS,
            _audit(("create", "0-0"), ("overwrite", "x"), ("delete", "x"), ("create", "1-0"),
                   ("delete", "1-0")),
            CLEAN_RESOURCE, [], "1 overwrites of the held lock", id="overwrite",
        ),
        pytest.param(  # 1-0 was told it holds the lock; the state never saw it taken
            CLEAN_OPS, _audit(("create", "0-0"), ("delete", "0-0")), CLEAN_RESOURCE, [],
            "1 acknowledged acquisitions not in the lock audit: 1-0 (token 15)",
            id="acquisition-not-in-audit",
        ),
        pytest.param(  # tokens say 1-0 came first, the audit says 0-0 did
            [("0-0", 15, 17), ("1-0", 10, 12)], CLEAN_AUDIT, [[10, "1-0"], [15, "0-0"]], [],
            "acquisitions out of audit order (by token)", id="out-of-order-tokens",
        ),
        pytest.param(  # 1-0's release claims an index before its own acquisition's
            [("0-0", 10, 12), ("1-0", 15, 14)], CLEAN_AUDIT, CLEAN_RESOURCE, [],
            "releases indexed before the acquisitions they follow", id="release-too-early",
        ),
        pytest.param(
            CLEAN_OPS, CLEAN_AUDIT, [[10, "0-0"]], [],
            "1 acknowledged appends lost: (15, '1-0')", id="lost-append",
        ),
        pytest.param(
            CLEAN_OPS, CLEAN_AUDIT, [[15, "1-0"], [10, "0-0"]], [],
            "resource tokens decreasing", id="resource-out-of-order",
        ),
        pytest.param(
            CLEAN_OPS, CLEAN_AUDIT, [*CLEAN_RESOURCE, [15, "1-0"]], [],
            "appends applied twice", id="append-twice",
        ),
        pytest.param(
            CLEAN_OPS, CLEAN_AUDIT, [*CLEAN_RESOURCE, [16, "2-0"]], [],
            "appends never invoked", id="append-invented",
        ),
        pytest.param(  # 0-0's release was acknowledged, but its hold ended with its session
            CLEAN_OPS,
            _audit(("create", "0-0"), ("session_end", "0-0"), ("create", "1-0"),
                   ("delete", "1-0")),
            CLEAN_RESOURCE, [], "releases that were not the removal of their hold",
            id="release-not-removal",
        ),
        pytest.param(
            CLEAN_OPS,
            _audit(("create", "0-0"), ("delete", "0-0"), ("create", "0-0"), ("delete", "0-0"),
                   ("create", "1-0"), ("delete", "1-0")),
            CLEAN_RESOURCE, [], "created twice", id="created-twice",
        ),
        pytest.param(
            CLEAN_OPS, [*CLEAN_AUDIT, [5, "create", L, "9-9"]], CLEAN_RESOURCE, [],
            "lock creations never invoked (holder): 9-9", id="creation-invented",
        ),
        pytest.param(
            CLEAN_OPS, CLEAN_AUDIT, CLEAN_RESOURCE, ["presence/1"],
            "temporary keys outlived their sessions: presence/1", id="leftover-ephemeral",
        ),
    ],
)  # fmt: skip
def test_the_checker_catches_planted_anomalies(
    ops: list[tuple[str, int, int]],
    audit: list[list[Any]],
    resource: list[list[Any]],
    leftovers: list[str],
    expected: str,
) -> None:
    result = check_lock(_history(ops), audit, resource, leftovers)
    assert any(expected in a for a in result.anomalies), result.anomalies


@pytest.mark.timeout(30)
def test_a_refused_append_must_be_absent_and_a_truncated_audit_decides_nothing() -> None:
    refused = check_lock(_history(CLEAN_OPS, appended=False), CLEAN_AUDIT, CLEAN_RESOURCE)
    assert any("refused appends present" in a for a in refused.anomalies), refused.anomalies
    assert refused.fenced_off == 2
    truncated = check_lock(_history(CLEAN_OPS), CLEAN_AUDIT[2:], CLEAN_RESOURCE)
    assert truncated.unchecked and not truncated.anomalies


@pytest.mark.timeout(30)
def test_the_workload_verdict_follows_the_checker() -> None:
    """The suite's own path (LockWorkload.check) on doctored histories."""
    assert WORKLOADS["lock"] is LockWorkload
    workload = LockWorkload(1)
    workload.history = History(clock=TickClock())
    workload.record(0, "acquire", L, lambda: 10, value="0-0")
    workload.record(0, "append", RESOURCE, lambda: True, value=[10, "0-0"])
    workload.record(0, "release", L, lambda: 12, value="0-0")
    unread = workload.check(timeout=10)
    assert unread.ok is None and "final read failed" in unread.anomalies[0]
    workload.audit, workload.resource, workload.leftovers = CLEAN_AUDIT[:2], [[10, "0-0"]], []
    clean = workload.check(timeout=10)
    assert clean.ok is True and clean.completed == 3, clean
    assert "1 acknowledged acquisitions" in clean.detail
    workload.resource = []  # the acknowledged append is gone
    lost = workload.check(timeout=10)
    assert lost.ok is False and "appends lost" in lost.anomalies[0], lost


# --------------------------------------------------------------------------- backend


def _lock_value(session: str, holder: str) -> dict[str, str]:
    return {"session": session, "holder": holder}


def _exercise(backend: ChaosBackend) -> None:
    """Takes, releases, expiries and an overwrite of the lock, plus fenced appends."""
    backend.apply_session(kv.cas(L, None, _lock_value("s1", "a")), "s1")
    refused = backend.apply_session(kv.cas(L, None, _lock_value("s2", "b")), "s2")
    assert refused.result["swapped"] is False  # held: no event
    backend.apply(kv.delete(L, expected=_lock_value("s2", "b")))  # not its hold: no event
    backend.apply(kv.delete(L, expected=_lock_value("s1", "a")))
    backend.apply_session(kv.cas(L, None, _lock_value("s2", "b")), "s2")
    backend.apply_session(kv.put("presence/2", "s2"), "s2")
    backend.apply(kv.put(L, _lock_value("s3", "c")))  # a broken lock's overwrite
    backend.expire_session("s2")  # the key keeps its owner: it goes with s2
    backend.apply(kv.put("locks/other", [1]))  # a value without a holder
    backend.apply(kv.put("unlocked", 1))  # outside locks/: not audited


AUDITED = [
    [1, "create", L, "a"],
    [2, "delete", L, "a"],
    [3, "create", L, "b"],
    [4, "overwrite", L, "c"],
    [5, "session_end", L, "c"],
    [6, "create", "locks/other", None],
]


@pytest.mark.timeout(30)
def test_the_backend_audits_the_lock_key_in_apply_order() -> None:
    backend = ChaosBackend()
    _exercise(backend)
    page = backend.query(lock_audit()).data
    assert page == {"events": AUDITED, "total": 6, "more": False}
    assert backend.query(kv.get("presence/2")).data["found"] is False
    first = backend.query(lock_audit(after=0, limit=4)).data
    rest = backend.query(lock_audit(after=4)).data
    assert first["more"] is True and rest["more"] is False
    assert first["events"] + rest["events"] == AUDITED
    with pytest.raises(CommandRejected):
        backend.query({"op": "lock_audit", "after": -1, "limit": 5})


@pytest.mark.timeout(30)
def test_fenced_append_refuses_older_tokens_and_bad_commands() -> None:
    backend = ChaosBackend()
    assert backend.apply(fenced_append("r", 5, "a")).result == {"appended": True, "highest": 5}
    assert backend.apply(fenced_append("r", 3, "b")).result == {"appended": False, "highest": 5}
    assert backend.apply(fenced_append("r", 5, "a")).result["appended"] is True  # equal: ok
    assert backend.apply(fenced_append("r", 9, "c")).result == {"appended": True, "highest": 9}
    assert backend.query(kv.get("r")).data["value"] == [[5, "a"], [5, "a"], [9, "c"]]
    backend.apply(kv.put("not-a-resource", [1, 2]))
    for bad in (
        {"op": "fenced_append", "key": "r", "token": True, "holder": "a"},
        {"op": "fenced_append", "key": "r", "token": -1, "holder": "a"},
        {"op": "fenced_append", "key": "r", "token": 1, "holder": 7},
        {"op": "fenced_append", "key": "r", "token": 1, "holder": "a", "extra": 1},
        {"op": "fenced_append", "key": "r", "token": 1, "holder": "a", 3: 1},
        fenced_append("locks/r", 1, "a"),
        fenced_append("not-a-resource", 1, "a"),
    ):
        with pytest.raises(CommandRejected):
            backend.apply(bad)
    assert backend.query(kv.get("r")).data["value"] == [[5, "a"], [5, "a"], [9, "c"]]


@pytest.mark.timeout(30)
def test_the_audit_is_deterministic_and_survives_a_snapshot(tmp_path: Path) -> None:
    first, second = ChaosBackend(), ChaosBackend()
    for backend in (first, second):
        _exercise(backend)
        backend.apply(fenced_append("r", 3, "a"))
    assert first.query(lock_audit()).data == second.query(lock_audit()).data
    assert first.query(DIGEST_QUERY).data == second.query(DIGEST_QUERY).data

    first.snapshot()(tmp_path)
    restored = ChaosBackend()
    restored.install(tmp_path)
    assert restored.query(lock_audit()).data == first.query(lock_audit()).data
    assert restored.query(kv.get("r")).data == first.query(kv.get("r")).data
    for backend in (first, restored):  # both go on alike, numbering included
        backend.apply_session(kv.cas(L, None, _lock_value("s4", "d")), "s4")
    assert restored.query(lock_audit(after=6)).data == {
        "events": [[7, "create", L, "d"]], "total": 7, "more": False,
    }  # fmt: skip
    assert restored.query(DIGEST_QUERY).data == first.query(DIGEST_QUERY).data

    # A damaged audit refuses the snapshot and leaves the state as it was.
    (tmp_path / AUDIT_FILE).write_bytes(b"\x93junk")
    with pytest.raises(InvalidSnapshot, match="lock audit"):
        restored.install(tmp_path)
    assert restored.query(lock_audit()).data["total"] == 7
    # A snapshot without one (another backend's) restarts the audit empty.
    (tmp_path / AUDIT_FILE).unlink()
    restored.install(tmp_path)
    assert restored.query(lock_audit()).data == {"events": [], "total": 0, "more": False}


# --------------------------------------------------------------------------- real run


@pytest.mark.timeout(300)
def test_a_run_under_kills_and_pauses_keeps_the_lock_exclusive(chaos_out: Path) -> None:
    options = RunOptions(
        seed=31,
        seconds=25.0,
        baseline_seconds=3.0,
        nemeses=("kill", "pause"),
        workloads=("lock",),
        out=chaos_out,
        check_timeout=60.0,
        schedule=ScheduleOptions(mixed=0.35),
    )
    report = run_once(options)
    text = report.summary()
    print(text)
    (verdict,) = report.workloads
    print(verdict["detail"])
    assert report.verdict == "pass" and not report.errors, text
    assert {fault["nemesis"] for fault in report.faults} == {"kill", "pause"}, text
    assert report.convergence["ok"] is True, text
    acquired = re.search(r"(\d+) acknowledged acquisitions", verdict["detail"])
    appended = re.search(r"(\d+) fenced appends \((\d+) refused", verdict["detail"])
    assert acquired and int(acquired[1]) >= 100, verdict["detail"]  # progress through faults
    assert appended and int(appended[1]) >= 50, verdict["detail"]
    # Holders that lost the lock unawares (every 25th acquisition) were fenced off.
    assert int(appended[2]) >= 1, verdict["detail"]
    assert not Path(report.run_dir, "peers").exists()  # a passing run keeps only its report

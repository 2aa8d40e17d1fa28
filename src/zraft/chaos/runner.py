"""One run of the fault suite, and a series of runs.

A run: start 5 peers behind link proxies; start the workloads' clients; a fault-free
baseline; then the nemesis schedule; heal everything; let the clients work a moment on the
healed cluster; stop them; final reads; wait for the peers to converge and compare their
applied-state digests; stop the peers and compare their logs; check every history; write
the report (and the timeline PNG). A run that passes keeps only its report; one that
fails (or could not be decided) also keeps its histories and every peer's data and log.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import importlib
import json
import logging
import shutil
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zraft.linearizability import Status

from .cluster import ChaosCluster
from .convergence import Convergence, compare_logs, compare_states
from .nemesis import NEMESES, Schedule, ScheduleOptions
from .registry import WORKLOADS
from .report import RunReport, draw_timeline
from .workloads import FINAL_CLIENT, ClientContext, Verdict, Workload

log = logging.getLogger(__name__)

ALL_NEMESES = tuple(NEMESES)
DEFAULT_WORKLOADS = ("kv", "counter")


@dataclass(frozen=True, slots=True)
class RunOptions:
    seed: int = 1
    seconds: float = 60.0  # under faults
    baseline_seconds: float = 5.0  # fault-free, first: the throughput reference
    nemeses: tuple[str, ...] = ALL_NEMESES
    workloads: tuple[str, ...] = DEFAULT_WORKLOADS
    out: Path = Path("chaos-runs")
    peers: int = 5
    election_timeout_ms: int = 500
    op_timeout: float = 2.0  # an operation not answered by then is "unknown"
    check_timeout: float = 120.0  # linearizability search budget per run
    keep: bool = False  # keep histories and peer data even when the run passes
    schedule: ScheduleOptions = field(default_factory=ScheduleOptions)

    def validate(self) -> None:
        unknown = sorted(set(self.nemeses) - set(NEMESES))
        if unknown:
            raise ValueError(f"unknown nemeses {unknown}; known: {sorted(NEMESES)}")
        unknown = sorted(set(self.workloads) - set(WORKLOADS))
        if unknown:
            raise ValueError(f"unknown workloads {unknown}; known: {sorted(WORKLOADS)}")
        if not self.workloads:
            raise ValueError("choose at least one workload")
        if self.peers < 3:
            raise ValueError("the suite needs at least 3 peers")
        if self.seconds <= 0 or self.baseline_seconds < 0:
            raise ValueError("run and baseline durations must be positive")


def backend_groups(workloads: tuple[str, ...]) -> list[tuple[str, ...]]:
    """The workloads split by the backend their peers run (first-seen order): each group
    gets a cluster of its own, one run after the other."""
    groups: dict[str, list[str]] = {}
    for name in workloads:
        groups.setdefault(WORKLOADS[name].backend, []).append(name)
    return [tuple(group) for group in groups.values()]


def run_once(options: RunOptions) -> RunReport:
    options.validate()
    if len(backend_groups(options.workloads)) > 1:
        raise ValueError("one run takes workloads of one backend (run_series splits them)")
    started = datetime.datetime.now(datetime.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%S")
    run_dir = Path(options.out) / f"run-{stamp}-seed{options.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    report = RunReport(
        seed=options.seed,
        started_at=started.isoformat(timespec="seconds"),
        config={
            "nemeses": list(options.nemeses),
            "workloads": list(options.workloads),
            "peers": options.peers,
            "seconds": options.seconds,
            "baseline_seconds": options.baseline_seconds,
            "election_timeout_ms": options.election_timeout_ms,
            "op_timeout": options.op_timeout,
            "mixed": options.schedule.mixed,
        },
        run_dir=str(run_dir),
    )
    began = time.monotonic()
    code = code_fingerprint()
    workloads = [
        WORKLOADS[name](options.seed, run_dir / f"history-{name}.jsonl")
        for name in options.workloads
    ]
    convergence = Convergence()
    marks: dict[str, int] = {}
    schedule: Schedule | None = None
    cluster = ChaosCluster(
        run_dir,
        size=options.peers,
        backend=workloads[0].backend,
        election_timeout_ms=options.election_timeout_ms,
    )
    try:
        schedule = _exercise(cluster, workloads, options, report, convergence, marks)
    except Exception as error:  # the harness failed: keep everything, say so
        log.exception("chaos run %d", options.seed)
        report.errors.append(f"{type(error).__name__}: {error}")
    finally:
        try:
            _stop_and_compare_logs(cluster, convergence)
        finally:
            cluster.close()
            for workload in workloads:
                workload.close()
    if code_fingerprint() != code:
        # Peers (re)started after the change run other code than those started before.
        report.errors.append("the zraft sources changed during the run (mixed code versions)")
    if schedule is not None:
        origin = marks.get("origin", 0)
        report.faults = [event.to_json(origin) for event in schedule.events]
        report.errors.extend(schedule.errors)
        for event in schedule.events:
            report.anomalies.extend(f"{event.nemesis}: {anomaly}" for anomaly in event.anomalies)
    _judge(report, workloads, convergence, marks, options)
    report.seconds = time.monotonic() - began
    _draw(report, workloads, marks.get("origin", 0), run_dir)
    report.write(run_dir)
    if report.verdict == "pass" and not options.keep:
        _discard_bulk(run_dir, workloads)
    log.info("%s", report.summary())
    return report


_SOURCE_PACKAGES = (
    "zraft", "zraft.core", "zraft.storage", "zraft.actors", "zraft.backends", "zraft.session",
    "zraft.transport",
)  # fmt: skip


def code_fingerprint() -> str:
    """A hash of the names, sizes and times of the sources peers import: in a checkout that
    others edit, a peer restarted mid-run may run other code than the rest."""
    digest = hashlib.sha256()
    for name in _SOURCE_PACKAGES:
        for directory in importlib.import_module(name).__path__:
            for path in sorted(Path(directory).rglob("*.py")):
                with contextlib.suppress(OSError):
                    stat = path.stat()
                    digest.update(f"{path}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _exercise(
    cluster: ChaosCluster,
    workloads: list[Workload],
    options: RunOptions,
    report: RunReport,
    convergence: Convergence,
    marks: dict[str, int],
) -> Schedule:
    cluster.start()
    context = ClientContext(
        tuple(cluster.peers), cluster.cluster_id, cluster.election_timeout, options.op_timeout
    )
    stop_clients = threading.Event()
    threads = [
        threading.Thread(
            target=workload.run_client,
            args=(n, context, stop_clients),
            name=f"{workload.name}-{n}",
            daemon=True,
        )
        for workload in workloads
        for n in range(workload.clients)
    ]
    schedule = Schedule(cluster, list(options.nemeses), options.seed, options=options.schedule)
    marks["origin"] = time.monotonic_ns()
    for thread in threads:
        thread.start()
    try:
        time.sleep(options.baseline_seconds)
        marks["faults"] = time.monotonic_ns()
        schedule.start()
        time.sleep(options.seconds)
        schedule.stop(timeout=120)
        marks["healed"] = time.monotonic_ns()
        report.heal = cluster.heal()
        time.sleep(max(1.0, 2 * cluster.election_timeout))  # some traffic on the healed cluster
    finally:
        schedule.stop(timeout=120)
        stop_clients.set()
        for thread in threads:
            thread.join(timeout=options.op_timeout * 3 + 10)
            if thread.is_alive():
                report.errors.append(f"client thread {thread.name} did not stop")
    broken = cluster.links.broken()
    if broken:  # the harness's fault, not the peers': the run cannot be judged fairly
        report.errors.append(f"link proxies failed: {', '.join(broken)}")
    with context.session() as session:
        for workload in workloads:
            workload.final_read(session, timeout=30.0)
    compare_states(cluster, convergence)
    return schedule


def _stop_and_compare_logs(cluster: ChaosCluster, convergence: Convergence) -> None:
    """Stop every peer (SIGTERM), then compare the logs they leave on disk."""
    for peer in list(cluster.local.processes):
        cluster.resume(peer)
        cluster.local.stop_peer(peer)
    if convergence.ok is not True:
        return  # not converged: the digests already told the story (or could not)
    compare_logs({p: cluster.data_dir(p) for p in cluster.peers}, convergence.commit, convergence)


def _judge(
    report: RunReport,
    workloads: list[Workload],
    convergence: Convergence,
    marks: dict[str, int],
    options: RunOptions,
) -> None:
    verdicts: list[Verdict] = []
    for workload in workloads:
        try:
            verdict = workload.check(timeout=options.check_timeout)
        except Exception as error:  # a checker crash decides nothing
            log.exception("checking %s", workload.name)
            report.errors.append(f"checking {workload.name}: {error!r}")
            continue
        verdicts.append(verdict)
        report.workloads.append(verdict.to_json())
        if verdict.ok is False:
            report.anomalies.extend(f"{workload.name}: {a}" for a in verdict.anomalies)
        elif verdict.ok is None:
            report.errors.extend(f"{workload.name}: {a}" for a in verdict.anomalies)
    report.convergence = convergence.to_json()
    if convergence.ok is False:
        report.anomalies.extend(f"peers: {p}" for p in convergence.problems)
    elif convergence.ok is None and convergence.problems:
        # Everything healed, yet the peers never agreed: a liveness failure.
        report.anomalies.extend(f"liveness: {p}" for p in convergence.problems)
    report.throughput = _throughput(workloads, marks)
    if report.anomalies or any(v.ok is False for v in verdicts):
        report.verdict = "FAIL"
    elif report.errors or convergence.ok is not True or any(v.ok is not True for v in verdicts):
        report.verdict = "unknown"
        if len(verdicts) < len(workloads):
            report.errors.append("some workload was not checked")
    else:
        report.verdict = "pass"


def _throughput(workloads: list[Workload], marks: dict[str, int]) -> dict[str, float]:
    """Acknowledged operations per second: fault-free baseline, and under faults."""
    if not {"origin", "faults", "healed"} <= set(marks):
        return {}
    # The first moments are slow (connections, a first election of the sessions' tracker):
    # the baseline leaves out its first third.
    warm = marks["origin"] + (marks["faults"] - marks["origin"]) // 3
    windows = {
        "baseline": (warm, marks["faults"]),
        "faults": (marks["faults"], marks["healed"]),
    }
    rates: dict[str, float] = {}
    for name, (lo, hi) in windows.items():
        done = sum(
            1
            for w in workloads
            for op in w.history.operations()
            if op.client != FINAL_CLIENT
            and op.status is Status.OK
            and op.complete is not None
            and lo <= op.complete < hi
        )
        rates[name] = done / max((hi - lo) / 1e9, 1e-9)
    rates["fraction"] = rates["faults"] / rates["baseline"] if rates["baseline"] else 0.0
    return rates


def _draw(report: RunReport, workloads: list[Workload], origin: int, run_dir: Path) -> None:
    operations = {w.name: w.history.operations() for w in workloads}
    title = f"zraft chaos seed {report.seed}: {report.verdict}"
    try:
        note = draw_timeline(run_dir / "timeline.png", operations, report.faults, origin, title)
    except Exception as error:  # a picture must not cost the verdict
        log.exception("drawing the timeline")
        note = f"not drawn: {error!r}"
    if note is None:
        report.timeline = "timeline.png"
    else:
        report.timeline_note = note


def _discard_bulk(run_dir: Path, workloads: list[Workload]) -> None:
    """A passing run keeps its report and picture; histories and peer data go."""
    for name in ("peers", "retired"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for workload in workloads:
        (run_dir / f"history-{workload.name}.jsonl").unlink(missing_ok=True)


# --------------------------------------------------------------------------- series


@dataclass(slots=True)
class SuiteSummary:
    runs: int = 0
    passed: int = 0
    failed: int = 0
    undecided: int = 0
    operations_checked: int = 0
    faults_injected: int = 0
    anomalies: int = 0
    throughput_fraction: float = 0.0  # median over runs (a shared machine is noisy)
    reports: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def summarize(reports: list[RunReport]) -> SuiteSummary:
    summary = SuiteSummary(runs=len(reports))
    fractions = []
    for report in reports:
        summary.passed += report.verdict == "pass"
        summary.failed += report.verdict == "FAIL"
        summary.undecided += report.verdict == "unknown"
        summary.operations_checked += report.operations_checked
        summary.faults_injected += len(report.faults)
        summary.anomalies += len(report.anomalies)
        if report.throughput.get("baseline"):
            fractions.append(report.throughput["fraction"])
        summary.reports.append(str(Path(report.run_dir) / "report.txt"))
    summary.throughput_fraction = statistics.median(fractions) if fractions else 0.0
    return summary


def run_series(
    options: RunOptions, minutes: float, stop_on_failure: bool = False
) -> list[RunReport]:
    """Runs with seeds ``options.seed``, +1, ... until ``minutes`` of wall time are used
    (at least one run). Writes ``summary.json`` in ``options.out``."""
    deadline = time.monotonic() + minutes * 60
    reports: list[RunReport] = []
    seed = options.seed
    while not reports or time.monotonic() < deadline:
        for group in backend_groups(options.workloads):  # one cluster per backend
            report = run_once(_with_seed(dataclasses.replace(options, workloads=group), seed))
            reports.append(report)
            if stop_on_failure and report.verdict == "FAIL":
                break
        if stop_on_failure and reports[-1].verdict == "FAIL":
            break
        seed += 1
    Path(options.out).mkdir(parents=True, exist_ok=True)
    (Path(options.out) / "summary.json").write_text(
        json.dumps(summarize(reports).to_json(), indent=2) + "\n", encoding="utf-8"
    )
    return reports


def _with_seed(options: RunOptions, seed: int) -> RunOptions:
    return dataclasses.replace(options, seed=seed)


__all__ = [
    "ALL_NEMESES",
    "DEFAULT_WORKLOADS",
    "RunOptions",
    "SuiteSummary",
    "backend_groups",
    "run_once",
    "run_series",
    "summarize",
]

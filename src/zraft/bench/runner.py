"""The benchmark run: for each run and system, a fresh cluster, then every level.

A run starts the system's 3 peer processes in a fresh temporary directory, starts the client
processes, writes every benchmark key once (so reads return 100-byte values), then for each
concurrency level measures writes and then linearizable reads. Systems alternate which goes
first from one run to the next, so slow drift of a shared machine hits both alike. Every
process is killed when the run ends, however it ends.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .client import ClientPool
from .results import LevelResult, level_result
from .systems import CeilingSystem, PySyncObjSystem, System, ZraftSystem, sample_cpu

log = logging.getLogger(__name__)

DEFAULT_CONCURRENCY = (1, 16, 256, 2048)
SYSTEMS: dict[str, type[ZraftSystem] | type[PySyncObjSystem] | type[CeilingSystem]] = {
    "zraft": ZraftSystem,
    "pysyncobj": PySyncObjSystem,
    "ceiling": CeilingSystem,
}
NOTES = {name: cls.note for name, cls in SYSTEMS.items()}


@dataclass(frozen=True, slots=True)
class BenchConfig:
    concurrency: Sequence[int] = DEFAULT_CONCURRENCY
    # Client processes per level: one number for all levels, or one per concurrency level.
    client_processes: Sequence[int] = (1,)
    ops: Sequence[str] = ("write", "read")
    systems: Sequence[str] = ("zraft",)
    duration: float | None = 5.0  # seconds measured per level; None: use `count`
    count: int | None = None  # requests measured per level (when duration is None)
    warmup: float = 1.0
    runs: int = 1
    keys: int = 1000  # distinct keys per client process
    value_size: int = 100
    timeout: float = 30.0  # per request; a slow answer is measured, not retried
    # Requests in flight per AsyncLightSession; a worker with more lanes opens more sessions
    # (0: one session per client process). A session's write costs client CPU in proportion
    # to its writes in flight (AsyncLightSession._acked takes the min of them), so 2,048
    # writes through one session would make the harness itself a bottleneck.
    lanes_per_session: int = 256
    cluster_id: str = "zraft"
    root: Path | None = None  # where data goes; default: a temporary directory, removed
    server_log_level: str = "WARNING"
    peer_args: Sequence[str] = ()  # extra `zraft serve` flags for every zraft peer

    def __post_init__(self) -> None:
        if not self.concurrency or any(c < 1 for c in self.concurrency):
            raise ValueError("concurrency levels must be positive")
        if len(self.client_processes) not in (1, len(self.concurrency)):
            raise ValueError("give one client process count, or one per concurrency level")
        if any(p < 1 for p in self.client_processes):
            raise ValueError("client process counts must be positive")
        if unknown := set(self.ops) - {"write", "read"}:
            raise ValueError(f"unknown ops {sorted(unknown)}")
        if unknown := set(self.systems) - set(SYSTEMS):
            raise ValueError(f"unknown systems {sorted(unknown)}")
        if (self.duration is None) == (self.count is None):
            raise ValueError("give exactly one of duration and count")
        if self.duration is not None and self.duration <= 0:
            raise ValueError("duration must be positive")
        if self.count is not None and self.count < 1:
            raise ValueError("count must be positive")
        if self.runs < 1 or self.keys < 1 or self.value_size < 0 or self.warmup < 0:
            raise ValueError("runs and keys must be positive, warmup and value size >= 0")

    def processes_for(self, level: int) -> int:
        if len(self.client_processes) == 1:
            return self.client_processes[0]
        return self.client_processes[list(self.concurrency).index(level)]


@dataclass(slots=True)
class BenchRun:
    """Everything one ``run_benchmark`` measured, plus the pids it started (all dead now)."""

    config: BenchConfig
    results: list[LevelResult] = field(default_factory=list)
    started_pids: list[int] = field(default_factory=list)


def run_benchmark(
    config: BenchConfig,
    on_result: Callable[[LevelResult], Any] | None = None,
    bench: BenchRun | None = None,
) -> BenchRun:
    """Measure every (run, system, level, op) of ``config``; see the module docstring.

    Results and started pids go into ``bench`` (a new one if not given) as they come, so a
    caller that passes its own still has them if the run is interrupted.
    """
    bench = bench if bench is not None else BenchRun(config)
    owned_root = config.root is None
    root = Path(tempfile.mkdtemp(prefix="zraft-bench-")) if owned_root else Path(config.root)
    try:
        for run in range(1, config.runs + 1):
            order = list(config.systems) if run % 2 else list(reversed(config.systems))
            for name in order:
                _run_system(bench, name, run, root / f"run{run}-{name}", on_result)
    finally:
        if owned_root:
            shutil.rmtree(root, ignore_errors=True)
    return bench


def _run_system(
    bench: BenchRun,
    name: str,
    run: int,
    directory: Path,
    on_result: Callable[[LevelResult], Any] | None,
) -> None:
    config = bench.config
    log_level = config.server_log_level
    system: System
    if name == "zraft":
        system = ZraftSystem(
            directory, cluster_id=config.cluster_id, log_level=log_level,
            peer_args=config.peer_args,
        )  # fmt: skip
    else:
        system = SYSTEMS[name](directory, cluster_id=config.cluster_id, log_level=log_level)
    pool: ClientPool | None = None
    try:
        system.start()
        bench.started_pids += system.server_pids().values()
        leader = system.peers[0]
        log.info("%s run %d: peers %s, leader %s", name, run, system.peers, leader)
        most = max(config.processes_for(c) for c in config.concurrency)
        pool = ClientPool(
            system.peers,
            cluster_id=config.cluster_id,
            processes=most,
            keys=config.keys,
            value_size=config.value_size,
            timeout=config.timeout,
            lanes_per_session=config.lanes_per_session,
        )
        bench.started_pids += pool.pids
        pool.prefill()
        for level in config.concurrency:
            for op in (op for op in config.ops if op in system.ops):
                result = _run_level(config, system, pool, run, op, level)
                bench.results.append(result)
                if on_result is not None:
                    on_result(result)
    finally:
        if pool is not None:
            pool.close()
        system.close()


# Leader counters (zraft's `status` metrics) whose change over a window says where time went.
_COUNTERS = (
    "proposals", "client_requests", "transport_received_frames", "transport_sent_frames",
    "log_fsyncs", "log_persist_seconds_total", "apply_snapshots_taken",
)  # fmt: skip


def leader_counters(
    begin: dict[str, Any] | None, end: dict[str, Any] | None, seconds: float
) -> dict[str, float]:
    """Rates and ratios from two metric snapshots of the leader ({} if either is missing)."""
    if not begin or not end:
        return {}
    delta = {k: float(end.get(k, 0) - begin.get(k, 0)) for k in _COUNTERS}
    fsyncs = delta["log_fsyncs"]
    out = {
        "fsyncs_per_s": fsyncs / seconds,
        "persist_busy": delta["log_persist_seconds_total"] / seconds,
        "snapshots": delta["apply_snapshots_taken"],
        "frames_in_per_s": delta["transport_received_frames"] / seconds,  # peers + clients
    }
    if fsyncs:
        out["writes_per_fsync"] = delta["proposals"] / fsyncs
    return out


def _run_level(
    config: BenchConfig, system: System, pool: ClientPool, run: int, op: str, level: int
) -> LevelResult:
    pids = system.server_pids()
    leader = system.peers[0]

    def sample() -> tuple[dict[int, float], dict[str, Any] | None]:
        return sample_cpu(pids), system.metrics(leader)

    outcome = pool.run_level(
        op,
        level,
        processes=config.processes_for(level),
        warmup=config.warmup,
        duration=config.duration,
        count=config.count,
        sample=sample,
    )
    (cpu_begin, metrics_begin), (cpu_end, metrics_end) = outcome.begin_sample, outcome.end_sample
    server_cpu = {pid: cpu_end[pid] - cpu_begin[pid] for pid in cpu_end if pid in cpu_begin}
    complete = len(server_cpu) == len(pids)
    seconds = outcome.window if config.duration is None else config.duration
    result = level_result(
        system=system.name,
        op=op,
        concurrency=level,
        client_processes=outcome.processes,
        run=run,
        latencies=outcome.latencies,
        errors=outcome.errors,
        seconds=seconds,
        client_cpu=outcome.client_cpu,
        server_cpu=sum(server_cpu.values()) if complete else None,
        leader_cpu=server_cpu.get(pids[leader]) if leader in pids else None,
        error_kinds=outcome.error_kinds,
        leader_counters=leader_counters(metrics_begin, metrics_end, seconds),
    )
    log.info(
        "%s run %d %s x%d: %.0f/s p50 %.2f ms p99 %.2f ms, errors %s %s",
        system.name, run, op, level, result.throughput, result.p50_ms, result.p99_ms,
        result.error_kinds or 0,
        " ".join(f"{k}={v:.3g}" for k, v in result.leader_counters.items()),
    )  # fmt: skip
    return result

"""The benchmark's client side: worker processes, each one asyncio loop with N requests in flight.

A worker is a separate process (multiprocessing, spawn) that holds one ``AsyncLightSession``
for the whole run and obeys the parent over a pipe: prefill its keys, run a level, stop. For
a level, every worker starts at the same instant (``time.monotonic`` is system-wide), keeps
``concurrency`` lanes busy (each lane sends its next request as soon as the previous one is
answered), and reports the latency of every request answered inside the measuring window,
its errors, and the CPU time the whole process (every thread) spent in that window.

The per-request path is kept lean: commands are built once, latencies go into an
``array('d')``, and the clock is read twice per request. The worker freezes what exists at
its start and collects young objects every 10,000 allocations instead of
700: with thousands of requests in flight the cyclic collector otherwise ran ~120 times a
second over the requests' live objects, nearly half of the client's CPU
(docs/benchmarks.md). Every system measured goes through the same worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import multiprocessing as mp
import os
import signal
import time
from array import array
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger(__name__)

_START_SLACK_S = 0.2  # workers are told to start this far in the future
_YOUNG_COLLECTION_EVERY = 10_000  # net allocations between young collections (CPython: 700)


@dataclass(frozen=True, slots=True)
class LevelSpec:
    """One level for one worker."""

    op: str  # "write" or "read"
    concurrency: int  # lanes in this worker
    start_at: float  # time.monotonic() at which every worker starts sending
    warmup: float  # seconds sent but not measured
    duration: float | None  # measuring window, seconds; None: until `count` answers
    count: int | None  # answers to measure in this worker (when duration is None)


@dataclass(slots=True)
class WorkerReport:
    """What one worker measured in one level."""

    latencies: bytes  # array('d') of seconds, answers inside the window
    errors: int
    error_kinds: dict[str, int]
    window: float  # seconds actually measured
    cpu: float  # process CPU seconds (all threads) inside the window
    pid: int

    def latency_list(self) -> list[float]:
        values = array("d")
        values.frombytes(self.latencies)
        return values.tolist()


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    peers: tuple[str, ...]
    cluster_id: str
    index: int
    keys: int
    value_size: int
    timeout: float  # per request, also per attempt: a slow answer is not a failed peer
    lanes_per_session: int = 0  # split a level's lanes over sessions of this many; 0: one


def key_name(worker: int, i: int) -> str:
    return f"bench-{worker}-{i:07d}"


def bench_value(size: int) -> bytes:
    """A fixed incompressible-looking value of ``size`` bytes."""
    return bytes((i * 131 + 17) % 251 for i in range(size))


# --------------------------------------------------------------------------- worker process


def worker_main(conn: Connection, config: WorkerConfig) -> None:
    """Entry point of a worker process: serve the parent's commands until told to stop."""
    # Ctrl-C reaches the whole process group; the parent alone decides when we stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING)
    gc.freeze()
    gc.set_threshold(_YOUNG_COLLECTION_EVERY, 10, 10)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(_serve(conn, config))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass  # the parent is gone or is stopping us; it reaps everything
    finally:
        loop.close()
        conn.close()


async def _serve(conn: Connection, config: WorkerConfig) -> None:
    from zraft.backends import kv
    from zraft.session import AsyncLightSession, RetryPolicy

    value = bench_value(config.value_size)
    keys = [key_name(config.index, i) for i in range(config.keys)]
    commands = {"write": [kv.put(k, value) for k in keys], "read": [kv.get(k) for k in keys]}
    sessions: list[AsyncLightSession] = []

    def session_calls(count: int, op: str) -> list[Callable[[Any], Awaitable[Any]]]:
        while len(sessions) < count:  # kept for the whole run: connections stay up
            sessions.append(
                AsyncLightSession(
                    list(config.peers),
                    cluster_id=config.cluster_id,
                    client_id=f"bench-{os.getpid()}-{config.index}-{len(sessions)}",
                    timeout=config.timeout,
                    retry=RetryPolicy(attempt_timeout=config.timeout),
                )
            )
        return [s.write if op == "write" else s.query for s in sessions[:count]]

    try:
        conn.send(("ready", os.getpid()))
        while True:
            message = conn.recv()  # blocks between levels; nothing is in flight then
            if message is None:
                return
            kind, arg = message
            if kind == "prefill":
                await _prefill(session_calls(1, "write")[0], commands["write"], int(arg))
                conn.send(("prefilled", None))
            elif kind == "level":
                assert isinstance(arg, LevelSpec)
                needed = sessions_for(arg.concurrency, config.lanes_per_session)
                calls = session_calls(needed, arg.op)
                report = await run_level(calls, commands[arg.op], arg)
                conn.send(("level", report))
            else:
                raise ValueError(f"unknown command {kind!r}")
    finally:
        for session in sessions:
            await session.close()


def sessions_for(lanes: int, lanes_per_session: int) -> int:
    """How many sessions carry ``lanes`` requests in flight (0: one session for all)."""
    if lanes_per_session <= 0:
        return 1
    return max(1, math.ceil(lanes / lanes_per_session))


async def _prefill(call: Callable[[Any], Awaitable[Any]], commands: list[Any], lanes: int) -> None:
    """Write every key once (so reads find 100-byte values), ``lanes`` at a time."""
    pending = iter(commands)

    async def lane() -> None:
        for command in pending:
            await call(command)

    await asyncio.gather(*(lane() for _ in range(max(1, lanes))))


async def run_level(
    calls: Sequence[Callable[[Any], Awaitable[Any]]], commands: Sequence[Any], spec: LevelSpec
) -> WorkerReport:
    """Drive one level in this process's event loop; see ``LevelSpec``."""
    clock = time.perf_counter
    offset = clock() - time.monotonic()  # perf_counter's reading of spec.start_at
    start = spec.start_at + offset
    measure_from = start + spec.warmup
    measure_to = measure_from + spec.duration if spec.duration is not None else math.inf
    target = spec.count if spec.duration is None else None
    if target is not None and target <= 0:
        raise ValueError("count must be positive")

    latencies = array("d")
    record = latencies.append
    errors: dict[str, int] = {}
    cpu_marks: dict[str, float] = {}
    time_marks: dict[str, float] = {}
    stop = False
    size = len(commands)

    def mark(name: str) -> None:
        time_marks[name] = clock()
        cpu_marks[name] = time.process_time()

    async def lane(first: int) -> None:
        nonlocal stop, measure_to
        call = calls[first % len(calls)]
        j = first
        while not stop:
            sent = clock()
            if sent >= measure_to:
                return
            try:
                await call(commands[j % size])
            except Exception as error:  # noqa: BLE001 - counted and reported, never hidden
                name = type(error).__name__
                errors[name] = errors.get(name, 0) + 1
                await asyncio.sleep(0.001)  # do not spin on a persistent failure
                continue
            done = clock()
            if measure_from <= done <= measure_to:
                record(done - sent)
                if target is not None and len(latencies) >= target and not stop:
                    stop = True
                    measure_to = done
                    mark("end")
            j += spec.concurrency

    async def marker() -> None:
        await asyncio.sleep(max(0.0, measure_from - clock()))
        mark("begin")
        if spec.duration is not None:
            await asyncio.sleep(max(0.0, measure_to - clock()))
            mark("end")

    delay = start - clock()
    if delay > 0:
        await asyncio.sleep(delay)
    timer = asyncio.ensure_future(marker())
    await asyncio.gather(*(lane(i) for i in range(spec.concurrency)))
    if not timer.done():  # count mode ended, or lanes ended before the window (impossible)
        timer.cancel()
    if "begin" not in cpu_marks:
        mark("begin")
    if "end" not in cpu_marks:
        mark("end")
    return WorkerReport(
        latencies=latencies.tobytes(),
        errors=sum(errors.values()),
        error_kinds=errors,
        window=max(time_marks["end"] - time_marks["begin"], 1e-9),
        cpu=cpu_marks["end"] - cpu_marks["begin"],
        pid=os.getpid(),
    )


# --------------------------------------------------------------------------- parent side


@dataclass(slots=True)
class LevelOutcome:
    latencies: list[float]
    errors: int
    error_kinds: dict[str, int]
    window: float
    client_cpu: float
    processes: int
    begin: float = 0.0  # time.monotonic() of the window's start
    end: float = 0.0
    begin_sample: Any = None  # what `sample` returned at the window's start
    end_sample: Any = None  # and at its end


class ClientPool:
    """Worker processes driving one cluster. Always ``close()`` (or use ``with``)."""

    def __init__(
        self,
        peers: Sequence[str],
        *,
        cluster_id: str,
        processes: int,
        keys: int,
        value_size: int,
        timeout: float,
        lanes_per_session: int = 0,
    ) -> None:
        if processes < 1:
            raise ValueError("at least one client process")
        ctx = mp.get_context("spawn")
        self._workers: list[tuple[mp.process.BaseProcess, Connection]] = []
        self.pids: list[int] = []
        try:
            for index in range(processes):
                parent, child = ctx.Pipe()
                config = WorkerConfig(
                    tuple(peers), cluster_id, index, keys, value_size, timeout, lanes_per_session
                )
                process = ctx.Process(
                    target=worker_main,
                    args=(child, config),
                    name=f"zraft-bench-client-{index}",
                    daemon=True,
                )
                process.start()
                child.close()
                self._workers.append((process, parent))
            for process, conn in self._workers:
                kind, pid = self._receive(conn, process, 60.0)
                if kind != "ready":
                    raise RuntimeError(f"client process said {kind!r} instead of 'ready'")
                self.pids.append(pid)
        except BaseException:
            self.close()
            raise

    @property
    def size(self) -> int:
        return len(self._workers)

    @staticmethod
    def _receive(conn: Connection, process: mp.process.BaseProcess, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while not conn.poll(0.1):
            if not process.is_alive():
                raise RuntimeError(f"client process {process.name} died ({process.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"client process {process.name}: no answer in {timeout}s")
        return conn.recv()

    def prefill(self, lanes: int = 64, timeout: float = 120.0) -> None:
        for _, conn in self._workers:
            conn.send(("prefill", lanes))
        for process, conn in self._workers:
            kind, _ = self._receive(conn, process, timeout)
            if kind != "prefilled":
                raise RuntimeError(f"client process said {kind!r} instead of 'prefilled'")

    def run_level(
        self,
        op: str,
        concurrency: int,
        *,
        processes: int,
        warmup: float,
        duration: float | None,
        count: int | None,
        sample: Callable[[], Any] | None = None,
    ) -> LevelOutcome:
        """Run one level on ``processes`` of the workers, ``concurrency`` lanes in total.

        ``sample`` (server CPU counters, say) is called at the start and the end of the
        measuring window (for a count-bounded level, when the answers arrive), while the
        parent has nothing else to do; the outcome carries both samples.
        """
        used = self._workers[: max(1, min(processes, concurrency, self.size))]
        share = [concurrency // len(used) + (1 if i < concurrency % len(used) else 0)
                 for i in range(len(used))]  # fmt: skip
        per_count = None if count is None else max(1, math.ceil(count / len(used)))
        start_at = time.monotonic() + _START_SLACK_S
        for (_, conn), lanes in zip(used, share, strict=True):
            conn.send(("level", LevelSpec(op, lanes, start_at, warmup, duration, per_count)))
        begin_sample: Any = None
        end_sample: Any = None
        begin = start_at + warmup
        _sleep_until(begin)
        if sample is not None:
            begin_sample = sample()
        end = begin
        if duration is not None:
            end = begin + duration
            _sleep_until(end)
            if sample is not None:
                end_sample = sample()
        budget = warmup + (duration or 0.0) + 600.0
        reports: list[WorkerReport] = []
        for process, conn in used:
            kind, report = self._receive(conn, process, budget)
            if kind != "level":
                raise RuntimeError(f"client process said {kind!r} instead of 'level'")
            reports.append(report)
        if duration is None:
            end = time.monotonic()
            if sample is not None:
                end_sample = sample()
        latencies: list[float] = []
        kinds: dict[str, int] = {}
        for report in reports:
            latencies.extend(report.latency_list())
            for name, n in report.error_kinds.items():
                kinds[name] = kinds.get(name, 0) + n
        return LevelOutcome(
            latencies=latencies,
            errors=sum(r.errors for r in reports),
            error_kinds=kinds,
            window=max(r.window for r in reports),
            client_cpu=sum(r.cpu for r in reports),
            processes=len(used),
            begin=begin,
            end=end,
            begin_sample=begin_sample,
            end_sample=end_sample,
        )

    def close(self) -> None:
        """Ask every worker to stop, then terminate and kill whatever is left."""
        for _, conn in self._workers:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        deadline = time.monotonic() + 5.0
        for process, _ in self._workers:
            process.join(max(0.0, deadline - time.monotonic()))
        for process, _ in self._workers:
            if process.is_alive():
                process.terminate()
                process.join(2.0)
            if process.is_alive():
                process.kill()
                process.join(2.0)
        for _, conn in self._workers:
            conn.close()
        self._workers.clear()

    def __enter__(self) -> ClientPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sleep_until(when: float) -> None:
    delay = when - time.monotonic()
    if delay > 0:
        time.sleep(delay)

"""What one benchmark level measured, medians over runs, and the table and JSON forms.

Pure: numbers in, numbers and text out.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

# The minimal Python write path on this machine kind: a bare 3-process pipeline (batch,
# msgpack, fdatasync, ZeroMQ, no actors or safety logic), 100-byte writes, one client
# process with this many requests in flight. Source: shared/reference/performance.md,
# "The minimal Python write path (the ceiling)", measured 2026-11-21 (1 in flight:
# ~2,500-3,000 writes/s at ~0.3 ms, of which we take the middle).
WRITE_CEILING: dict[int, float] = {1: 2_750.0, 16: 22_000.0, 256: 69_000.0, 2_048: 109_000.0}
WRITE_CEILING_P50_MS: dict[int, float] = {1: 0.3, 16: 0.65, 256: 3.3, 2_048: 4.4}
CEILING_SYSTEM = "ceiling"  # zraft bench --ceiling: that pipeline, measured in the same run


def ceiling_fraction(op: str, concurrency: int, throughput: float) -> float | None:
    """Write throughput as a fraction of the ceiling, or None (reads, unlisted levels)."""
    ceiling = WRITE_CEILING.get(concurrency)
    if op != "write" or ceiling is None:
        return None
    return throughput / ceiling


def percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    if not ordered:
        raise ValueError("no samples")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction {fraction} not in (0, 1]")
    rank = math.ceil(fraction * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class LevelResult:
    """One system, one operation, one concurrency level, one run."""

    system: str
    op: str  # "write" or "read"
    concurrency: int
    client_processes: int
    run: int
    completed: int  # requests answered successfully inside the measuring window
    errors: int  # requests that raised (timeouts, errors) while the level ran
    seconds: float  # length of the measuring window
    throughput: float  # completed / seconds
    p50_ms: float
    p99_ms: float
    max_ms: float
    client_cpu_us: float  # client processes' CPU (all threads) per completed request
    client_cpu_cores: float  # client CPU seconds per second of window (1.0 = one core busy)
    server_cpu_us: float | None  # all server processes' CPU per completed request
    leader_cpu_cores: float | None  # the leader process's CPU seconds per second
    servers_cpu_cores: float | None  # all server processes' CPU seconds per second
    error_kinds: dict[str, int] = field(default_factory=dict)
    leader_counters: dict[str, float] = field(default_factory=dict)  # zraft leader metrics

    @property
    def ceiling_fraction(self) -> float | None:
        return ceiling_fraction(self.op, self.concurrency, self.throughput)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ceiling_fraction"] = self.ceiling_fraction
        return data


def level_result(
    *,
    system: str,
    op: str,
    concurrency: int,
    client_processes: int,
    run: int,
    latencies: list[float],
    errors: int,
    seconds: float,
    client_cpu: float,
    server_cpu: float | None,
    leader_cpu: float | None,
    error_kinds: dict[str, int] | None = None,
    leader_counters: dict[str, float] | None = None,
) -> LevelResult:
    """Build a result from raw latencies (seconds) and CPU seconds spent in the window."""
    ordered = sorted(latencies)
    completed = len(ordered)
    if seconds <= 0:
        raise ValueError("the measuring window must be longer than zero")
    per_request = 1e6 / completed if completed else math.nan
    return LevelResult(
        system=system,
        op=op,
        concurrency=concurrency,
        client_processes=client_processes,
        run=run,
        completed=completed,
        errors=errors,
        seconds=seconds,
        throughput=completed / seconds,
        p50_ms=percentile(ordered, 0.50) * 1e3 if ordered else math.nan,
        p99_ms=percentile(ordered, 0.99) * 1e3 if ordered else math.nan,
        max_ms=ordered[-1] * 1e3 if ordered else math.nan,
        client_cpu_us=client_cpu * per_request,
        client_cpu_cores=client_cpu / seconds,
        server_cpu_us=None if server_cpu is None else server_cpu * per_request,
        leader_cpu_cores=None if leader_cpu is None else leader_cpu / seconds,
        servers_cpu_cores=None if server_cpu is None else server_cpu / seconds,
        error_kinds=dict(error_kinds or {}),
        leader_counters=dict(leader_counters or {}),
    )


@dataclass(frozen=True, slots=True)
class Summary:
    """Medians over the runs of one (system, op, concurrency)."""

    system: str
    op: str
    concurrency: int
    client_processes: int
    runs: int
    throughput: float
    throughput_min: float
    throughput_max: float
    p50_ms: float
    p99_ms: float
    client_cpu_us: float
    client_cpu_cores: float
    server_cpu_us: float | None
    leader_cpu_cores: float | None
    errors: int  # summed over runs
    # The bare pipeline's writes/s at this level measured in the same run (``--ceiling``),
    # which then replaces the reference figure in ``ceiling_fraction``.
    measured_ceiling: float | None = None

    @property
    def ceiling_fraction(self) -> float | None:
        if self.op == "write" and self.measured_ceiling:
            return self.throughput / self.measured_ceiling
        return ceiling_fraction(self.op, self.concurrency, self.throughput)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ceiling_fraction"] = self.ceiling_fraction
        return data


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def summarize(results: Iterable[LevelResult]) -> list[Summary]:
    """Group by (system, op, concurrency), in first-seen order, and take medians; writes
    get the same run's ceiling at their level, if it was measured."""
    groups: dict[tuple[str, str, int], list[LevelResult]] = {}
    for result in results:
        groups.setdefault((result.system, result.op, result.concurrency), []).append(result)
    out = []
    for (system, op, concurrency), group in groups.items():
        throughputs = [r.throughput for r in group]
        out.append(
            Summary(
                system=system,
                op=op,
                concurrency=concurrency,
                client_processes=max(r.client_processes for r in group),
                runs=len(group),
                throughput=statistics.median(throughputs),
                throughput_min=min(throughputs),
                throughput_max=max(throughputs),
                p50_ms=_median(r.p50_ms for r in group) or math.nan,
                p99_ms=_median(r.p99_ms for r in group) or math.nan,
                client_cpu_us=_median(r.client_cpu_us for r in group) or math.nan,
                client_cpu_cores=_median(r.client_cpu_cores for r in group) or math.nan,
                server_cpu_us=_median(r.server_cpu_us for r in group),
                leader_cpu_cores=_median(r.leader_cpu_cores for r in group),
                errors=sum(r.errors for r in group),
            )
        )
    measured = {s.concurrency: s.throughput for s in out if s.system == CEILING_SYSTEM}
    return [
        replace(s, measured_ceiling=measured[s.concurrency])
        if s.op == "write" and s.concurrency in measured
        else s
        for s in out
    ]


# --------------------------------------------------------------------------- rendering

COLUMNS = (
    "system", "op", "in flight", "procs", "runs", "ops/s", "min..max", "p50 ms", "p99 ms",
    "of ceiling", "client µs/op", "client cores", "servers µs/op", "leader cores", "errors",
)  # fmt: skip


def _num(value: float | None, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:,.{digits}f}"


def _ms(value: float) -> str:
    if math.isnan(value):
        return "—"
    return f"{value:.2f}" if value < 10 else f"{value:,.0f}"


def rows(summaries: Sequence[Summary], notes: dict[str, str] | None = None) -> list[list[str]]:
    out = []
    for s in summaries:
        note = (notes or {}).get(s.system)
        label = f"{s.system} ({note})" if note else s.system
        fraction = s.ceiling_fraction
        out.append(
            [
                label,
                s.op,
                f"{s.concurrency:,}",
                str(s.client_processes),
                str(s.runs),
                _num(s.throughput),
                f"{_num(s.throughput_min)}..{_num(s.throughput_max)}",
                _ms(s.p50_ms),
                _ms(s.p99_ms),
                "—" if fraction is None else f"{fraction:.2f}",
                _num(s.client_cpu_us, 1),
                _num(s.client_cpu_cores, 2),
                _num(s.server_cpu_us, 1),
                _num(s.leader_cpu_cores, 2),
                str(s.errors),
            ]
        )
    return out


def text_table(summaries: Sequence[Summary], notes: dict[str, str] | None = None) -> str:
    """A fixed-width table for a terminal."""
    body = rows(summaries, notes)
    widths = [max(len(c), *(len(r[i]) for r in body)) for i, c in enumerate(COLUMNS)]
    left = {0, 1}

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    return "\n".join([line(COLUMNS), line(["-" * w for w in widths]), *map(line, body)])


def markdown_table(summaries: Sequence[Summary], notes: dict[str, str] | None = None) -> str:
    """The same table in Markdown (numbers right-aligned)."""
    align = ["---" if i in (0, 1) else "---:" for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows(summaries, notes)]
    return "\n".join(lines)

"""The report of one fault-suite run: JSON, a text summary, and a timeline picture (PNG).

The timeline has one row per client; each operation is a bar from its invocation to its
outcome (green ok, grey fail, orange unknown: an unknown's bar ends when the client gave
up). Faults are shaded spans across all rows, one colour per nemesis, labelled on top.
matplotlib comes with the ``bench`` extra; without it the report says the picture is missing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zraft.linearizability import Operation, Status

log = logging.getLogger(__name__)

STATUS_COLOURS = {Status.OK: "#2ca02c", Status.FAIL: "#7f7f7f", Status.UNKNOWN: "#ff7f0e"}
NEMESIS_COLOURS = {
    "kill": "#d62728",
    "pause": "#9467bd",
    "partition": "#1f77b4",
    "membership": "#8c564b",
    "fsync": "#e377c2",
}


@dataclass(slots=True)
class RunReport:
    seed: int
    started_at: str  # UTC, ISO 8601
    config: dict[str, Any]
    verdict: str = "unknown"  # "pass", "FAIL" or "unknown" (a checker gave up, no anomaly)
    seconds: float = 0.0
    faults: list[dict[str, Any]] = field(default_factory=list)
    workloads: list[dict[str, Any]] = field(default_factory=list)
    convergence: dict[str, Any] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    anomalies: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # the harness's own trouble
    heal: list[str] = field(default_factory=list)
    timeline: str | None = None  # PNG file name, None when not drawn
    timeline_note: str = ""
    run_dir: str = ""

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @property
    def operations_checked(self) -> int:
        return sum(w["operations"] for w in self.workloads)

    def summary(self) -> str:
        lines = [
            f"zraft chaos run, seed {self.seed}, started {self.started_at}: {self.verdict}",
            f"  {self.seconds:.1f} s; nemeses {','.join(self.config.get('nemeses', []))}; "
            f"workloads {','.join(self.config.get('workloads', []))}",
        ]
        lines.append(f"  replay: {self.replay_command()}")
        for w in self.workloads:
            state = {True: "ok", False: "ANOMALY", None: "unknown"}[w["ok"]]
            lines.append(
                f"  {w['workload']}: {state}: {w['operations']} operations "
                f"({w['completed']} ok, {w['failed']} fail, {w['unknown']} unknown)"
            )
        c = self.convergence
        if c:
            lines.append(
                f"  peers: commit {c.get('commit')}, {c.get('applied_commands')} commands applied, "
                f"digest {str(c.get('digest'))[:16]}, {c.get('entries_compared')} log entries "
                f"compared: {'same' if c.get('ok') else c.get('problems')}"
            )
        if self.throughput:
            t = self.throughput
            lines.append(
                f"  throughput: {t.get('baseline', 0):.1f} ok ops/s without faults, "
                f"{t.get('faults', 0):.1f} under faults ({t.get('fraction', 0):.0%})"
            )
        lines.append(f"  {len(self.faults)} faults:")
        for f in self.faults:
            notes = f" ({'; '.join(f['notes'])})" if f["notes"] else ""
            lines.append(f"    {f['start_s']:7.2f}..{f['end_s']}  {f['description']}{notes}")
        for anomaly in self.anomalies:
            lines.append(f"  ANOMALY {anomaly}")
        for error in self.errors:
            lines.append(f"  harness: {error}")
        if self.timeline:
            lines.append(f"  timeline: {self.timeline}")
        elif self.timeline_note:
            lines.append(f"  timeline: {self.timeline_note}")
        return "\n".join(lines)

    def replay_command(self) -> str:
        """The command that runs this schedule again (same seed, faults and workloads)."""
        c = self.config
        return (
            f"zraft chaos --seed {self.seed} --minutes 0.01 --run-seconds {c.get('seconds')} "
            f"--baseline-seconds {c.get('baseline_seconds')} "
            f"--nemesis {','.join(c.get('nemeses', [])) or 'none'} "
            f"--workload {','.join(c.get('workloads', []))} --mixed {c.get('mixed')}"
        )

    def write(self, run_dir: Path) -> None:
        (run_dir / "report.json").write_text(
            json.dumps(self.to_json(), indent=2, default=str) + "\n", encoding="utf-8"
        )
        (run_dir / "report.txt").write_text(self.summary() + "\n", encoding="utf-8")


def draw_timeline(
    path: Path,
    operations: dict[str, list[Operation]],
    faults: list[dict[str, Any]],
    origin: int,
    title: str,
) -> str | None:
    """Draw the timeline PNG; returns why not (matplotlib missing) or None when drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError:
        return "not drawn: matplotlib is not installed (pip install 'zraft[bench]')"

    rows: list[tuple[str, list[Operation]]] = []
    for workload, ops in sorted(operations.items()):
        clients = sorted({op.client for op in ops}, key=str)
        for client in clients:
            rows.append((f"{workload} {client}", [op for op in ops if op.client == client]))
    end = max(
        [((op.complete or op.invoke) - origin) / 1e9 for _, ops in rows for op in ops]
        + [f["end_s"] or 0 for f in faults]
        + [1.0]
    )
    figure, (rate_axes, axes) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(14, 2.5 + 0.35 * max(len(rows), 4)),
        gridspec_kw={"height_ratios": [1, max(len(rows), 4) / 3]},
    )
    try:
        _draw_rate(rate_axes, rows, origin, end)
        for y, (_, ops) in enumerate(rows):
            for status, colour in STATUS_COLOURS.items():
                bars = [_bar(op, origin) for op in ops if op.status is status]
                if bars:
                    axes.broken_barh(bars, (y - 0.35, 0.7), facecolors=colour, linewidth=0)
        seen: dict[str, str] = {}
        for number, fault in enumerate(faults):
            colour = NEMESIS_COLOURS.get(fault["nemesis"], "#bcbd22")
            stop = fault["end_s"] if fault["end_s"] is not None else end
            for panel in (axes, rate_axes):
                panel.axvspan(fault["start_s"], stop, color=colour, alpha=0.15, linewidth=0)
            axes.text(
                fault["start_s"], len(rows) - 0.4 + 0.45 * (number % 2), fault["description"],
                fontsize=6, color=colour, clip_on=True,
            )  # fmt: skip
            seen.setdefault(fault["nemesis"], colour)
        axes.set_yticks(range(len(rows)), [name for name, _ in rows], fontsize=7)
        axes.set_ylim(-0.8, len(rows) + 0.8)
        axes.set_xlim(0, end)
        axes.set_xlabel("seconds since the first operation")
        rate_axes.set_title(title, fontsize=9)
        legend = [Patch(color=c, label=str(s)) for s, c in STATUS_COLOURS.items()]
        legend += [Patch(color=c, alpha=0.3, label=n) for n, c in seen.items()]
        axes.legend(handles=legend, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
    return None


def _draw_rate(axes: Any, rows: list[tuple[str, list[Operation]]], origin: int, end: float) -> None:
    """Acknowledged operations per second, in half-second bins, over all clients."""
    width = 0.5
    bins = [0] * (int(end / width) + 1)
    for _, ops in rows:
        for op in ops:
            if op.status is Status.OK and op.complete is not None:
                bins[min(int((op.complete - origin) / 1e9 / width), len(bins) - 1)] += 1
    axes.step([i * width for i in range(len(bins))], [n / width for n in bins], where="post",
              color="#2ca02c", linewidth=1)  # fmt: skip
    axes.set_ylabel("ok ops/s", fontsize=7)
    axes.tick_params(labelsize=7)
    axes.set_ylim(bottom=0)


def _bar(op: Operation, origin: int) -> tuple[float, float]:
    """(start, width) in seconds; a minimum width keeps instant operations visible."""
    width = ((op.complete or op.invoke) - op.invoke) / 1e9
    return (op.invoke - origin) / 1e9, max(width, 0.004)

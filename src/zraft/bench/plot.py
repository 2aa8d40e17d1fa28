"""``--plot``: throughput and p99 latency against concurrency, one line per system and op."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .results import WRITE_CEILING, Summary


def plot(summaries: Sequence[Summary], path: Path, title: str = "zraft bench") -> None:
    """Write a PNG with two panels (throughput, p99) to ``path``. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    styles = {"write": "-o", "read": "--s"}
    series: dict[tuple[str, str], list[Summary]] = {}
    for s in summaries:
        series.setdefault((s.system, s.op), []).append(s)
    for (system, op), points in series.items():
        points = sorted(points, key=lambda s: s.concurrency)
        xs = [p.concurrency for p in points]
        label = f"{system} {op}s"
        left.plot(xs, [p.throughput for p in points], styles.get(op, "-"), label=label)
        right.plot(xs, [p.p99_ms for p in points], styles.get(op, "-"), label=label)
    levels = sorted(WRITE_CEILING)
    reference = [WRITE_CEILING[c] for c in levels]
    left.plot(levels, reference, ":", color="grey", label="reference ceiling (performance.md)")
    for axis, ylabel in ((left, "requests/s"), (right, "p99 latency, ms")):
        axis.set_xscale("log", base=2)
        ticks = sorted({s.concurrency for s in summaries} | set(levels))
        axis.set_xticks(ticks, _tick_labels(ticks))
        axis.tick_params(axis="x", labelrotation=30)
        axis.set_yscale("log")
        axis.set_xlabel("requests in flight")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    left.set_title("throughput")
    right.set_title("p99 latency")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tick_labels(ticks: Sequence[int]) -> list[str]:
    """Labels for the levels, leaving out one too close to the last labelled (256, 384 and
    512 side by side on a log axis run into each other)."""
    labels, last = [], 0
    for tick in ticks:
        if tick >= 1.6 * last:
            labels.append(f"{tick:,}")
            last = tick
        else:
            labels.append("")
    return labels

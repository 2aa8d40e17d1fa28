"""``zraft chaos``: the Jepsen-style fault suite from the command line.

    zraft chaos --minutes 10 --seed 7 --nemesis kill,partition --workload kv,counter --out runs

Runs of ``--run-seconds`` each (seeds S, S+1, ...) until ``--minutes`` are used; every run
writes ``report.txt``, ``report.json`` and ``timeline.png`` in its own directory under
``--out``, and the series a ``summary.json``. Exit status: 0 all passed, 1 an anomaly was
found, 2 some run could not be decided (a checker gave up, the harness failed).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_NEMESES = ("kill", "pause", "partition", "membership", "fsync", "operator")
_WORKLOADS = ("kv", "counter", "casbin", "lock", "flood")
_DEFAULT_WORKLOADS = ("kv", "counter")  # one backend, so one cluster per run


def _names(known: tuple[str, ...]) -> Any:
    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        if names == ["all"]:
            return list(known)
        if names == ["none"]:
            return []
        unknown = sorted(set(names) - set(known))
        if not names or unknown:
            raise argparse.ArgumentTypeError(
                f"choose from {','.join(known)} (comma-separated) or 'all'"
            )
        return names

    return parse


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text}")
    return value


def add_chaos_command(commands: Any) -> None:
    """Register ``zraft chaos`` on the main parser's subcommands."""
    cmd = commands.add_parser(
        "chaos", help="run the fault suite: real peers, faults, checked histories"
    )
    cmd.add_argument("--minutes", type=_positive, default=1.0,
                     help="total time for the series of runs (default 1)")  # fmt: skip
    cmd.add_argument("--run-seconds", type=_positive, default=45.0,
                     help="seconds of faults per run (default 45)")  # fmt: skip
    cmd.add_argument("--baseline-seconds", type=float, default=5.0,
                     help="fault-free seconds at the start of each run (default 5)")  # fmt: skip
    cmd.add_argument("--seed", type=int, default=1, help="seed of the first run (default 1)")
    cmd.add_argument("--nemesis", type=_names(_NEMESES), default=list(_NEMESES),
                     help=f"faults, comma-separated (default: {','.join(_NEMESES)})")  # fmt: skip
    cmd.add_argument("--workload", type=_names(_WORKLOADS), default=list(_DEFAULT_WORKLOADS),
                     help=f"workloads of {','.join(_WORKLOADS)} (default: "
                          f"{','.join(_DEFAULT_WORKLOADS)}; each backend runs apart)")  # fmt: skip
    cmd.add_argument("--mixed", type=float, default=0.35,
                     help="chance that a window has two faults at once (default 0.35)")  # fmt: skip
    cmd.add_argument("--out", type=Path, default=Path("chaos-runs"),
                     help="directory for the runs' reports (default ./chaos-runs)")  # fmt: skip
    cmd.add_argument("--keep", action="store_true",
                     help="keep histories and peer data of passing runs too")  # fmt: skip
    cmd.add_argument("--stop-on-failure", action="store_true",
                     help="stop the series at the first run with an anomaly")  # fmt: skip


def run_chaos(args: argparse.Namespace) -> int:
    from .nemesis import ScheduleOptions  # the harness, imported only when it runs
    from .runner import RunOptions, run_series, summarize

    if not 0 <= args.mixed <= 1:
        sys.stderr.write("zraft chaos: --mixed is a probability, between 0 and 1\n")
        return 2
    options = RunOptions(
        seed=args.seed,
        seconds=args.run_seconds,
        baseline_seconds=max(0.0, args.baseline_seconds),
        nemeses=tuple(args.nemesis),
        workloads=tuple(args.workload),
        out=args.out,
        keep=args.keep,
        schedule=ScheduleOptions(mixed=args.mixed),
    )
    try:
        options.validate()
    except ValueError as error:
        sys.stderr.write(f"zraft chaos: {error}\n")
        return 2
    reports = run_series(options, args.minutes, stop_on_failure=args.stop_on_failure)
    for report in reports:
        _say(report.summary())
        _say("")
    summary = summarize(reports)
    _say(
        f"{summary.runs} runs: {summary.passed} passed, {summary.failed} failed, "
        f"{summary.undecided} undecided; {summary.operations_checked} operations checked, "
        f"{summary.faults_injected} faults, {summary.anomalies} anomalies; throughput under "
        f"faults {summary.throughput_fraction:.0%} of fault-free; summary in "
        f"{Path(args.out) / 'summary.json'}"
    )
    if summary.failed:
        return 1
    return 2 if summary.undecided else 0


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()

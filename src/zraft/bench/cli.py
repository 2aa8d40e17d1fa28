"""``zraft bench``: the command's arguments and what it prints.

Importing this module is cheap; the harness is imported when the command runs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

Writer = Callable[[str], None]


def _stdout(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _int_list(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated integers: {text}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"need positive integers: {text}")
    return values


def _ops(text: str) -> list[str]:
    ops = [part.strip() for part in text.split(",") if part.strip()]
    if not ops or set(ops) - {"write", "read"}:
        raise argparse.ArgumentTypeError("ops are 'write' and/or 'read'")
    return ops


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--concurrency", type=_int_list, default=[1, 16, 256, 2048],
        help="requests in flight per level, comma-separated (default 1,16,256,2048)",
    )  # fmt: skip
    parser.add_argument(
        "--client-processes", type=_int_list, default=[1],
        help="client processes: one number, or one per level (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--lanes-per-session", type=int, default=256,
        help="requests in flight per client session; more lanes open more sessions "
        "(default 256; 0: one session per client process)",
    )  # fmt: skip
    parser.add_argument("--ops", type=_ops, default=["write", "read"], help="write,read")
    bound = parser.add_mutually_exclusive_group()
    bound.add_argument("--duration", type=float, default=None,
                       help="seconds measured per level (default 5)")  # fmt: skip
    bound.add_argument("--count", type=int, default=None,
                       help="requests measured per level, instead of a duration")  # fmt: skip
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds (default 1)")
    parser.add_argument("--runs", type=int, default=1, help="runs; the table shows medians")
    parser.add_argument("--keys", type=int, default=1000, help="keys per client process")
    parser.add_argument("--value-size", type=int, default=100, help="bytes (default 100)")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request, seconds")
    parser.add_argument("--cluster-id", default="zraft")
    parser.add_argument("--pysyncobj", action="store_true",
                        help="also run PySyncObj 0.3.17 through the same clients")  # fmt: skip
    parser.add_argument("--no-zraft", action="store_true", help="run PySyncObj only")
    parser.add_argument("--ceiling", action="store_true",
                        help="also run the bare write pipeline (no consensus) in the same run; "
                        "'of ceiling' is then measured against it")  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--json-out", type=Path, default=None, metavar="PATH",
                        help="also write the JSON report to PATH")  # fmt: skip
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="PATH.png",
        help="throughput and p99 against concurrency (needs matplotlib)",
    )  # fmt: skip
    parser.add_argument(
        "--peer-arg", action="append", default=[], metavar="FLAG",
        help="an extra `zraft serve` flag for every zraft peer (--peer-arg=--max-log-count=9)",
    )  # fmt: skip
    parser.add_argument(
        "--data-dir", type=Path, default=None,
        help="keep the peers' data here (default: a temp dir, removed)",
    )  # fmt: skip


def add_bench_command(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the ``zraft`` command's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        help="throughput and latency of 3 local peers under concurrent clients",
        description=(
            "Start 3 local peers (fsync on) in a temp dir and drive 100-byte writes and "
            "linearizable reads from separate client processes at each concurrency level."
        ),
    )
    add_bench_arguments(parser)
    return parser


def _config(args: argparse.Namespace) -> Any:
    from .runner import BenchConfig

    systems = [] if args.no_zraft else ["zraft"]
    if args.pysyncobj or args.no_zraft:
        systems.append("pysyncobj")
    if args.ceiling:
        systems.append("ceiling")
    duration = args.duration if args.duration is not None else (None if args.count else 5.0)
    return BenchConfig(
        concurrency=tuple(args.concurrency),
        client_processes=tuple(args.client_processes),
        ops=tuple(args.ops),
        systems=tuple(systems),
        duration=duration,
        count=args.count,
        warmup=args.warmup,
        runs=args.runs,
        keys=args.keys,
        value_size=args.value_size,
        timeout=args.timeout,
        lanes_per_session=args.lanes_per_session,
        cluster_id=args.cluster_id,
        root=args.data_dir,
        peer_args=tuple(args.peer_arg),
    )


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_bench(args: argparse.Namespace, write: Writer = _stdout) -> int:
    """Run the benchmark ``args`` describes; report through ``write``. Returns an exit code."""
    from .results import markdown_table, summarize, text_table
    from .runner import NOTES, run_benchmark

    if args.pysyncobj or args.no_zraft:
        try:
            import pysyncobj  # noqa: F401
        except ImportError:
            write("zraft bench --pysyncobj needs PySyncObj: pip install 'zraft[bench]'")
            return 2
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            write("zraft bench --plot needs matplotlib: pip install 'zraft[bench]'")
            return 2
    try:
        config = _config(args)
    except ValueError as error:
        write(f"zraft bench: {error}")
        return 2
    # SIGTERM unwinds like Ctrl-C, so every finally block kills what it started.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    started = datetime.datetime.now(datetime.UTC)
    try:
        bench = run_benchmark(config)
    except KeyboardInterrupt:
        write("zraft bench: interrupted; every process it started has been stopped")
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    summaries = summarize(bench.results)
    report = json.dumps(
        {
            "date": started.isoformat(timespec="seconds"),
            "config": {
                "concurrency": list(config.concurrency),
                "client_processes": list(config.client_processes),
                "ops": list(config.ops),
                "systems": list(config.systems),
                "duration": config.duration,
                "count": config.count,
                "warmup": config.warmup,
                "runs": config.runs,
                "keys": config.keys,
                "value_size": config.value_size,
                "lanes_per_session": config.lanes_per_session,
            },
            "notes": {s: NOTES[s] for s in config.systems},
            "summary": [s.to_json() for s in summaries],
            "results": [r.to_json() for r in bench.results],
        },
        indent=2,
    )
    if args.json_out is not None:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(report + "\n")
    if args.json:
        write(report)
    else:
        notes = {s: NOTES[s] for s in config.systems}
        table = markdown_table if args.markdown else text_table
        write(table(summaries, notes))
        write(
            "ops/s, p50, p99: medians over runs; of ceiling: write ops/s over the bare "
            "pipeline's, measured in this run with --ceiling, else its reference figures "
            "(shared/reference/performance.md); µs/op: CPU per answered request; "
            "cores: CPU seconds per second"
        )
    if args.plot is not None:
        from .plot import plot

        plot(summaries, args.plot, f"zraft bench, {started:%Y-%m-%d}")
        log.info("plot written to %s", args.plot)
    return 0

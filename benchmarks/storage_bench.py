"""Benchmark of the durable log: appends/s against the raw write+fdatasync limit, and RSS.

For 100-byte entries in batches of 1, 10, 100 and 1000 it measures SegmentedLog.append (one
write + one fdatasync per batch) and, in the same run and directory, the raw limit: os.write
of the same number of bytes (same record size) followed by os.fdatasync. Each figure is the
median of several runs. Then a child process builds a log of 1,000,000 entries and reports
its peak and current RSS, and the same after reopening that log.

    PYTHONPATH=<dir holding the zraft package> python benchmarks/storage_bench.py
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from zraft.core.types import Entry, EntryKind
from zraft.storage import SegmentedLog
from zraft.storage.records import encode_record

PAYLOAD = bytes(range(100))
BATCHES = (1, 10, 100, 1000)


def rss_kib() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def raw_run(directory: str, batch: int, rounds: int, record_size: int) -> float:
    """Batches per second of os.write + os.fdatasync of batch * record_size bytes."""
    path = os.path.join(directory, "raw")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    data = b"\x5a" * (batch * record_size)
    try:
        start = time.perf_counter()
        for _ in range(rounds):
            os.write(fd, data)
            os.fdatasync(fd)
        elapsed = time.perf_counter() - start
    finally:
        os.close(fd)
        os.unlink(path)
    return rounds / elapsed


def log_run(directory: str, batch: int, rounds: int) -> float:
    """Batches per second of SegmentedLog.append; only the append calls are timed."""
    path = os.path.join(directory, "log")
    log = SegmentedLog(path)
    elapsed = 0.0
    try:
        for r in range(rounds):
            entries = [Entry(1 + r * batch + k, 1, EntryKind.NORMAL, PAYLOAD) for k in range(batch)]
            start = time.perf_counter()
            log.append(entries)
            elapsed += time.perf_counter() - start
    finally:
        log.close()
        shutil.rmtree(path)
    return rounds / elapsed


def throughput(directory: str, runs: int, seconds: float) -> None:
    record_size = len(encode_record(Entry(1, 1, EntryKind.NORMAL, PAYLOAD)))
    print(f"entry payload 100 bytes, record {record_size} bytes on disk, median of {runs} runs")
    print(
        f"{'batch':>6} {'log entries/s':>14} {'log batches/s':>14} "
        f"{'raw entries/s':>14} {'raw batches/s':>14} {'ratio':>6}"
    )
    for batch in BATCHES:
        # size each run from a quick raw probe so that a run lasts about `seconds`
        probe = raw_run(directory, batch, 20, record_size)
        rounds = max(20, int(probe * seconds))
        ours, raw = [], []
        for _ in range(runs):  # interleave so both see the same disk conditions
            raw.append(raw_run(directory, batch, rounds, record_size))
            ours.append(log_run(directory, batch, rounds))
        log_bps, raw_bps = statistics.median(ours), statistics.median(raw)
        print(
            f"{batch:>6} {log_bps * batch:>14,.0f} {log_bps:>14,.0f} "
            f"{raw_bps * batch:>14,.0f} {raw_bps:>14,.0f} {log_bps / raw_bps:>6.2f}"
        )
        sys.stdout.flush()


def rss_child(directory: str, count: int) -> None:
    """Runs in a fresh process: build a log of `count` entries, then reopen it."""
    base = rss_kib()
    log = SegmentedLog(directory)
    batch = 1000
    start = time.perf_counter()
    for lo in range(1, count + 1, batch):
        log.append([Entry(i, 1, EntryKind.NORMAL, PAYLOAD) for i in range(lo, lo + batch)])
    elapsed = time.perf_counter() - start
    assert log.last_index >= count
    assert log.entry(1) == Entry(1, 1, EntryKind.NORMAL, PAYLOAD)  # old entries from disk
    after_build = rss_kib()
    peak_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    log.close()
    start_open = time.perf_counter()
    log = SegmentedLog(directory)
    open_time = time.perf_counter() - start_open
    assert log.last_index >= count
    after_open = rss_kib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    log.close()
    print(f"interpreter + imports before the log: RSS {base / 1024:.1f} MiB")
    print(
        f"after appending {count:,} entries (batches of {batch}, {elapsed:.1f} s): "
        f"RSS {after_build / 1024:.1f} MiB, maxrss {peak_build / 1024:.1f} MiB"
    )
    print(
        f"after reopening that log ({open_time:.1f} s to recover): "
        f"RSS {after_open / 1024:.1f} MiB, maxrss {peak / 1024:.1f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="directory to benchmark in (default: a new temp dir)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="target length of a run")
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--skip-rss", action="store_true")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.entries)
        return
    directory = tempfile.mkdtemp(prefix="zraft-bench-", dir=args.dir)
    try:
        if not args.skip_rss:  # first, so the child's maxrss inherits nothing large from us
            big = os.path.join(directory, "big")
            command = [sys.executable, os.path.abspath(__file__), "--rss-child", big]
            subprocess.run(command + ["--entries", str(args.entries)], check=True)
            shutil.rmtree(big)
        throughput(directory, args.runs, args.seconds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

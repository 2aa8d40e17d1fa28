"""Watch latency on 3 local peer processes (fsync on): how long from a write to the
callback of the watch it fires, at a steady rate of fired watches.

    python benchmarks/watch_bench.py [--rate 100] [--seconds 10] [--runs 3] [--json]

A watcher session arms a watch on a fresh key ahead of time; a writer (another session in
the same process, so both clocks are one) writes that key at ``--rate`` writes/s. Reported
per run, then as medians over runs:

* ``ack → callback``: from the writer's acknowledgement to the callback. The leader
  answers the writer and the watcher's poll from the same apply, so this is about the
  delivery path alone (it can be negative: the callback may come first);
* ``sent → callback``: from sending the write to the callback (commit + delivery);
* the write latency itself (sent → ack), as the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from typing import Any

from zraft.backends import kv
from zraft.local import LocalCluster
from zraft.session import LightSession, Session, WatchEvent


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def one_run(rate: float, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    fired_at: dict[str, float] = {}
    done = threading.Event()

    def on_fire(event: WatchEvent) -> None:
        fired_at[event.key or ""] = time.perf_counter()
        if len(fired_at) == count:
            done.set()

    with tempfile.TemporaryDirectory() as root, LocalCluster(3, root) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with (
            Session(cluster.peers, session_timeout=10) as watcher,
            LightSession(cluster.peers) as w,
        ):
            keys = [f"w/{i:06d}" for i in range(count)]
            for key in keys:
                watcher.query(kv.get(key), watch=on_fire)
            sent: dict[str, float] = {}
            acked: dict[str, float] = {}
            period = 1 / rate
            start = time.perf_counter()
            for i, key in enumerate(keys):
                delay = start + i * period - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
                sent[key] = time.perf_counter()
                w.write(kv.put(key, i))
                acked[key] = time.perf_counter()
            elapsed = time.perf_counter() - start
            done.wait(timeout=30)
    missing = count - len(fired_at)
    ack_to_cb = [(fired_at[k] - acked[k]) * 1000 for k in fired_at]
    sent_to_cb = [(fired_at[k] - sent[k]) * 1000 for k in fired_at]
    write = [(acked[k] - sent[k]) * 1000 for k in sent]
    return {
        "watches": count,
        "missing": missing,
        "rate": count / elapsed,
        "ack_to_callback_p50_ms": _pct(ack_to_cb, 0.5),
        "ack_to_callback_p99_ms": _pct(ack_to_cb, 0.99),
        "sent_to_callback_p50_ms": _pct(sent_to_cb, 0.5),
        "sent_to_callback_p99_ms": _pct(sent_to_cb, 0.99),
        "write_p50_ms": _pct(write, 0.5),
        "write_p99_ms": _pct(write, 0.99),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100.0, help="fired watches per second")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    runs = []
    for n in range(args.runs):
        result = one_run(args.rate, args.seconds)
        runs.append(result)
        print(f"run {n + 1}: {json.dumps(result)}", file=sys.stderr)
    medians = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
    if args.json:
        print(json.dumps({"runs": runs, "median": medians}, indent=2))
        return 0
    print(f"watch latency, {args.runs} runs of {args.seconds:g} s at {args.rate:g} watches/s")
    print("| what | p50 ms | p99 ms |")
    print("|---|---|---|")
    for label, key in (
        ("write acknowledged → callback", "ack_to_callback"),
        ("write sent → callback", "sent_to_callback"),
        ("write sent → acknowledged (baseline)", "write"),
    ):
        print(f"| {label} | {medians[key + '_p50_ms']:.2f} | {medians[key + '_p99_ms']:.2f} |")
    print(f"missing callbacks: {sum(r['missing'] for r in runs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

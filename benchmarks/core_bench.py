"""Throughput of the driven consensus core, and the cost of simulation schedules.

Drives whole simulated clusters in one process with no faults (every message delivered and
every write "synced" at once to the in-memory storage twins): each peer is the production
driver (``PeerDriver`` + ``ApplyDriver``, the key-value state machine) around the core, so
the figures measure the protocol and driver logic alone: what a committed write costs
before any disk, socket or thread hand-off is involved.

    python benchmarks/core_bench.py [--runs 5] [--entries 20000] [--schedules 1000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from zraft.backends import kv
from zraft.core import NodeOptions
from zraft.sim import Cluster, ScheduleOptions, run_schedule
from zraft.transport import ClientRequest


def committed_per_second(peers: int, batch: int, entries: int) -> float:
    names = [f"n{i}" for i in range(1, peers + 1)]
    with Cluster(1, names, names, options=NodeOptions(max_inflight=64)) as cluster:
        while cluster.leader() is None:
            cluster.tick()
        leader = cluster.leader()
        assert leader is not None and leader.node is not None
        value = "x" * 100
        start_index = leader.node.commit
        seq = 0
        started = time.perf_counter()
        while leader.node.commit - start_index < entries:
            # Several batches in flight at once, as a busy leader would have.
            for _ in range(4):
                requests = []
                for _ in range(batch):
                    seq += 1
                    command = kv.put(f"k{seq % 1000}", value)
                    requests.append(
                        (b"bench", ClientRequest(seq, "write", command, "bench", seq, seq - 1))
                    )
                leader.requests(requests)
            cluster.settle()
        elapsed = time.perf_counter() - started
        return (leader.node.commit - start_index) / elapsed


def seconds_per_thousand_schedules(count: int) -> float:
    started = time.perf_counter()
    for seed in range(count):
        run_schedule(seed, ScheduleOptions(steps=300))
    return (time.perf_counter() - started) * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--entries", type=int, default=20_000)
    parser.add_argument("--schedules", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = []
    for peers in (3, 5):
        for batch in (1, 100):
            entries = args.entries if batch > 1 else args.entries // 10
            samples = [committed_per_second(peers, batch, entries) for _ in range(args.runs)]
            rows.append(
                {
                    "peers": peers,
                    "batch": batch,
                    "median_entries_per_s": round(statistics.median(samples)),
                    "min": round(min(samples)),
                    "max": round(max(samples)),
                }
            )
    schedule_samples = [seconds_per_thousand_schedules(args.schedules) for _ in range(3)]
    report = {
        "commit_throughput": rows,
        "seconds_per_1000_schedules_of_300_steps": round(statistics.median(schedule_samples), 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"core commit throughput, no faults, median of {args.runs} runs")
    print("peers  batch  entries/s (median)   min..max   ratio to batch 1")
    base = {r["peers"]: r["median_entries_per_s"] for r in rows if r["batch"] == 1}
    for r in rows:
        ratio = r["median_entries_per_s"] / base[r["peers"]]
        print(
            f"{r['peers']:>5}  {r['batch']:>5}  {r['median_entries_per_s']:>18,}   "
            f"{r['min']:,}..{r['max']:,}   x{ratio:.1f}"
        )
    print(
        "simulation: "
        f"{report['seconds_per_1000_schedules_of_300_steps']} s per 1,000 schedules of 300 steps"
    )


if __name__ == "__main__":
    main()

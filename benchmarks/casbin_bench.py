"""Casbin plugin benchmark: what one change costs, and how fast it reaches every instance.

    python benchmarks/casbin_bench.py costs            # per-change costs by policy size
    python benchmarks/casbin_bench.py propagation      # 3 peers + 3 enforcers, real processes
    python benchmarks/casbin_bench.py all --runs 3
    python benchmarks/casbin_bench.py propagation --waker watch   # idle instances wake on watches

``costs``: the backend's apply and the local model's apply per change (add + remove of one
rule) at 100 .. 100,000 rules, next to pycasbin's ``add_policy_self`` and a full
``load_policy`` (what a plain Watcher pays per change). No cluster involved.

``propagation``: a local cluster of three peer processes and three enforcers; one makes a
change, and the time until all three have applied it (so ``enforce`` sees it) is recorded;
p50/p99 over many changes at 1k, 10k and 100k rules; then changes/s with the three
instances writing at once. Each figure is the median over ``--runs`` runs.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import casbin

from zraft.casbin import commands as c
from zraft.casbin.backend import CasbinBackend
from zraft.casbin.cluster import BACKEND, connect
from zraft.casbin.local_model import LocalModel
from zraft.casbin.models import RBAC_MODEL
from zraft.casbin.sync import PollingWaker, WatchWaker
from zraft.local import LocalCluster
from zraft.session import LightSession, Session


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _rules(count: int) -> list[list[str]]:
    return [[f"user{i}", f"data{i % 1000}", "read"] for i in range(count)]


def _model_file(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rbac_model.conf"
    path.write_text(RBAC_MODEL)
    return str(path)


# --------------------------------------------------------------------------- costs


def _per_call(fn: Any, repeat: int) -> float:
    started = time.perf_counter()
    for i in range(repeat):
        fn(i)
    return (time.perf_counter() - started) / repeat


def costs(sizes: list[int], directory: Path) -> dict[int, dict[str, float]]:
    model = _model_file(directory)
    out: dict[int, dict[str, float]] = {}
    for size in sizes:
        rules = _rules(size)
        backend = CasbinBackend()
        backend.apply(c.seed([("p", "p", rules)]))

        def backend_change(i: int, b: CasbinBackend = backend) -> None:
            rule = [f"extra{i}", "data", "read"]
            b.apply(c.add("p", "p", [rule]))
            b.apply(c.remove("p", "p", [rule]))

        enforcer = casbin.Enforcer(model)
        local = LocalModel(enforcer)
        local.load([["p", "p", rules]])

        def local_change(i: int, m: LocalModel = local) -> None:
            rule = [f"extra{i}", "data", "read"]
            m.apply({"op": "add", "sec": "p", "ptype": "p", "rules": [rule]})
            m.apply({"op": "remove", "sec": "p", "ptype": "p", "rules": [rule]})

        distributed = casbin.DistributedEnforcer(model)
        distributed.get_model()["p"]["p"].policy = [list(r) for r in rules]  # add_policies: O(n²)

        def self_change(i: int, e: Any = distributed) -> None:
            rule = [f"extra{i}", "data", "read"]
            e.add_policy_self(False, "p", "p", [rule])
            e.remove_policy_self(False, "p", "p", [rule])

        csv = directory / f"policy_{size}.csv"
        csv.write_text("".join(f"p, {r[0]}, {r[1]}, {r[2]}\n" for r in rules))
        loader = casbin.Enforcer(model, str(csv))

        repeat = 2000 if size <= 10_000 else 300
        out[size] = {
            "backend_us": _per_call(backend_change, repeat) / 2 * 1e6,
            "local_us": _per_call(local_change, repeat) / 2 * 1e6,
            "self_methods_us": _per_call(self_change, max(20, repeat // 20)) / 2 * 1e6,
            "load_policy_ms": _per_call(lambda _i, e=loader: e.load_policy(), 3) * 1e3,
        }
    return out


# --------------------------------------------------------------------------- propagation


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def propagation(size: int, changes: int, directory: Path, waker: str = "poll",
                idle: float = 0.01) -> dict[str, float]:
    model = _model_file(directory)
    with LocalCluster(3, directory / f"peers_{size}", extra_args=["--backend", BACKEND]) as lc:
        lc.start()
        lc.wait_for_leader()
        with LightSession(lc.peers) as session:
            session.write(c.seed([("p", "p", _rules(size))]), timeout=60)
        enforcers = [casbin.SyncedEnforcer(model) for _ in range(3)]
        sessions = (
            [Session(lc.peers, session_timeout=10.0) for _ in enforcers] if waker == "watch" else []
        )
        wakers: list[Any] = [WatchWaker(s, fallback=1.0) for s in sessions] or [
            PollingWaker(idle) for _ in enforcers]
        nodes = [connect(e, lc.peers, start_timeout=60, waker=w)
                 for e, w in zip(enforcers, wakers, strict=True)]
        try:
            latencies, commits, spreads = [], [], []
            for i in range(changes):
                writer = nodes[i % 3]
                started = time.perf_counter()
                result = writer.writer.write(c.add("p", "p", [[f"new{i}", "d", "read"]]))
                committed = time.perf_counter()
                seq = result["seq"]
                while any(node.sync.applied_seq < seq for node in nodes):
                    time.sleep(0.0002)
                done = time.perf_counter()
                latencies.append(done - started)
                commits.append(committed - started)
                spreads.append(done - committed)
            rate = _throughput(enforcers, seconds=3.0)
        finally:
            for node in nodes:
                node.close()
            for session in sessions:
                session.close()
    return {"p50_ms": _percentile(latencies, 0.5) * 1e3,
            "p99_ms": _percentile(latencies, 0.99) * 1e3,
            "commit_p50_ms": _percentile(commits, 0.5) * 1e3,
            "commit_p99_ms": _percentile(commits, 0.99) * 1e3,
            "spread_p50_ms": _percentile(spreads, 0.5) * 1e3,
            "spread_p99_ms": _percentile(spreads, 0.99) * 1e3,
            "changes_per_s": rate}


def _throughput(enforcers: list[Any], seconds: float) -> float:
    done = [0] * len(enforcers)
    stop = threading.Event()

    def write(index: int) -> None:
        i = 0
        while not stop.is_set():
            enforcers[index].add_policy(f"load{index}_{i}", "d", "write")
            done[index] += 1
            i += 1

    threads = [threading.Thread(target=write, args=(n,)) for n in range(len(enforcers))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    return sum(done) / (time.perf_counter() - started)


# --------------------------------------------------------------------------- main


def _median_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(row[key] for row in rows) for key in rows[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["costs", "propagation", "all"], default="all",
                        nargs="?")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--changes", type=int, default=300, help="changes per propagation run")
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--waker", choices=["poll", "watch"], default="poll",
                        help="how idle instances learn of changes")
    parser.add_argument("--idle-ms", type=float, default=10.0, help="poll interval when idle")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="zraft-casbin-bench-") as root:
        directory = Path(root)
        if args.what in ("costs", "all"):
            runs = [costs([100, *sizes], directory) for _ in range(args.runs)]
            _say("per change (add or remove of one rule), median of runs:")
            _say(f"{'rules':>8} {'backend':>10} {'local model':>12} {'*_self':>10} "
                 f"{'load_policy':>12}")
            for size in [100, *sizes]:
                row = _median_rows([run[size] for run in runs])
                _say(f"{size:>8} {row['backend_us']:>8.1f}us {row['local_us']:>10.1f}us "
                     f"{row['self_methods_us']:>8.0f}us {row['load_policy_ms']:>10.1f}ms")
        if args.what in ("propagation", "all"):
            how = "watches" if args.waker == "watch" else f"polling every {args.idle_ms:g} ms"
            _say(f"propagation (change on one instance -> applied on all three; idle instances "
                 f"wake by {how}), median of runs:")
            _say("(total = commit, the write's round trip through the leader, + spread, "
                 "from the commit's acknowledgement to applied on all three)")
            _say(f"{'rules':>8} {'total p50':>10} {'p99':>8} {'commit p50':>11} {'p99':>8} "
                 f"{'spread p50':>11} {'p99':>8} {'changes/s':>10}")
            for size in sizes:
                rows = [propagation(size, args.changes, directory / f"run{r}", args.waker,
                                    args.idle_ms / 1000) for r in range(args.runs)]
                row = _median_rows(rows)
                _say(f"{size:>8} {row['p50_ms']:>8.1f}ms {row['p99_ms']:>6.1f}ms "
                     f"{row['commit_p50_ms']:>9.1f}ms {row['commit_p99_ms']:>6.1f}ms "
                     f"{row['spread_p50_ms']:>9.1f}ms {row['spread_p99_ms']:>6.1f}ms "
                     f"{row['changes_per_s']:>10.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

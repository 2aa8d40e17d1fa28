"""Compare two installed zraft versions by alternating runs of ``zraft bench``.

This machine's speed drifts by ±15% within minutes (other tenants), so two versions are
compared by running them in turn, several times, minutes apart at most, and taking each
one's median per level:

    python -m venv /tmp/before && /tmp/before/bin/pip install <checkout of the old commit>
    python benchmarks/alternate.py --pairs 3 --concurrency 1,16,256,2048 \\
        before=/tmp/before/bin/zraft after=.venv/bin/zraft
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections import defaultdict


def run_once(zraft: str, concurrency: str, duration: float, ops: str) -> list[dict]:
    command = [
        zraft, "bench", "--concurrency", concurrency, "--duration", str(duration),
        "--runs", "1", "--ops", ops, "--json",
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True, timeout=1800)
    return json.loads(done.stdout)["summary"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("versions", nargs=2, metavar="NAME=ZRAFT", help="a name and its zraft")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--concurrency", default="1,16,256,2048")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--ops", default="write")
    args = parser.parse_args(argv)
    versions = [tuple(v.split("=", 1)) for v in args.versions]
    if any(len(v) != 2 for v in versions):
        parser.error("versions are NAME=PATH_TO_ZRAFT")
    rows: dict[tuple[str, str, int], list[dict]] = defaultdict(list)
    for _ in range(args.pairs):
        for name, zraft in versions:
            for r in run_once(zraft, args.concurrency, args.duration, args.ops):
                rows[(name, r["op"], r["concurrency"])].append(r)
                print(f"{name} {r['op']} x{r['concurrency']}: {r['throughput']:.0f}/s "
                      f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.1f} ms "
                      f"servers {r['server_cpu_us']:.0f} us/op", file=sys.stderr)
    print("version  op     in flight   ops/s  p50 ms  p99 ms  servers µs/op   (medians)")
    for (name, op, level), runs in sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][1])):
        def median(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        print(f"{name:8} {op:6} {level:9,} {median('throughput'):7,.0f} "
              f"{median('p50_ms'):7.2f} {median('p99_ms'):7.1f} {median('server_cpu_us'):14.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

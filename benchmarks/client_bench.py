"""Client throughput and latency of 3 local peers: ``zraft bench`` without the CLI wiring.

    python benchmarks/client_bench.py [--concurrency 1,16,256,2048] [--duration 5]
        [--runs 3] [--pysyncobj] [--json | --markdown] [--plot docs/bench.png]

Same arguments as ``zraft bench`` (see ``zraft.bench.cli``); the report goes to stdout,
progress to stderr.
"""

from __future__ import annotations

import argparse
import logging

from zraft.bench.cli import add_bench_arguments, run_bench


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default="INFO")
    add_bench_arguments(parser)
    args = parser.parse_args()
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return run_bench(args)


if __name__ == "__main__":
    raise SystemExit(main())

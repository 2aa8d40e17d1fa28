"""How long a new cluster takes to found and elect: peers launched at once on 127.0.0.1.

    python benchmarks/startup_bench.py --runs 5 --peers 3

Prints, per run, the seconds from launching the peers until every data directory records
its founding, and until a leader is elected; then the medians.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

from zraft.local import LocalCluster

log = logging.getLogger("startup_bench")


def founded(cluster: LocalCluster, peer: str) -> bool:
    try:
        identity = json.loads((cluster.data_dir(peer) / "identity.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(identity.get("cluster_uuid"))


def one_run(size: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as root, LocalCluster(size, Path(root)) as cluster:
        start = time.monotonic()
        cluster.start()
        cluster.wait_for(lambda: all(founded(cluster, p) for p in cluster.peers), 30, "founding")
        all_founded = time.monotonic() - start
        cluster.wait_for_leader(timeout=30)
        return all_founded, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--peers", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    results = [one_run(args.peers) for _ in range(args.runs)]
    for founded_s, leader_s in results:
        log.info("all founded %.2f s, leader %.2f s", founded_s, leader_s)
    log.info(
        "median: all founded %.2f s, leader %.2f s",
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
    )


if __name__ == "__main__":
    main()

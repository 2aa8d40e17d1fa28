"""What pinning the founding costs a new session: its first write, with the founding asked
of the peers (the default) against one given as ``cluster_uuid=`` (no asking), alternating
in one run on one 3-peer cluster on 127.0.0.1.

    python benchmarks/session_start_bench.py --sessions 200

Prints the median and p90 milliseconds from creating a session to its first write's answer,
for each form, and their difference.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from zraft.backends import kv
from zraft.local import LocalCluster
from zraft.session import LightSession

log = logging.getLogger("session_start_bench")


def first_write_ms(peers: list[str], cluster_id: str, uuid: str | None, i: int) -> float:
    started = time.perf_counter()
    with LightSession(peers, cluster_id=cluster_id, cluster_uuid=uuid) as session:
        session.write(kv.put(f"k{i}", i))
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=200, help="sessions of each form")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as root, LocalCluster(3, Path(root)) as cluster:
        cluster.start()
        cluster.wait_for_leader(timeout=30)
        with LightSession(cluster.peers, cluster_id=cluster.cluster_id) as warm:
            warm.write(kv.put("warm", 1))
            uuid = warm.cluster_uuid
        asked: list[float] = []
        given: list[float] = []
        for i in range(args.sessions):  # alternating: both forms see the same noise
            asked.append(first_write_ms(cluster.peers, cluster.cluster_id, None, 2 * i))
            given.append(first_write_ms(cluster.peers, cluster.cluster_id, uuid, 2 * i + 1))
    for name, times in (("founding asked", asked), ("cluster_uuid given", given)):
        p90 = statistics.quantiles(times, n=10)[-1]
        print(f"{name:>20}: first write median {statistics.median(times):6.2f} ms, "
              f"p90 {p90:6.2f} ms ({len(times)} sessions)")
    print(f"{'asking costs':>20}: {statistics.median(asked) - statistics.median(given):+.2f} ms "
          "(median against median)")


if __name__ == "__main__":
    main()

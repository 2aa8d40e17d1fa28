"""Shared pieces for tests that run real peer processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from zraft.local import LocalCluster

ELECTION_TIMEOUT_MS = 500


@contextmanager
def local_cluster(root: Path, size: int, *extra: str, **kwargs: Any) -> Iterator[LocalCluster]:
    cluster = LocalCluster(
        size, root, election_timeout=ELECTION_TIMEOUT_MS, extra_args=list(extra), **kwargs
    )
    try:
        yield cluster
    finally:
        cluster.close()  # kills every process it started, whatever the test did


def applied_everywhere(cluster: LocalCluster, peers: list[str], index: int) -> bool:
    for peer in peers:
        status = cluster.status(peer, timeout=0.5)
        if status is None or status["applied"] < index:
            return False
    return True

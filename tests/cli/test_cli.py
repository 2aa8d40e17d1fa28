"""The command line drives a side-car cluster from a shell."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cluster_support import local_cluster, start_with_newcomers


def zraft(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "zraft", "--log-level", "WARNING", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.timeout(180)
def test_write_query_status_members_and_transfer_from_the_shell(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 4) as cluster:
        a, b, c, d = cluster.peers
        start_with_newcomers(cluster, 3)

        done = zraft("write", "--peer", b, json.dumps({"op": "put", "key": "k", "value": 7}))
        assert done.returncode == 0, done.stderr
        done = zraft("query", "--peer", c, json.dumps({"op": "get", "key": "k"}))
        assert done.returncode == 0 and json.loads(done.stdout) == {"found": True, "value": 7}

        status = zraft("status", "--peer", a, "--json")
        assert json.loads(status.stdout)["config"]["voters"] == sorted([a, b, c])

        done = zraft("members", "--peer", a, "add-learner", d)
        assert done.returncode == 0 and f"learners: {d}" in done.stdout, done.stderr
        done = zraft("members", "--peer", a, "promote", d)
        assert done.returncode == 0 and d in done.stdout.splitlines()[0], done.stderr
        done = zraft("members", "--peer", a, "list")
        assert done.stdout.splitlines()[0] == "voters: " + " ".join(sorted([a, b, c, d]))

        leader = cluster.wait_for_leader()
        target = next(p for p in (a, b, c, d) if p != leader)
        done = zraft("transfer", "--peer", a, target)
        assert done.returncode == 0 and done.stdout.strip() == f"{target} leads", done.stderr

        bad = zraft("members", "--peer", a, "promote")
        assert bad.returncode == 1 and "needs a peer" in bad.stderr

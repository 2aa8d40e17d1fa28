"""``zraft demo casbin``: three PyCasbin enforcers kept in agreement by a local cluster.

Starts three peer processes running the Casbin backend, connects three enforcers (a
``SyncedEnforcer``, an ``Enforcer``, a ``DistributedEnforcer``), makes changes on one and
shows them on all, then grants a temporary permission through a session and shows it
vanish from every instance when the session ends.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import casbin

from zraft.local import LocalCluster

from .cluster import BACKEND, CasbinNode, connect
from .models import RBAC_MODEL


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _until(condition: Callable[[], bool], timeout: float = 10.0) -> float:
    """Seconds until ``condition()`` holds (or the timeout)."""
    started = time.monotonic()
    while not condition() and time.monotonic() - started < timeout:
        time.sleep(0.0005)
    return time.monotonic() - started


def _answers(enforcers: list[Any], request: tuple[str, str, str]) -> str:
    return " ".join("allow" if e.enforce(*request) else "deny " for e in enforcers)


def run_demo() -> int:
    logging.getLogger("casbin").setLevel(logging.WARNING)  # it logs each model it loads
    root = Path(tempfile.mkdtemp(prefix="zraft-casbin-demo-"))
    model_path = root / "rbac_model.conf"
    model_path.write_text(RBAC_MODEL)
    _say(f"zraft demo casbin: 3 peer processes with the Casbin backend, data in {root}")
    nodes: list[CasbinNode] = []
    try:
        with LocalCluster(3, root / "peers", extra_args=["--backend", BACKEND]) as cluster:
            cluster.start()
            leader = cluster.wait_for_leader()
            _say(f"- peers {', '.join(cluster.peers)}; {leader} leads")
            enforcers = [casbin.SyncedEnforcer(str(model_path)), casbin.Enforcer(str(model_path)),
                         casbin.DistributedEnforcer(str(model_path))]
            nodes = [connect(e, cluster.peers) for e in enforcers]
            _say("- three enforcers connected (Synced, plain, Distributed), each with a "
                 "local model kept current from the log")
            a, b, c = enforcers
            request = ("alice", "reports", "read")
            _say(f"- enforce{request} on the three: {_answers(enforcers, request)}")
            b.add_policy("analyst", "reports", "read")
            a.add_grouping_policy("alice", "analyst")
            seq = nodes[0].sync.applied_seq
            waited = max(_until(lambda n=n: n.sync.applied_seq >= seq) for n in nodes)
            _say(f"- instance 2 adds (analyst, reports, read), instance 1 makes alice an "
                 f"analyst; all three have both after {waited * 1000:.1f} ms")
            _say(f"- enforce{request} on the three: {_answers(enforcers, request)}")
            removed = c.remove_grouping_policy("alice", "analyst")
            _say(f"- instance 3 removes alice's role at once (casbin #421): {removed}")
            seq = nodes[2].sync.applied_seq
            for n in nodes:
                _until(lambda n=n: n.sync.applied_seq >= seq)
            _say(f"- enforce{request} on the three: {_answers(enforcers, request)}")
            guest = ("guest", "reports", "read")
            nodes[0].add_temporary_policy(*guest)
            seq = nodes[0].sync.applied_seq
            for n in nodes:
                _until(lambda n=n: n.sync.applied_seq >= seq)
            _say(f"- instance 1 grants {guest} through its session (temporary=True): "
                 f"{_answers(enforcers, guest)}")
            nodes[0].end_session()
            gone = _until(lambda: not any(e.enforce(*guest) for e in enforcers))
            _say(f"- instance 1's session ends: the grant is gone from all three after "
                 f"{gone * 1000:.1f} ms: {_answers(enforcers, guest)}")
            same = all(sorted(e.get_policy()) == sorted(a.get_policy()) for e in enforcers)
            _say(f"- the three policies are identical: {same}")
            _say("- stopping")
            return 0 if same else 1
    finally:
        for node in nodes:
            node.close()
        shutil.rmtree(root, ignore_errors=True)

"""After a run: do all peers hold the same log and the same state (hashicorp's check)?

Once every fault has healed and the clients have stopped, the peers must converge: one
commit index, applied everywhere. Then

* **state**: each peer's running digest of the commands its backend applied (see
  :mod:`zraft.chaos.backend`) must be equal: same commands, same order, none missing or
  extra, including what came by snapshot;
* **logs**: after the peers stop, their on-disk logs are read back and every committed
  index that two peers both still hold (not compacted away) must carry the same entry.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zraft.local import ClusterError
from zraft.storage import SegmentedLog, StorageError

from .backend import DIGEST_QUERY
from .cluster import ChaosCluster

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Convergence:
    ok: bool | None = None  # None: the peers never converged, so nothing was compared
    commit: int = 0
    applied_commands: int = 0
    digest: str = ""
    entries_compared: int = 0
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "commit": self.commit,
            "applied_commands": self.applied_commands,
            "digest": self.digest,
            "entries_compared": self.entries_compared,
            "problems": self.problems,
        }


def wait_converged(
    cluster: ChaosCluster, timeout: float, last: dict[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """Statuses of all peers once they agree on commit and applied (stable for a moment).
    ``last`` receives what each peer said last (for the report when they never agree)."""

    def agreed() -> dict[str, dict[str, Any]] | None:
        statuses = {peer: cluster.status(peer, 1.0) for peer in cluster.peers}
        if last is not None:
            last.clear()
            last.update({p: _brief(s) for p, s in statuses.items()})
        if any(s is None for s in statuses.values()):
            return None
        marks = {(s["commit"], s["applied"]) for s in statuses.values() if s is not None}
        if len(marks) != 1:
            return None
        commit, applied = marks.pop()
        return {p: s for p, s in statuses.items() if s is not None} if commit == applied else None

    first = cluster.local.wait_for(agreed, timeout, "all peers to apply the same commit index")
    time.sleep(0.3)  # a straggling entry (a new leader's no-op) would show up now
    second = agreed()
    if second is None or _marks(second) != _marks(first):
        return cluster.local.wait_for(agreed, timeout, "the commit index to settle")  # type: ignore[no-any-return]
    return second


def _brief(status: dict[str, Any] | None) -> str:
    if status is None:
        return "no answer"
    return (
        f"{status['role']} term {status['term']} commit {status['commit']} "
        f"applied {status['applied']} last {status['last_index']}"
    )


def _marks(statuses: dict[str, dict[str, Any]]) -> set[tuple[int, int]]:
    return {(s["commit"], s["applied"]) for s in statuses.values()}


def compare_states(cluster: ChaosCluster, result: Convergence, timeout: float = 60.0) -> None:
    """Wait for convergence, then compare every peer's digest of applied commands."""
    last: dict[str, Any] = {}
    try:
        statuses = wait_converged(cluster, timeout, last)
    except ClusterError as error:
        said = "; ".join(
            f"{peer} ({'running' if cluster.alive(peer) else 'down'}): {text}"
            for peer, text in sorted(last.items())
        )
        broken = cluster.links.broken()
        if broken:
            said += f"; link proxies that failed: {', '.join(broken)}"
        result.problems.append(f"peers did not converge: {error} (last: {said})")
        return
    result.commit = next(iter(statuses.values()))["commit"]
    digests: dict[str, tuple[int, str]] = {}
    for peer in cluster.peers:
        try:
            answer = cluster.local.query(peer, DIGEST_QUERY, local=True, timeout=5.0)
        except (ClusterError, OSError, TimeoutError) as error:
            result.problems.append(f"{peer}: digest query failed: {error}")
            return
        digests[peer] = (int(answer["applied"]), str(answer["digest"]))
    distinct = set(digests.values())
    if len(distinct) > 1:
        lines = ", ".join(f"{p}: {n} {d[:12]}" for p, (n, d) in sorted(digests.items()))
        result.problems.append(f"applied-state digests differ at commit {result.commit}: {lines}")
        result.ok = False
        return
    result.applied_commands, result.digest = distinct.pop()
    result.ok = True


def compare_logs(data_dirs: dict[str, Path], commit: int, result: Convergence) -> None:
    """Compare the committed entries (up to ``commit``) the stopped peers still hold."""
    logs: dict[str, dict[int, Any]] = {}
    for peer, data in sorted(data_dirs.items()):
        try:
            with SegmentedLog(data / "log") as raft_log:
                last = min(commit, raft_log.last_index)
                entries = raft_log.entries(raft_log.first_index, last + 1) if last else []
        except (StorageError, OSError) as error:
            result.problems.append(f"{peer}: cannot read its log: {error}")
            result.ok = False
            continue
        logs[peer] = {entry.index: entry for entry in entries}
    reference: dict[int, tuple[str, Any]] = {}
    for peer, entries in logs.items():
        for index, entry in entries.items():
            seen = reference.get(index)
            if seen is None:
                reference[index] = (peer, entry)
                continue
            result.entries_compared += 1
            if seen[1] != entry:
                result.problems.append(
                    f"committed entry {index} differs: {seen[0]} has term {seen[1].term} "
                    f"{seen[1].kind.name}, {peer} has term {entry.term} {entry.kind.name}"
                )
                result.ok = False
                if len(result.problems) > 20:
                    return

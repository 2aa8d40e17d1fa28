"""The peer driver's own rules, on simulated clusters of DrivenPeers (no faults, fixed
seed): what a leader owes the clients whose proposals its log lost."""

from __future__ import annotations

from typing import Any

import pytest

from zraft.backends import kv
from zraft.core import NodeOptions, Role
from zraft.sim import Cluster
from zraft.transport import ClientReply, ClientRequest


def _tick_until(cluster: Cluster, done: Any, limit: int = 500) -> None:
    for _ in range(limit):
        if done():
            return
        cluster.tick()
    raise AssertionError("the simulated cluster did not get there")


@pytest.mark.timeout(60)
def test_a_leader_again_answers_writes_behind_proposals_its_log_lost() -> None:
    """A leader cut off accepts ten writes that never commit; another peer leads meanwhile
    and the cut-off one's log is replaced. Led by it again, a new write lands at an index
    below those ten: it is answered, and so is each of the ten: "retry" (maybe applied,
    since another peer could still hold and commit it; the client asks again with its seq)
    for those its new proposals pass, "not_leader" (not applied) for those whose index was
    applied with another entry."""
    peers = ["n1", "n2", "n3"]
    options = NodeOptions(election_ticks=10, pre_vote=False, check_quorum=False)
    with Cluster(5, peers, peers, options=options) as cluster:
        replies: list[tuple[bytes, ClientReply]] = []
        real_on_replies = cluster.on_replies

        def on_replies(peer: str, batch: Any, applied: int) -> None:
            batch = list(batch)
            replies.extend(batch)
            real_on_replies(peer, batch, applied)

        cluster.on_replies = on_replies  # type: ignore[method-assign]
        _tick_until(cluster, lambda: cluster.leader() is not None)
        first = cluster.leader()
        _tick_until(cluster, lambda: first.node.commit == first.node.log.last_index)
        lost_from = first.node.log.last_index + 1
        others = [p for p in peers if p != first.id]
        for other in others:
            cluster.blocked |= {(first.id, other), (other, first.id)}
        for seq in range(1, 11):
            request = ClientRequest(seq, "write", kv.put(f"k{seq}", seq), "old", seq, 0)
            first.request(b"old", request)
        assert first.node.log.last_index == lost_from + 9
        leads = [cluster.peers[p] for p in others]
        _tick_until(cluster, lambda: any(p.node.role is Role.LEADER for p in leads))
        second = next(p for p in leads if p.node.role is Role.LEADER)
        _tick_until(cluster, lambda: second.node.commit >= lost_from)
        cluster.blocked.clear()
        _tick_until(cluster, lambda: first.node.log.last_index == second.node.log.last_index)
        assert first.node.log.last_index < lost_from + 9  # the ten are gone from its log
        second.request(b"admin", ClientRequest(100, "transfer", first.id))
        _tick_until(cluster, lambda: first.node.role is Role.LEADER)
        first.request(b"new", ClientRequest(200, "write", kv.put("fresh", 1), "new", 1, 0))
        _tick_until(cluster, lambda: any(i == b"new" for i, _ in replies), limit=100)
        new = [r for i, r in replies if i == b"new"]
        assert new[0].ok and new[0].index <= lost_from + 9
        _tick_until(cluster, lambda: len([i for i, _ in replies if i == b"old"]) >= 10)
        old = [r for i, r in replies if i == b"old"]
        assert sorted(r.request_id for r in old) == list(range(1, 11))
        assert all(not r.ok and r.error in ("retry", "not_leader") for r in old)
        assert any(r.error == "retry" for r in old)  # answered at the new proposal

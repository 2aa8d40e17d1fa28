"""The ``zraft`` command line."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from zraft.core import NodeOptions
from zraft.sim import Cluster, LivenessFailure, SafetyViolation, ScheduleOptions, run_schedule


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _tick_until(cluster: Cluster, done, limit: int = 2000) -> int:  # type: ignore[no-untyped-def]
    start = cluster.time
    while not done():
        if cluster.time - start > limit:
            raise SystemExit("the simulated cluster made no progress (this is a bug)")
        cluster.tick()
    return cluster.time - start


def demo(seed: int, schedules: int) -> int:
    """A narrated run of the consensus core in the deterministic simulation."""
    options = NodeOptions(election_ticks=10)
    _say(f"zraft demo (seed {seed}): five peers' consensus cores in one simulated network")
    cluster = Cluster(seed, ["n1", "n2", "n3", "n4", "n5"], ["n1", "n2", "n3"], options=options)
    ticks = _tick_until(cluster, lambda: cluster.leader() is not None)
    leader = cluster.leader()
    assert leader is not None and leader.node is not None
    _say(f"- {leader.id} elected leader of term {leader.node.term} after {ticks} ticks")

    for batch in range(10):
        leader.node.propose([f"write-{batch}-{i}".encode() for i in range(10)])
        leader.process()
    cluster.settle()
    target = leader.node.log.last_index
    _tick_until(cluster, lambda: all(len(p.applied) >= target for p in _voters(cluster)))
    _say(f"- 100 writes in 10 batches committed and applied on n1..n3 (index {target})")

    old = leader.id
    leader.crash()
    _say(f"- crashed the leader {old}")
    ticks = _tick_until(cluster, lambda: cluster.leader() is not None)
    leader = cluster.leader()
    assert leader is not None and leader.node is not None
    _say(f"- {leader.id} took over in term {leader.node.term} after {ticks} ticks")
    cluster.peers[old].start()

    leader.node.propose_membership({"n1", "n2", "n3", "n4", "n5"})
    leader.process()
    _tick_until(
        cluster,
        lambda: (
            leader.node is not None
            and leader.node.membership_stable
            and len(leader.node.config.voters) == 5
        ),
    )
    _say(f"- joint consensus grew the cluster to {leader.node.config}")

    follower = next(p for p in cluster.peers.values() if p is not leader)
    cluster.begin_read(follower.id, "demo-read")
    _tick_until(cluster, lambda: "demo-read" not in cluster.read_started)
    _say(f"- a linearizable read on {follower.id} was forwarded and confirmed by the leader")

    _say(f"- now {schedules} random schedules with crashes, partitions, loss and changes:")
    started = time.perf_counter()
    checks = elections = crashes = changes = 0
    for offset in range(schedules):
        result = run_schedule(seed + offset, ScheduleOptions(steps=300))
        checks += result.checks
        elections += result.elections
        crashes += result.crashes
        changes += result.membership_changes
    elapsed = time.perf_counter() - started
    _say(
        f"  {schedules} schedules in {elapsed:.1f}s: {elections} elections, {crashes} crashes, "
        f"{changes} membership changes, {checks} safety checks, no violation"
    )
    return 0


def _voters(cluster: Cluster) -> list:  # type: ignore[type-arg]
    return [p for p in cluster.peers.values() if p.node is not None and p.node.promotable]


def sim(seed: int, steps: int, schedules: int) -> int:
    """Run (or replay) random schedules; exits non-zero on the first violation."""
    for current in range(seed, seed + schedules):
        try:
            result = run_schedule(current, ScheduleOptions(steps=steps))
        except (SafetyViolation, LivenessFailure) as failure:
            _say(f"FAILED {failure}")
            return 1
        _say(
            f"seed {current}: ok, {result.proposals} proposals, {result.committed} committed, "
            f"{result.reads} reads, {result.elections} elections, {result.crashes} crashes, "
            f"{result.membership_changes} membership changes, {result.checks} checks"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="zraft", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo_cmd = commands.add_parser("demo", help="show the consensus core at work")
    demo_cmd.add_argument("--seed", type=int, default=1)
    demo_cmd.add_argument("--schedules", type=int, default=50)
    sim_cmd = commands.add_parser("sim", help="run or replay simulation schedules")
    sim_cmd.add_argument("--seed", type=int, required=True)
    sim_cmd.add_argument("--steps", type=int, default=300)
    sim_cmd.add_argument("--schedules", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seed, args.schedules)
    return sim(args.seed, args.steps, args.schedules)


if __name__ == "__main__":
    raise SystemExit(main())

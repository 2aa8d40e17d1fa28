"""Random schedules: faults, client traffic and membership changes, then a liveness check.

``run_schedule(seed)`` is a pure function of its seed: a failure names the seed, and the
same call replays it exactly.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from zraft.actors.apply_driver import ApplyDriver
from zraft.actors.driver import PeerDriver
from zraft.core import Node, NodeOptions, Role

from .checker import SafetyViolation
from .cluster import Cluster, DiskFactory, Faults, NodeFactory, memory_disk
from .peer import ApplyDriverFactory, DriverFactory

POOL = [f"n{i}" for i in range(1, 8)]


class LivenessFailure(AssertionError):
    """Once faults healed, the cluster did not elect a leader or commit in time."""


class PeerFailure(AssertionError):
    """Production code raised inside a simulated peer: the process would have stopped."""


@dataclass
class ScheduleResult:
    seed: int
    steps: int
    proposals: int = 0
    committed: int = 0
    reads: int = 0
    elections: int = 0
    membership_changes: int = 0
    crashes: int = 0
    power_losses: int = 0
    transfers: int = 0
    partitions: int = 0
    checks: int = 0
    messages: int = 0
    answered: int = 0  # writes answered (exactly once, checked)


@dataclass
class ScheduleOptions:
    steps: int = 300
    heal_ticks: int = 600  # the liveness bound once faults heal
    compact_every: int = 12
    membership: bool = True
    faults: bool = True


def run_schedule(
    seed: int,
    options: ScheduleOptions | None = None,
    node_factory: NodeFactory = Node,
    disk_factory: DiskFactory = memory_disk,
    *,
    driver_factory: DriverFactory = PeerDriver,
    apply_driver_factory: ApplyDriverFactory = ApplyDriver,
) -> ScheduleResult:
    """Run one random schedule; raises SafetyViolation or LivenessFailure naming the seed.
    The factories put a broken core or driver in (the mutants prove the checks bite)."""
    opts = options or ScheduleOptions()
    schedule = _Schedule(
        seed, opts, node_factory, disk_factory, driver_factory, apply_driver_factory
    )
    try:
        return schedule.run()
    except (SafetyViolation, LivenessFailure) as failure:
        raise type(failure)(f"seed {seed}: {failure}") from None
    except Exception as error:  # the driver or a store raised: a peer would have failed
        raise PeerFailure(f"seed {seed}: {type(error).__name__}: {error}") from error
    finally:
        schedule.cluster.close()


class _Schedule:
    def __init__(
        self,
        seed: int,
        opts: ScheduleOptions,
        node_factory: NodeFactory,
        disk_factory: DiskFactory,
        driver_factory: DriverFactory,
        apply_driver_factory: ApplyDriverFactory,
    ) -> None:
        self.rng = random.Random(seed * 7919 + 17)
        rng = self.rng
        # Half the schedules churn leaders hard: three voters, lossy links, one
        # entry per message, short outages. That is where old-term entries meet new leaders
        # (the paper's figure 8), which gentler schedules reach only rarely.
        self.churn = opts.faults and rng.random() < 0.5
        size = 3 if self.churn else rng.randint(3, 5)
        voters = POOL[:size]
        faults = Faults()
        if opts.faults:
            faults = Faults(
                drop=rng.choice([0.1, 0.3] if self.churn else [0.0, 0.02, 0.1, 0.3]),
                duplicate=rng.choice([0.0, 0.02, 0.05]),
                max_delay=rng.choice([0, 1, 3]),
                sync_now=rng.choice([1.0, 0.7, 0.3]),
                apply_now=rng.choice([1.0, 0.7, 0.3]),
            )
        self.faults = faults
        # How often faults strike.
        self.chaos = 4.0 if self.churn else rng.choice([0.5, 1.0, 2.0, 4.0])
        node_options = NodeOptions(
            election_ticks=10,
            heartbeat_ticks=rng.choice([1, 2, 3]),
            max_entries_per_message=1 if self.churn else rng.choice([1, 4, 64]),
            max_inflight=rng.choice([1, 2, 8]),
            # Safety must not depend on the optional rules, and turning them off makes
            # elections (and so the subtle cases) more frequent.
            pre_vote=not self.churn and rng.random() < 0.7,
            check_quorum=not self.churn and rng.random() < 0.7,
        )
        self.cluster = Cluster(
            seed,
            POOL,
            voters,
            options=node_options,
            faults=faults,
            node_factory=node_factory,
            driver_factory=driver_factory,
            apply_driver_factory=apply_driver_factory,
            compact_every=opts.compact_every,
            disk_factory=disk_factory,
        )
        self.opts = opts
        self.result = ScheduleResult(seed, opts.steps)
        self.counter = 0
        self.down_until: dict[str, int] = {}
        self.heal_at = 0

    def run(self) -> ScheduleResult:
        cluster = self.cluster
        for _ in range(self.opts.steps):
            self._random_actions()
            cluster.tick()
            self._restart_due()
            if self.heal_at and cluster.time >= self.heal_at:
                cluster.blocked.clear()
                self.heal_at = 0
        self._check_liveness()
        for client in cluster.clients:
            client.verify()
        self.result.checks = cluster.checker.checks
        self.result.messages = cluster.messages_sent
        self.result.reads = cluster.reads_served
        self.result.elections = len(cluster.checker.leaders)
        self.result.committed = cluster.checker.max_commit
        self.result.answered = cluster.client.answered_writes
        self.result.membership_changes = cluster.client.done["set_members"]
        self.result.transfers = cluster.client.done["transfer"]
        return self.result

    # ------------------------------------------------------------ actions

    def _random_actions(self) -> None:
        """Client traffic most steps; faults at a rate drawn per schedule."""
        rng, chaos = self.rng, self.chaos
        if rng.random() < 0.6:
            self._propose()
        if rng.random() < 0.25:
            self._read()
        if self.opts.membership and rng.random() < 0.02 * chaos:
            self._change_membership()
        if rng.random() < 0.01 * chaos:
            self._transfer()
        if not self.opts.faults:
            return
        if rng.random() < 0.03 * chaos:
            self._crash()
        if rng.random() < 0.004 * chaos:
            self._power_loss()
        if rng.random() < 0.015 * chaos:
            self._partition()

    def _live(self) -> list[str]:
        return [p for p, peer in self.cluster.peers.items() if peer.alive]

    def _pick_target(self) -> str | None:
        leader = self.cluster.leader()
        if leader is not None and self.rng.random() < 0.8:
            return leader.id
        live = self._live()
        return self.rng.choice(live) if live else None

    def _propose(self) -> None:
        target = self._pick_target()
        if target is None:
            return
        for _ in range(self.rng.choice([1, 1, 3])):
            self.counter += 1
            self.cluster.client.write(target, f"v{self.counter}".encode())
            self.result.proposals += 1

    def _read(self) -> None:
        target = self._pick_target()
        if target is None:
            return
        self.counter += 1
        self.cluster.begin_read(target, f"r{self.counter}")

    def _crash(self) -> None:
        live = self._live()
        if len(live) <= 1:
            return
        leader = self.cluster.leader()
        if leader is not None and self.rng.random() < (0.9 if self.churn else 0.5):
            victim = leader.id  # leaders failing mid-replication is where Raft is subtle
        else:
            victim = self.rng.choice(live)
        self.cluster.peers[victim].crash()
        downtime = self.rng.randint(1, 8 if self.churn else 40)
        self.down_until[victim] = self.cluster.time + downtime
        self.result.crashes += 1

    def _power_loss(self) -> None:
        """Every peer goes down at once (a rack's power): whatever any of them had not
        made durable is gone everywhere together; they come back within a few ticks."""
        for peer_id in self._live():
            self.cluster.peers[peer_id].crash()
            self.down_until[peer_id] = self.cluster.time + self.rng.randint(1, 6)
            self.result.crashes += 1
        self.result.power_losses += 1

    def _restart_due(self) -> None:
        for peer_id, at in list(self.down_until.items()):
            if self.cluster.time >= at:
                del self.down_until[peer_id]
                self.cluster.peers[peer_id].start()

    def _partition(self) -> None:
        cluster, rng = self.cluster, self.rng
        peers = list(cluster.peers)
        cluster.blocked.clear()
        kind = rng.random()
        if kind < 0.5:  # symmetric split
            rng.shuffle(peers)
            cut = rng.randint(1, len(peers) - 1)
            left, right = peers[:cut], peers[cut:]
            for a in left:
                for b in right:
                    cluster.blocked.add((a, b))
                    cluster.blocked.add((b, a))
        elif kind < 0.8:  # asymmetric: some links one way only
            for _ in range(rng.randint(1, 6)):
                a, b = rng.sample(peers, 2)
                cluster.blocked.add((a, b))
        else:  # isolate the leader
            leader = cluster.leader()
            if leader is not None:
                for b in peers:
                    if b != leader.id:
                        cluster.blocked.add((leader.id, b))
                        cluster.blocked.add((b, leader.id))
        self.heal_at = cluster.time + rng.randint(5, 60)
        self.result.partitions += 1

    def _change_membership(self) -> None:
        leader = self.cluster.leader()
        if leader is None or leader.node is None:
            return
        node = leader.node
        voters, learners = set(node.config.voters), set(node.config.learners)
        outsiders = [p for p in POOL if p not in voters and p not in learners]
        roll = self.rng.random()
        if roll < 0.3 and outsiders:
            learners.add(self.rng.choice(outsiders))
        elif roll < 0.55 and learners:
            promoted = self.rng.choice(sorted(learners))
            learners.discard(promoted)
            voters.add(promoted)
        elif roll < 0.7 and outsiders:
            voters.add(self.rng.choice(outsiders))
        elif roll < 0.85 and len(voters) > 3:
            voters.discard(self.rng.choice(sorted(voters)))
        elif learners:
            learners.discard(self.rng.choice(sorted(learners)))
        elif outsiders and len(voters) >= 3:  # replace one voter by another in one change
            voters.discard(self.rng.choice(sorted(voters)))
            voters.add(self.rng.choice(outsiders))
        self.cluster.client.change_members(leader.id, voters, learners)

    def _transfer(self) -> None:
        leader = self.cluster.leader()
        if leader is None or leader.node is None:
            return
        voters = sorted(leader.node.config.all_voters - {leader.id})
        if voters:
            self.cluster.client.transfer(leader.id, self.rng.choice(voters))

    # ------------------------------------------------------------ liveness

    def _check_liveness(self) -> None:
        """Heal everything; then a leader must emerge and a new write commit everywhere."""
        cluster = self.cluster
        cluster.blocked.clear()
        cluster.faults = Faults(max_delay=self.faults.max_delay)
        for peer_id in list(self.down_until):
            self.cluster.peers[peer_id].start()
        self.down_until.clear()
        deadline = cluster.time + self.opts.heal_ticks
        cluster.client.paused = True  # its retries may still be in flight
        client = cluster.new_client("liveness")
        marker = b"liveness"
        asked: str | None = None
        while cluster.time < deadline:
            cluster.tick()
            leader = cluster.leader()
            if leader is None or leader.node is None:
                continue
            node = leader.node
            if asked != leader.id and marker not in client.answer_indexes:
                client.write(leader.id, marker)  # a write per new leader, each retried as any
                asked = leader.id
                continue
            index = client.answer_indexes.get(marker)
            if index is None or not node.membership_stable or node.role is not Role.LEADER:
                continue
            members = [cluster.peers[p] for p in node.config.members]
            if all(peer.alive and peer.applied_index >= index for peer in members):
                return
        leader = cluster.leader()
        state = {
            p: (str(peer.node.role), peer.node.term, peer.node.commit, str(peer.node.config))
            if peer.node
            else None
            for p, peer in cluster.peers.items()
        }
        raise LivenessFailure(
            f"no progress {self.opts.heal_ticks} ticks after healing "
            f"(leader={leader.id if leader else None}): {state}"
        )

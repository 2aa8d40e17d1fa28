"""Interpreter for the data-driven scenario tests in ``tests/core/scenarios/*.txt``.

A scenario file is a list of blocks separated by blank lines. Each block is a command line,
optional argument lines (appended to the command's arguments), a line ``----`` and the exact
output the command must produce. Lines starting with ``#`` before a command are comments.
A command that prints nothing produces ``ok``. ``test_scenarios.py`` runs every file and
shows a unified diff on mismatch; with ``ZRAFT_REWRITE=1`` it rewrites the files instead.

The cluster is a ``sim.Cluster`` of ``CorePeer``s (bare cores: tests/support/core_peer.py) without
faults. Messages are not delivered by themselves: every message a peer sends waits in one
FIFO queue until ``deliver`` or ``stabilize``. Disk writes are made durable at once unless
the cluster was made with ``sync=manual``. Randomized election timeouts are pinned to
``election_ticks`` (the smallest value Raft may pick) so ``tick`` counts read plainly;
``set-timeout`` staggers them.

Commands (peers are ids such as ``n1``; lists are comma separated):

``cluster voters=n1,n2,n3 [learners=..] [others=..] [pre_vote=true] [check_quorum=true]
[election_ticks=10] [heartbeat_ticks=1] [max_inflight=64] [max_entries=512] [sync=auto]``
    A new cluster. ``others`` start with no configuration (they join later). Options not
    given keep the ``NodeOptions`` defaults.
``set-timeout n1 15``
    Pin n1's randomized election timeout (now, and whenever it is reset).
``tick n1 [count]`` / ``tick-all [count]``
    Logical time for one peer / for every live peer (in id order).
``campaign n1`` / ``propose n1 data..`` / ``read-index n1 ctx..`` / ``transfer n1 n2`` /
``change n1 voters=.. [learners=..]`` / ``compact n1 index``
    The corresponding input of the core. ``propose`` with several items proposes one batch;
    ``read-index`` with several contexts asks for all of them before the next Ready.
``deliver [from=..] [to=..] [type=AppendEntries,..] [drop]``
    Deliver (or drop) the queued messages that match, in queue order. Messages these
    deliveries send are queued, not delivered.
``stabilize``
    Persist and deliver until nothing is queued or pending.
``persist [n1,..]``
    Make pending writes durable (only meaningful with ``sync=manual``).
``crash n1`` / ``restart n1``
    Lose everything not durable / start again from the disk.
``partition n1 | n2,n3`` / ``heal``
    Drop every message between the groups / reconnect everyone. A message sent across the
    partition is dropped at once and counted in a summary line below what sent it; one
    already queued is dropped (and printed) when it comes up for delivery.
``status [n1,..]`` / ``log [n1,..]`` / ``applied [n1,..]`` / ``reads [n1,..]`` /
``progress n1`` / ``queue``
    Inspect: role, term, vote, leader, commit, applied, last index and configuration; the
    log; the applied entries; the reads served (or failed); the leader's view of its
    followers; the messages waiting in the queue.

Output: every delivered message is printed as ``src->dst`` and ``sim.describe``; below it,
indented, what changed on any peer (only the fields that changed, with their new value),
why the message was ignored if it was, and reads that were served or failed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.core_peer import CorePeer
from zraft.core import (
    Configuration,
    Entry,
    EntryKind,
    Message,
    Node,
    NodeOptions,
    SnapshotMeta,
)
from zraft.sim import Cluster, Faults, describe

SEED = 7
SEPARATOR = "----"


class ScenarioError(Exception):
    """A scenario file is malformed or a command cannot be carried out."""


# ---------------------------------------------------------------------------- file format


@dataclass
class Block:
    comments: list[str]
    command: str
    arg_lines: list[str]
    expected: list[str]
    line: int  # 1-based line of the command, for error messages


def parse_scenario(text: str) -> list[Block]:
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    comments: list[str] = []
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        if line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        start = i + 1
        command = line
        i += 1
        arg_lines: list[str] = []
        while i < len(lines) and lines[i] != SEPARATOR:
            if not lines[i].strip():
                raise ScenarioError(f"line {start}: command without a {SEPARATOR!r} line")
            arg_lines.append(lines[i])
            i += 1
        if i == len(lines):
            raise ScenarioError(f"line {start}: command without a {SEPARATOR!r} line")
        i += 1
        expected: list[str] = []
        while i < len(lines) and lines[i].strip():
            expected.append(lines[i])
            i += 1
        blocks.append(Block(comments, command, arg_lines, expected, start))
        comments = []
    if comments:
        raise ScenarioError("comments after the last command")
    return blocks


def render_scenario(blocks: list[Block], outputs: list[list[str]]) -> str:
    parts = []
    for block, output in zip(blocks, outputs, strict=True):
        lines = [*block.comments, block.command, *block.arg_lines, SEPARATOR, *output]
        parts.append("\n".join(lines) + "\n")
    return "\n".join(parts)


def run_scenario(text: str) -> tuple[list[Block], list[list[str]]]:
    """Run every block of a scenario; returns the blocks and the output each produced."""
    blocks = parse_scenario(text)
    env = ScenarioEnv()
    outputs = []
    for block in blocks:
        try:
            outputs.append(env.run(block.command, block.arg_lines))
        except ScenarioError as error:
            raise ScenarioError(f"line {block.line}: {block.command}: {error}") from None
    return blocks, outputs


# ---------------------------------------------------------------------------- arguments


@dataclass
class Args:
    positional: list[str] = field(default_factory=list)
    keywords: dict[str, str] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)

    @staticmethod
    def parse(words: list[str]) -> Args:
        args = Args()
        for word in words:
            key, eq, value = word.partition("=")
            if eq:
                if key in args.keywords:
                    raise ScenarioError(f"argument {key!r} given twice")
                args.keywords[key] = value
            else:
                args.positional.append(word)
        return args

    def get(self, key: str, default: str | None = None) -> str | None:
        self.used.add(key)
        return self.keywords.get(key, default)

    def peers(self, key: str) -> list[str]:
        value = self.get(key)
        return split_list(value) if value is not None else []

    def flag(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if value not in ("true", "false"):
            raise ScenarioError(f"{key} must be true or false, got {value!r}")
        return value == "true"

    def integer(self, key: str, default: int) -> int:
        value = self.get(key)
        return default if value is None else to_int(value)

    def check_used(self) -> None:
        unknown = set(self.keywords) - self.used
        if unknown:
            raise ScenarioError(f"unknown arguments {sorted(unknown)}")


def split_list(value: str) -> list[str]:
    return [item for item in value.split(",") if item]


def to_int(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ScenarioError(f"expected a number, got {value!r}") from None


# ---------------------------------------------------------------------------- the cluster


class PinnedRandom:
    """The randomness of one peer's core: election timeouts come from a table, not chance."""

    def __init__(self, timeouts: dict[str, int], peer: str) -> None:
        self.timeouts = timeouts
        self.peer = peer

    def randint(self, a: int, b: int) -> int:
        return min(max(self.timeouts.get(self.peer, a), a), b)


class ScenarioCluster(Cluster):
    """A Cluster whose network is one FIFO queue that the scenario delivers explicitly."""

    def __init__(
        self,
        peers: list[str],
        voters: list[str],
        learners: list[str],
        options: NodeOptions,
        manual_sync: bool,
        timeouts: dict[str, int],
    ) -> None:
        self.queue: list[tuple[Message, Any]] = []
        self.events: list[str] = []  # reads served or failed, printed by the interpreter
        self.reads: dict[str, list[str]] = {peer: [] for peer in peers}
        self.timeouts = timeouts
        self.partition_drops: dict[tuple[str, str, str], int] = {}
        faults = Faults(sync_now=0.0) if manual_sync else Faults()
        super().__init__(
            SEED,
            peers,
            voters,
            options=options,
            faults=faults,
            node_factory=self._new_node,
            peer_factory=CorePeer,
        )
        if learners:
            founding = SnapshotMeta(0, 0, Configuration.of(voters, learners))
            for peer_id in voters + learners:
                peer = self.peers[peer_id]
                peer.disk.snapshot = founding
                peer.start()

    def _new_node(self, peer_id: str, rng: random.Random, *args: Any, **kwargs: Any) -> Node:
        return Node(peer_id, PinnedRandom(self.timeouts, peer_id), *args, **kwargs)

    def send(self, msg: Message, attachment: Any = None) -> None:
        self.messages_sent += 1
        if (msg.src, msg.dst) in self.blocked:
            key = (msg.src, msg.dst, type(msg).__name__)
            self.partition_drops[key] = self.partition_drops.get(key, 0) + 1
            self._dropped(msg)
            return
        self.queue.append((msg, attachment))

    def on_read_served(self, peer: str, context: Any, applied: int) -> None:
        waiting = self.peers[peer].waiting_reads
        index = next((i for i, c in waiting if c == context), None)
        text = f"{context} index={index} (applied {applied})"
        self.reads[peer].append(text)
        self.events.append(f"{peer}: read {text}")
        super().on_read_served(peer, context, applied)

    def on_read_failed(self, peer: str, context: Any) -> None:
        text = f"{context} failed"
        self.reads[peer].append(text)
        self.events.append(f"{peer}: read {text}")
        super().on_read_failed(peer, context)


# ---------------------------------------------------------------------------- formatting

PeerState = tuple[tuple[str, str], ...] | None


def peer_state(cluster: Cluster, peer_id: str) -> PeerState:
    node = cluster.peers[peer_id].node
    if node is None:
        return None
    return (
        ("role", str(node.role)),
        ("term", str(node.term)),
        ("vote", node.vote or "-"),
        ("leader", node.leader or "-"),
        ("commit", str(node.commit)),
        ("config", format_config(node.config)),
    )


def format_config(config: Configuration) -> str:
    return f"[{config}]"


def format_entry(entry: Entry) -> str:
    if entry.kind is EntryKind.NOOP:
        what = "noop"
    elif entry.kind is EntryKind.CONFIG:
        what = f"conf[{entry.data}]"
    else:
        data = entry.data
        what = data.decode() if isinstance(data, bytes) else repr(data)
    return f"{entry.index}/{entry.term}:{what}"


def describe_writes(writes: Any) -> str:
    """What a peer's pending writes (sim ``_PendingWrite`` records) will make durable."""
    parts = []
    for write in writes:
        ready = write.ready
        if ready.snapshot is not None:
            parts.append(f"snapshot={ready.snapshot.index}/{ready.snapshot.term}")
        if ready.entries:
            parts.append("entries=[" + " ".join(format_entry(e) for e in ready.entries) + "]")
        if ready.hard_state is not None:
            state = ready.hard_state
            parts.append(f"term={state.term} vote={state.vote or '-'} commit={state.commit}")
    return " ".join(parts) or "nothing"


def format_message(msg: Message) -> str:
    return f"{msg.src}->{msg.dst} {describe(msg)}".rstrip()


# ---------------------------------------------------------------------------- interpreter


class ScenarioEnv:
    def __init__(self) -> None:
        self._cluster: ScenarioCluster | None = None
        self.timeouts: dict[str, int] = {}
        self.out: list[str] = []
        self.seen: dict[str, PeerState] = {}
        self.commands: dict[str, Callable[[Args], None]] = {
            "cluster": self.cmd_cluster,
            "set-timeout": self.cmd_set_timeout,
            "tick": self.cmd_tick,
            "tick-all": self.cmd_tick_all,
            "campaign": self.cmd_campaign,
            "propose": self.cmd_propose,
            "read-index": self.cmd_read_index,
            "change": self.cmd_change,
            "transfer": self.cmd_transfer,
            "compact": self.cmd_compact,
            "deliver": self.cmd_deliver,
            "stabilize": self.cmd_stabilize,
            "persist": self.cmd_persist,
            "crash": self.cmd_crash,
            "restart": self.cmd_restart,
            "partition": self.cmd_partition,
            "heal": self.cmd_heal,
            "status": self.cmd_status,
            "log": self.cmd_log,
            "applied": self.cmd_applied,
            "reads": self.cmd_reads,
            "progress": self.cmd_progress,
            "queue": self.cmd_queue,
        }

    def run(self, command_line: str, arg_lines: list[str]) -> list[str]:
        words = command_line.split()
        for line in arg_lines:
            words += line.split()
        name, args = words[0], Args.parse(words[1:])
        handler = self.commands.get(name)
        if handler is None:
            raise ScenarioError(f"unknown command {name!r}")
        self.out = []
        handler(args)
        args.check_used()
        self.report_partition_drops()
        if any(not line.strip() for line in self.out):
            raise ScenarioError("output must not contain blank lines")
        return self.out or ["ok"]

    # ------------------------------------------------------------------ helpers

    @property
    def cluster(self) -> ScenarioCluster:
        if self._cluster is None:
            raise ScenarioError("no cluster yet: start with the cluster command")
        return self._cluster

    def node(self, peer_id: str) -> Node:
        node = self.peer(peer_id).node
        if node is None:
            raise ScenarioError(f"{peer_id} is down")
        return node

    def peer(self, peer_id: str) -> CorePeer:
        peer = self.cluster.peers.get(peer_id)
        if peer is None:
            raise ScenarioError(f"unknown peer {peer_id!r}")
        return peer

    def one_peer(self, args: Args, count: int = 1) -> list[str]:
        if len(args.positional) < count:
            raise ScenarioError("missing peer argument")
        for peer_id in args.positional[:count]:
            self.peer(peer_id)
        return args.positional[:count]

    def selected(self, args: Args) -> list[str]:
        chosen: list[str] = []
        for word in args.positional:
            chosen += split_list(word)
        for peer_id in chosen:
            self.peer(peer_id)
        return chosen or sorted(self.cluster.peers)

    def emit(self, line: str, indent: int = 0) -> None:
        self.out.append(" " * indent + line)

    def observe(self, indent: int = 0, prefix: str = "", drops: bool = True) -> None:
        """Print what changed on every peer since the last observation, then read events
        and (unless ``drops`` is false: they are summed up for the whole command) the
        messages the partition dropped."""
        cluster = self.cluster
        for peer_id in sorted(cluster.peers):
            now, before = peer_state(cluster, peer_id), self.seen.get(peer_id)
            if now == before:
                continue
            self.seen[peer_id] = now
            if now is None:
                self.emit(f"{prefix}{peer_id}: down", indent)
                continue
            old = dict(before or ())
            changed = [f"{k}={v}" for k, v in now if old.get(k) != v]
            self.emit(f"{prefix}{peer_id}: " + " ".join(changed), indent)
        for event in cluster.events:
            self.emit(prefix + event, indent)
        cluster.events.clear()
        if drops:
            self.report_partition_drops(indent, prefix)

    def report_partition_drops(self, indent: int = 0, prefix: str = "") -> None:
        cluster = self._cluster
        if cluster is None or not cluster.partition_drops:
            return
        counts = sorted(cluster.partition_drops.items())
        cluster.partition_drops.clear()
        text = ", ".join(f"{src}->{dst} {kind} x{count}" for (src, dst, kind), count in counts)
        self.emit(f"{prefix}dropped by the partition: {text}", indent)

    def refused(self, peer_id: str, reason: str | None) -> None:
        if reason is not None:
            self.emit(f"{peer_id}: refused: {reason}")

    # ------------------------------------------------------------------ setup and time

    def cmd_cluster(self, args: Args) -> None:
        voters = args.peers("voters")
        learners = args.peers("learners")
        others = args.peers("others")
        if not voters:
            raise ScenarioError("a cluster needs voters")
        defaults = NodeOptions()
        options = NodeOptions(
            election_ticks=args.integer("election_ticks", defaults.election_ticks),
            heartbeat_ticks=args.integer("heartbeat_ticks", defaults.heartbeat_ticks),
            max_inflight=args.integer("max_inflight", defaults.max_inflight),
            max_entries_per_message=args.integer("max_entries", defaults.max_entries_per_message),
            pre_vote=args.flag("pre_vote", defaults.pre_vote),
            check_quorum=args.flag("check_quorum", defaults.check_quorum),
        )
        sync = args.get("sync", "auto")
        if sync not in ("auto", "manual"):
            raise ScenarioError("sync must be auto or manual")
        peers = voters + learners + others
        if len(set(peers)) != len(peers):
            raise ScenarioError("a peer is listed twice")
        self.timeouts = {}
        self.seen = {}
        self._cluster = ScenarioCluster(
            peers, voters, learners, options, sync == "manual", self.timeouts
        )
        self.seen = {p: peer_state(self.cluster, p) for p in self.cluster.peers}
        self.cmd_status(Args())

    def cmd_set_timeout(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        if len(args.positional) != 2:
            raise ScenarioError("usage: set-timeout n1 ticks")
        ticks = to_int(args.positional[1])
        election = self.cluster.options.election_ticks
        if not election <= ticks < 2 * election:
            raise ScenarioError(f"a timeout must lie in [{election}, {2 * election})")
        self.timeouts[peer_id] = ticks
        node = self.cluster.peers[peer_id].node
        if node is not None:
            node.randomized_timeout = ticks

    def _count(self, args: Args, position: int) -> int:
        if len(args.positional) > position:
            return to_int(args.positional[position])
        return 1

    def cmd_tick(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        count = self._count(args, 1)
        self._ticks([peer_id], count)

    def cmd_tick_all(self, args: Args) -> None:
        self._ticks(sorted(self.cluster.peers), self._count(args, 0))

    def _ticks(self, peer_ids: list[str], count: int) -> None:
        for tick in range(1, count + 1):
            for peer_id in peer_ids:
                peer = self.cluster.peers[peer_id]
                if peer.node is None:
                    continue
                peer.node.tick()
                peer.process()
            self.observe(prefix=f"tick {tick}: " if count > 1 else "", drops=False)

    # ------------------------------------------------------------------ inputs

    def cmd_campaign(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        self.refused(peer_id, self.node(peer_id).campaign())
        self.cluster.peers[peer_id].process()
        self.observe()

    def cmd_propose(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        data = [item.encode() for item in args.positional[1:]]
        result = self.node(peer_id).propose(data)
        self.cluster.peers[peer_id].process()
        if result.accepted:
            self.emit(f"{peer_id}: proposed at index {result.index} term {result.term}")
        else:
            leader = f" (leader={result.leader})" if result.leader else ""
            self.refused(peer_id, f"{result.reason}{leader}")
        self.observe()

    def cmd_read_index(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        contexts = args.positional[1:]
        if not contexts:
            raise ScenarioError("usage: read-index n1 ctx..")
        node, cluster = self.node(peer_id), self.cluster
        for context in contexts:  # one batch: all asked before the driver takes a Ready
            cluster.read_started[context] = cluster.checker.max_commit
            node.read_index(context)
        cluster.peers[peer_id].process()
        self.observe()

    def cmd_change(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        voters, learners = args.peers("voters"), args.peers("learners")
        result = self.node(peer_id).propose_membership(set(voters), set(learners))
        self.cluster.peers[peer_id].process()
        if result.accepted:
            self.emit(f"{peer_id}: proposed at index {result.index} term {result.term}")
        else:
            self.refused(peer_id, result.reason)
        self.observe()

    def cmd_transfer(self, args: Args) -> None:
        peer_id, target = self.one_peer(args, 2)
        self.refused(peer_id, self.node(peer_id).transfer_leadership(target))
        self.cluster.peers[peer_id].process()
        self.observe()

    def cmd_compact(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        if len(args.positional) != 2:
            raise ScenarioError("usage: compact n1 index")
        index = to_int(args.positional[1])
        peer, node = self.cluster.peers[peer_id], self.node(peer_id)
        if not node.compact(index):
            self.refused(peer_id, f"cannot compact to {index}")
            return
        peer.disk.compact(node.snapshot_meta, tuple(peer.applied[:index]))
        meta = node.snapshot_meta
        self.emit(f"{peer_id}: snapshot at {meta.index}/{meta.term}")

    # ------------------------------------------------------------------ network and disk

    def _deliver(self, msg: Message, attachment: Any) -> None:
        cluster = self.cluster
        self.emit(format_message(msg))
        target = cluster.peers.get(msg.dst)
        if target is None or target.node is None:
            self.emit("dropped: peer down", 2)
            cluster._dropped(msg)
        elif (msg.src, msg.dst) in cluster.blocked:
            self.emit("dropped: partitioned", 2)
            cluster._dropped(msg)
        else:
            node = target.node
            before = dict(node.ignored)
            cluster.deliver(msg, attachment)
            for reason, count in sorted(node.ignored.items()):
                if count > before.get(reason, 0):
                    self.emit(f"ignored: {reason}", 2)
        self.observe(indent=2)

    def cmd_deliver(self, args: Args) -> None:
        sources, targets = set(args.peers("from")), set(args.peers("to"))
        kinds = set(args.peers("type"))
        drop = "drop" in args.positional
        if set(args.positional) - {"drop"}:
            raise ScenarioError(f"unexpected arguments {args.positional}")
        cluster = self.cluster
        chosen = [
            item
            for item in cluster.queue
            if (not sources or item[0].src in sources)
            and (not targets or item[0].dst in targets)
            and (not kinds or type(item[0]).__name__ in kinds)
        ]
        for item in chosen:
            cluster.queue.remove(item)
            msg, attachment = item
            if drop:
                self.emit(format_message(msg))
                self.emit("dropped", 2)
                cluster._dropped(msg)
                self.observe(indent=2)
            else:
                self._deliver(msg, attachment)

    def cmd_stabilize(self, args: Args) -> None:
        cluster = self.cluster
        for _ in range(10_000):
            self._flush_all()
            if not cluster.queue:
                if not any(p.pending_writes for p in cluster.peers.values()):
                    return
                continue
            msg, attachment = cluster.queue.pop(0)
            self._deliver(msg, attachment)
        raise ScenarioError("stabilize did not settle after 10000 steps")

    def _flush_all(self, peer_ids: list[str] | None = None) -> None:
        cluster = self.cluster
        for peer_id in peer_ids or sorted(cluster.peers):
            peer = cluster.peers[peer_id]
            if peer.pending_writes:
                self.emit(f"{peer_id}: persisted " + describe_writes(peer.pending_writes))
                peer.flush()
                self.observe(indent=2)

    def cmd_persist(self, args: Args) -> None:
        self._flush_all(self.selected(args))

    def cmd_crash(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        self.peer(peer_id).crash()
        self.observe()

    def cmd_restart(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        peer = self.peer(peer_id)
        if peer.node is not None:
            raise ScenarioError(f"{peer_id} is running")
        peer.start()
        peer.process()
        self.observe()

    def cmd_partition(self, args: Args) -> None:
        words = " ".join(args.positional).split("|")
        groups = [split_list(word.replace(" ", ",")) for word in words]
        if len(groups) < 2 or not all(groups):
            raise ScenarioError("usage: partition n1 | n2,n3 [| ...]")
        for group in groups:
            for peer_id in group:
                self.peer(peer_id)
        cluster = self.cluster
        for i, group in enumerate(groups):
            for other in groups[i + 1 :]:
                for a in group:
                    for b in other:
                        cluster.blocked |= {(a, b), (b, a)}

    def cmd_heal(self, args: Args) -> None:
        self.cluster.blocked.clear()

    # ------------------------------------------------------------------ inspection

    def cmd_status(self, args: Args) -> None:
        cluster = self.cluster
        for peer_id in self.selected(args):
            peer = cluster.peers[peer_id]
            node = peer.node
            if node is None:
                self.emit(f"{peer_id}: down")
                continue
            fields = dict(peer_state(cluster, peer_id) or ())
            last = f"{node.log.last_index}/{node.log.last_term}"
            self.emit(
                f"{peer_id}: role={fields['role']} term={node.term} vote={fields['vote']} "
                f"leader={fields['leader']} commit={node.commit} applied={len(peer.applied)} "
                f"last={last} config={fields['config']}"
            )

    def cmd_log(self, args: Args) -> None:
        for peer_id in self.selected(args):
            node = self.cluster.peers[peer_id].node
            if node is None:
                self.emit(f"{peer_id}: down")
                continue
            log = node.log
            entries = log.slice(log.first_index, log.last_index + 1)
            text = " ".join(format_entry(e) for e in entries) or "(empty)"
            self.emit(f"{peer_id}: snapshot={log.snap_index}/{log.snap_term} {text}")

    def cmd_applied(self, args: Args) -> None:
        for peer_id in self.selected(args):
            applied = self.cluster.peers[peer_id].applied
            text = " ".join(format_entry(e) for e in applied) or "(nothing)"
            self.emit(f"{peer_id}: {text}")

    def cmd_reads(self, args: Args) -> None:
        for peer_id in self.selected(args):
            reads = self.cluster.reads[peer_id]
            self.emit(f"{peer_id}: " + (", ".join(reads) or "(none)"))

    def cmd_progress(self, args: Args) -> None:
        (peer_id,) = self.one_peer(args)
        node = self.node(peer_id)
        if not node.progress:
            self.emit(f"{peer_id}: no progress (role={node.role})")
        for other, progress in sorted(node.progress.items()):
            self.emit(
                f"{other}: match={progress.match} next={progress.next} state={progress.state} "
                f"inflight={len(progress.inflight)} active={progress.recent_active}"
            )

    def cmd_queue(self, args: Args) -> None:
        for msg, _ in self.cluster.queue:
            self.emit(format_message(msg))
        if not self.cluster.queue:
            self.emit("(empty)")

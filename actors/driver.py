"""The peer's driver, sans I/O: everything between the consensus core and the edges.

Inputs go in (``receive``: peer messages, client requests, what storage made durable, what
the state machine applied; ``tick``), effects come out through ``DriverEdges``, and nothing
here has a thread, clock, socket or file (in the spirit of etcd's ``RawNode`` and h11's
``Connection``). It owns the order of the core's output (``drain``): messages that may go at
once, then the durable write with the votes and acknowledgements that wait for it, then the
committed entries and confirmed reads for the state machine (``ApplyDriver``, the other half,
which answers them once applied); and around the core: client admission and one waiter per
request, session expiry on the leader, membership waiters, which peers to reach.

``PeerActor`` is a thin shell that runs it on the transport's loop; the simulation
(``zraft.sim``) drives this very class, so the orders above are proven where they run.

Why one module: the client ops, the waiters they register and the drain that releases them
share the node and the waiters' tables; split, a waiter and its release could drift.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from zraft.core import (
    Configuration,
    InstallSnapshot,
    Message,
    Node,
    Ready,
    ReplicationState,
    Role,
)
from zraft.transport import ClientReply, ClientRequest, SnapshotOffer, SnapshotReady

from .commands import Command, CommandKind
from .founding import IdentityGuard
from .messages import (
    LEADERSHIP_LOST,
    WATCH_TICK,
    AppliedUpTo,
    ApplyBatch,
    AwaitWrites,
    ClientBatch,
    CompactLog,
    DiscardStaged,
    ExpectSnapshot,
    Identity,
    MetricsReport,
    OfferReceived,
    PeerBatch,
    PendingRead,
    PendingWrite,
    Persisted,
    PersistItem,
    ReadyReceived,
    SendSnapshot,
    ServeReads,
    SnapshotReport,
    SnapshotStaged,
    SnapshotTaken,
    WatchPoll,
)
from .state_machine import DEFAULT_MAX_RESULTS_PER_CLIENT, admission_refusal

log = logging.getLogger(__name__)

Replies = list[tuple[Identity, ClientReply]]

PROPOSAL_SLICE = 128
# The error code of a write refused at admission for its client's unacknowledged results.
TOO_FAR_AHEAD = "too_far_ahead"

# Client ops that become log entries, and the command each carries.
_WRITE_KINDS = {
    "write": CommandKind.WRITE,
    "session_open": CommandKind.SESSION_OPEN,
    "session_write": CommandKind.SESSION_WRITE,
    "session_close": CommandKind.SESSION_CLOSE,
}


class DriverEdges(Protocol):
    """Where the driver's effects go; each call is made in the order the effects must
    happen (the shell may queue them, but never reorder ``send`` after ``persist``)."""

    def send(self, messages: list[Message]) -> None:
        """Messages that may leave before anything is durable."""
        ...

    def persist(self, item: PersistItem) -> None:
        """Make ``item`` durable, in order with earlier items; then send its messages and
        hand ``Persisted`` back to ``receive``."""
        ...

    def compact(self, order: CompactLog) -> None:
        """The log before a durable snapshot may go."""
        ...

    def to_state_machine(self, message: Any) -> None:
        """An input of the ``ApplyDriver`` (in order)."""
        ...

    def to_snapshots(self, message: Any) -> None:
        """Send a snapshot to a follower, or a transfer's offer or readiness arrived."""
        ...

    def reply(self, replies: Iterable[tuple[Identity, ClientReply]]) -> None: ...

    def set_peers(self, peers: frozenset[str]) -> None:
        """Whom the transport must be able to reach now."""
        ...

    def removed(self) -> None:
        """A committed configuration left this peer out."""
        ...

    def flush(self) -> None:
        """The end of a drain: what was queued to send goes now."""
        ...

    def counters(self) -> dict[str, tuple[tuple[str, Any], ...]]:
        """Counters the edges own, by source, for the status."""
        ...


class PeerDriver:
    """Owned by one thread at a time (the peer actor's, or the simulation's)."""

    def __init__(
        self,
        *,
        node: Node,
        edges: DriverEdges,
        applied: AppliedUpTo,
        tick_ms: float,
        identity_guard: IdentityGuard | None = None,
        max_results_per_client: int = DEFAULT_MAX_RESULTS_PER_CLIENT,
    ) -> None:
        self.node = node
        self.edges = edges
        # How far the state machine has applied, as it last told us (AppliedUpTo).
        self.applied = applied
        # The other actors' counters as they last reported them (MetricsReport).
        self.reported_metrics: dict[str, tuple[tuple[str, int | float], ...]] = {}
        # Long-lived sessions (id -> timeout in ms), as the state machine last told us. The
        # leader tracks when each was last heard of (in ticks); a new leader starts every
        # session afresh: failover never expires one.
        self.sessions: dict[str, int] = applied.sessions or {}
        self.max_results_per_client = max_results_per_client
        self.tick_ms = tick_ms
        self.last_heard: dict[str, int] = {}
        self.expiring: set[str] = set()
        self.was_member = node.id in node.config.members
        self.staged: dict[int, str] = {}
        # The waiters of writes proposed since the last ApplyBatch, which carries them.
        self.unsent_waiters: list[PendingWrite] = []
        # The snapshot from the leader being installed, until the state machine has it: one
        # at a time, or a newer one would retire its files before they were read.
        self.installing: int | None = None
        # The term and vote last handed to storage (the node starts from the saved ones)
        self.queued_vote = (node.term, node.vote)
        # read context -> (request, tick it arrived, watch to arm); contexts grow, so the
        # oldest come first
        self.reads: dict[int, tuple[Identity, int, Any, int, tuple[str, int] | None]] = {}
        self.ticks = 0
        self.askers: dict[str, int] = {}  # peers answered outside the configuration -> until
        self._contexts = itertools.count(1)
        self._ops = self._client_ops()
        self.membership_waiters: list[tuple[Identity, int, Configuration]] = []
        self.members: frozenset[str] = frozenset()
        self.peers_key: tuple[Any, ...] = ()
        self.identity_guard = identity_guard
        self.guard_config: Configuration | None = None
        self.role = node.role
        self.leader = node.leader
        self.leader_since: float | None = None  # wall clock, comparable across processes
        self.metrics = {
            "elections_started": 0,
            "leader_changes": 0,
            "proposals": 0,
            "client_requests": 0,
            "peer_messages": 0,
            "writes_too_far_ahead": 0,
        }
        self._inputs: dict[type, Callable[[Any], bool]] = {
            PeerBatch: self._peer_batch,
            ClientBatch: self._client_batch_input,
            Persisted: self._persisted,
            SnapshotTaken: self._snapshot_taken,
            SnapshotStaged: self._snapshot_staged,
            SnapshotReport: self._snapshot_report,
            AppliedUpTo: self._applied_up_to,
            MetricsReport: self._metrics_report,
        }

    # ------------------------------------------------------------------ inputs

    def open(self) -> None:
        """Before the first input: reach the peers of the configuration we start with."""
        self._track_peers(drop=True)
        self.drain()

    def receive(self, message: Any) -> bool:
        """One input; True if it may have given the core output (``drain`` soon)."""
        handler = self._inputs.get(type(message))
        if handler is None:
            raise TypeError(f"the peer driver has no input {type(message).__name__}")
        return handler(message)

    def tick(self) -> None:
        """One unit of logical time."""
        node = self.node
        node.tick()
        self.ticks += 1
        self._forget_lost_reads()
        if self.askers and min(self.askers.values()) <= self.ticks:
            self.peers_key = ()  # an asker's time is up: the next drain lets it go
        if node.role is Role.LEADER:
            self._expire_silent_sessions()
            self.edges.to_state_machine(WATCH_TICK)  # held watch polls time out

    def _peer_batch(self, batch: PeerBatch) -> bool:
        self.metrics["peer_messages"] += len(batch.messages)
        for msg in batch.messages:
            self._step(msg)
        return True

    def _client_batch_input(self, batch: ClientBatch) -> bool:
        self._client_batch(batch.requests)
        return True

    def _persisted(self, message: Persisted) -> bool:
        self.node.persisted(message.index, message.term)
        return True

    def _snapshot_report(self, message: SnapshotReport) -> bool:
        self.node.report_snapshot(message.peer, message.success)
        return True

    def _snapshot_taken(self, message: SnapshotTaken) -> bool:
        node = self.node
        if node.compact(message.index):
            self.edges.compact(CompactLog(message.index, node.snapshot_meta.term))
        return True

    def _snapshot_staged(self, message: SnapshotStaged) -> bool:
        self.staged[message.index] = message.path
        return True

    def _applied_up_to(self, message: AppliedUpTo) -> bool:
        self.applied = message
        if self.installing is not None and message.index >= self.installing:
            self.installing = None
        if message.sessions is not None:
            self.sessions = message.sessions
        return False

    def _metrics_report(self, message: MetricsReport) -> bool:
        self.reported_metrics[message.source] = message.values
        return False

    def _step(self, msg: Message) -> None:
        if isinstance(msg, SnapshotOffer):
            self.edges.to_snapshots(OfferReceived(msg))
            return
        if isinstance(msg, SnapshotReady):
            self.edges.to_snapshots(ReadyReceived(msg))
            return
        if isinstance(msg, InstallSnapshot) and msg.meta.index > self.node.commit:
            if msg.meta.index not in self.staged:
                log.warning("InstallSnapshot %d without its files; ignored", msg.meta.index)
                return
            if self.installing is not None:
                log.debug("InstallSnapshot %d while %d installs; ignored", msg.meta.index,
                          self.installing)  # fmt: skip
                self._discard_staged(lambda index: index == msg.meta.index)
                return
        reason = self.node.step(msg)
        if reason is not None:
            log.debug("ignored %s from %s: %s", type(msg).__name__, msg.src, reason)
        if isinstance(msg, InstallSnapshot) and self.staged:
            # A snapshot below our commit is never installed (the one just accepted is at it).
            commit = self.node.commit
            self._discard_staged(lambda index: index < commit)

    def _discard_staged(self, which: Callable[[int], bool]) -> None:
        gone = [index for index in self.staged if which(index)]
        if gone:
            paths = tuple(self.staged.pop(index) for index in gone)
            self.edges.to_snapshots(DiscardStaged(paths))

    def _client_batch(self, requests: Iterable[tuple[Identity, ClientRequest]]) -> None:
        writes: list[tuple[Identity, ClientRequest]] = []
        replies: Replies = []
        count = 0
        for identity, request in requests:
            count += 1
            op = request.op
            if request.client_id and self.role is Role.LEADER:
                self.last_heard[request.client_id] = self.ticks  # any request keeps it alive
            if op in _WRITE_KINDS:  # batched: proposed together below
                writes.append((identity, request))
                continue
            handler = self._ops.get(op)
            if handler is None:
                error = ClientReply(request.request_id, False, f"unknown op {op!r}", "bad_request")
                replies.append((identity, error))
            else:
                replies.extend(handler(identity, request))
        self.metrics["client_requests"] += count
        # Propose in slices, each sent on before the next is built, so followers persist and
        # the state machine applies one slice while the next is on its way: a big batch
        # would otherwise go through every stage in lockstep.
        for start in range(0, len(writes), PROPOSAL_SLICE):
            replies.extend(self._propose(writes[start : start + PROPOSAL_SLICE]))
            self.drain()
        if replies:
            self.edges.reply(replies)

    def _client_ops(self) -> dict[str, Callable[[Identity, ClientRequest], Replies]]:
        """Every client op but the writes, by name: each answers at once (a list of
        replies, maybe empty) or registers a waiter that answers later."""

        def answering(handler: Callable[[ClientRequest], ClientReply]) -> Any:
            return lambda identity, request: [(identity, handler(request))]

        return {
            "ping": answering(self._ping),
            "query": self._query,
            "query_local": self._query_local,
            "watch_query": self._watch_query,
            "watch_poll": self._watch_poll,
            "status": answering(lambda r: ClientReply(r.request_id, True, self.status())),
            "members": answering(self._members),
            "set_members": self._set_members,
            "bootstrap": answering(self._bootstrap),
            "transfer": answering(self._transfer),
        }

    def _query(self, identity: Identity, request: ClientRequest) -> Replies:
        """A linearizable read: answered once a ReadIndex confirms it and it is applied."""
        context = next(self._contexts)
        self.reads[context] = (identity, request.request_id, request.payload, self.ticks, None)
        self.node.read_index(context)
        return []

    def _query_local(self, identity: Identity, request: ClientRequest) -> Replies:
        read = PendingRead(0, identity, request.request_id, request.payload)
        self.edges.to_state_machine(ServeReads((read,)))
        return []

    def _transfer(self, request: ClientRequest) -> ClientReply:
        if self.node.role is not Role.LEADER:  # a redirect, which sessions follow
            return self._not_leader(request)
        reason = self.node.transfer_leadership(str(request.payload))
        done = reason is None or reason == "already leader"  # asked again: done
        return ClientReply(request.request_id, done, reason, None if done else reason)

    def _propose(self, writes: list[tuple[Identity, ClientRequest]]) -> Replies:
        node = self.node
        refused: Replies = []
        if node.role is Role.LEADER:
            writes, refused = self._admit(writes)
            if not writes:
                return refused
        data = []
        for _, request in writes:
            command = Command(
                _WRITE_KINDS[request.op],
                request.client_id,
                request.seq,
                request.acked,
                request.payload,
            )
            data.append(command.encode())
        result = node.propose(data)
        if not result.accepted:
            return [
                (
                    identity,
                    ClientReply(r.request_id, False, result.reason, "not_leader", node.leader),
                )
                for identity, r in writes
            ] + refused
        self.metrics["proposals"] += len(writes)
        # One waiter per write, made here; it rides to the apply driver with the next
        # ApplyBatch (before its own entry can commit), which keeps it until the reply.
        self.unsent_waiters.extend(
            PendingWrite(result.index + offset, result.term, identity, request.request_id)
            for offset, (identity, request) in enumerate(writes)
        )
        return refused

    def _admit(
        self, writes: list[tuple[Identity, ClientRequest]]
    ) -> tuple[list[tuple[Identity, ClientRequest]], Replies]:
        """The writes that may be proposed, and the answers to those that may not: a client
        too far ahead of its acknowledged results is slowed down here, before its write is
        in the log, so the answer is a certain "not applied" (see ``admission_refusal``)."""
        limit = self.max_results_per_client
        if all(r.seq - r.acked <= limit or not r.client_id for _, r in writes):
            return writes, []  # the common case: one pass, no copies
        admitted: list[tuple[Identity, ClientRequest]] = []
        refused: Replies = []
        for identity, request in writes:
            why = None
            if request.client_id:
                why = admission_refusal(request.seq, request.acked, limit)
            if why is None:
                admitted.append((identity, request))
            else:
                # The limit goes with the refusal: sessions hold back later writes on
                # their side rather than sending each again to be refused again.
                reply = ClientReply(request.request_id, False, [why, limit], TOO_FAR_AHEAD)
                refused.append((identity, reply))
        self.metrics["writes_too_far_ahead"] += len(refused)
        return admitted, refused

    def _watch_query(self, identity: Identity, request: ClientRequest) -> Replies:
        """A linearizable query that arms a watch: served by the leader itself, since the
        watch lives in the leader's table."""
        payload = request.payload
        valid = (
            isinstance(payload, list)
            and len(payload) == 2
            and type(payload[1]) is int
            and request.client_id
        )
        if not valid:
            reply = ClientReply(request.request_id, False, "[query, watch id]", "bad_request")
            return [(identity, reply)]
        if self.node.role is not Role.LEADER:
            reply = self._not_leader(request)
            return [(identity, reply)]
        context = next(self._contexts)
        watch = (request.client_id, payload[1])
        self.reads[context] = (identity, request.request_id, payload[0], self.ticks, watch)
        self.node.read_index(context)
        return []

    def _watch_poll(self, identity: Identity, request: ClientRequest) -> Replies:
        payload = request.payload if isinstance(request.payload, dict) else {}
        epoch, after, wait_ms = payload.get("epoch"), payload.get("after"), payload.get("wait_ms")
        valid = (
            request.client_id
            and isinstance(epoch, str)
            and type(after) is int
            and type(wait_ms) is int
            and 0 <= wait_ms <= 60_000
        )
        if not valid:
            reply = ClientReply(
                request.request_id, False, "{epoch, after, wait_ms 0..60000}", "bad_request"
            )
            return [(identity, reply)]
        if self.node.role is not Role.LEADER:
            reply = self._not_leader(request)
            return [(identity, reply)]
        if not self._caught_up():  # it would not know a session opened just before
            return [(identity, ClientReply(request.request_id, False, "catching up", "retry"))]
        poll = WatchPoll(
            identity, request.request_id, request.client_id, epoch, after, wait_ms / 1000
        )
        self.edges.to_state_machine(poll)
        return []

    def _not_leader(self, request: ClientRequest) -> ClientReply:
        """The answer to a leader-only request that reached a non-leader: a redirect."""
        return ClientReply(request.request_id, False, None, "not_leader", self.node.leader)

    def _caught_up(self) -> bool:
        """Our state machine has applied an entry of our term (at least our no-op), so it
        holds everything committed before we led: a session it lacks is really gone."""
        return self.applied.term == self.node.term

    def _ping(self, request: ClientRequest) -> ClientReply:
        if self.node.role is not Role.LEADER:
            return self._not_leader(request)
        if not self._caught_up():
            return ClientReply(request.request_id, False, "catching up", "retry")
        if request.client_id not in self.sessions:
            return ClientReply(request.request_id, False, "no such session", "session_expired")
        return ClientReply(request.request_id, True)

    def _expire_silent_sessions(self) -> None:
        """The leader decides expiry and replicates it as one entry per session."""
        table = self.sessions
        expired = []
        for session, timeout_ms in table.items():
            heard = self.last_heard.setdefault(session, self.ticks)
            silent_ms = (self.ticks - heard) * self.tick_ms
            if silent_ms > timeout_ms and session not in self.expiring:
                expired.append(session)
        if expired:
            data = [Command(CommandKind.SESSION_EXPIRE, "", 0, 0, s).encode() for s in expired]
            if self.node.propose(data).accepted:
                self.expiring.update(expired)
                log.info("%s: expiring %d silent session(s)", self.node.id, len(expired))
        self.expiring &= table.keys()
        if len(self.last_heard) > 2 * len(table) + 1024:  # plain clients are noted too
            self.last_heard = {s: t for s, t in self.last_heard.items() if s in table}

    def _bootstrap(self, request: ClientRequest) -> ClientReply:
        voters = request.payload.get("voters") if isinstance(request.payload, dict) else None
        if not isinstance(voters, list) or not all(isinstance(v, str) for v in voters):
            return ClientReply(request.request_id, False, "voters: list of ids", "bad_request")
        guard = self.identity_guard
        if guard is not None and guard.cluster_uuid:
            # Pristine, but a member already reached us: we belong to that founding.
            reason: str | None = "already present"
        else:
            reason = self.node.bootstrap(frozenset(voters))
            if reason is None and guard is not None:
                # Durable now, before the drain persists the founding entry (founding.py).
                guard.founded(voters)
        if reason is not None:
            code = "already_present" if reason == "already present" else "bad_request"
            return ClientReply(request.request_id, False, reason, code)
        log.info("%s: founded a cluster of %s", self.node.id, sorted(voters))
        return ClientReply(request.request_id, True, self.node.config.to_wire())

    def _members(self, request: ClientRequest) -> ClientReply:
        """The leader's configuration, which is in force from the moment it is appended, and
        whether it is settled (committed and not joint). Only the leader answers: a
        follower's copy may lag a change or hold one that never commits."""
        node = self.node
        if node.role is not Role.LEADER:
            return self._not_leader(request)
        answer = {"config": node.config.to_wire(), "settled": node.membership_stable}
        return ClientReply(request.request_id, True, answer)

    def _set_members(self, identity: Identity, request: ClientRequest) -> Replies:
        payload = request.payload if isinstance(request.payload, dict) else {}
        voters = payload.get("voters")
        learners = payload.get("learners", [])
        if not isinstance(voters, list) or not isinstance(learners, list):
            return [
                (identity, ClientReply(request.request_id, False, "voters: list", "bad_request"))
            ]
        if self.node.role is not Role.LEADER:
            reply = self._not_leader(request)
            return [(identity, reply)]
        target = Configuration.of(voters, learners)
        config = self.node.config
        if config.voters == target.voters and config.learners == target.learners:
            if self.node.membership_stable:
                # Already in force: a retry of a change whose answer was lost, or a no-op.
                return [(identity, ClientReply(request.request_id, True, target.to_wire()))]
            # This very change is under way (a retry of one that timed out): answer when it
            # settles, as the first attempt would have; its `old` is the config it left.
            self.membership_waiters.append((identity, request.request_id, target))
            return []
        old = payload.get("old")
        if old is not None and frozenset(old) != self.node.config.voters:
            return [(identity, ClientReply(request.request_id, False, None, "peers_changed"))]
        result = self.node.propose_membership(frozenset(voters), frozenset(learners))
        if not result.accepted:
            code = "not_stable" if result.reason == "not stable" else "rejected"
            if result.reason == "not leader":
                code = "not_leader"
            reply = ClientReply(request.request_id, False, result.reason, code, self.node.leader)
            return [(identity, reply)]
        self.membership_waiters.append((identity, request.request_id, target))
        return []

    # ------------------------------------------------------------------ the ready loop

    def drain(self) -> None:
        """Carry out the core's output until it has none, in the order Raft needs."""
        node = self.node
        while node.has_ready():
            self._carry_out(node.ready())
        self._track_peers(drop=True)  # after the last word to a removed peer went out
        if self.identity_guard is not None and node.config is not self.guard_config:
            self.guard_config = node.config
            self.identity_guard.set_members(node.config.members)
        if self.was_member and node.id not in node.config.members and node.membership_stable:
            log.warning("%s: removed from the cluster by %s; stopping", node.id, node.config)
            self.was_member = False
            self.edges.removed()
        if self.membership_waiters:
            self._answer_membership()
        self.edges.flush()

    def _carry_out(self, ready: Ready) -> None:
        """One Ready: messages that may go now, the durable write (with what waits for
        it), committed entries and confirmed reads for the state machine."""
        self._observe_roles(ready)
        self._track_peers(drop=False)  # a joiner's first answer: to a leader it just met
        outgoing = []
        for msg in ready.messages:
            if isinstance(msg, InstallSnapshot):
                self.edges.to_snapshots(SendSnapshot(msg))
            else:
                outgoing.append(msg)
        if outgoing:
            self._reach_askers(outgoing)
            self.edges.send(outgoing)
        if ready.must_persist or ready.messages_after_persist:
            self._persist(ready)
        if ready.committed:
            self._apply(ready)
        if ready.read_states or ready.read_failures:
            self._reads(ready)

    def _reach_askers(self, messages: list[Any]) -> None:
        """Answers to a peer we do not track yet go out too: a voter that has not received
        the configuration that made it one (a promoted learner, a peer added directly) must
        answer the candidates, or an election that needs its vote never ends. The peer stays
        reachable for a few election timeouts after it last asked (the transport has
        admitted and the guard checked its frames)."""
        until = self.ticks + 4 * self.node.options.election_ticks
        new = False
        for msg in messages:
            dst = msg.dst
            if dst not in self.members:
                new = new or dst not in self.askers
                self.askers[dst] = until
        if new:
            self.peers_key = ()
            self._track_peers(drop=False)

    def _track_peers(self, drop: bool) -> None:
        """Connect to peers we must now reach before the messages to them go; with ``drop``
        also disconnect from those we need no more (only once the drain has sent its last
        message to them: a leader that removed itself tells the removed peers last)."""
        # Whom to reach changes only with the configuration (a new object), the leader or the
        # peers the leader tracks (removed ones are dropped): recomputed only then.
        node = self.node
        peers_key = (node.config, node.leader, len(node.progress), frozenset(self.askers))
        if peers_key == self.peers_key:
            return
        wanted = self._wanted_peers()
        if drop:
            self.peers_key = peers_key
        else:
            wanted |= self.members
        if wanted != self.members:
            self.members = wanted
            self.edges.set_peers(wanted - {node.id})
            if node.id in wanted:
                self.was_member = True

    def _persist(self, ready: Ready) -> None:
        hard_state = ready.hard_state
        if hard_state is not None:
            vote = (hard_state.term, hard_state.vote)
            if (
                vote == self.queued_vote
                and not ready.entries
                and ready.snapshot is None
                and not ready.messages_after_persist
            ):
                # Only the commit index moved: a restart hint the log actor saves only with a
                # new term or vote, so waking it (and its Persisted back) would be two thread
                # hand-offs in every commit's path for nothing.
                return
            self.queued_vote = vote
        staged = None
        if ready.snapshot is not None:
            staged = self.staged.pop(ready.snapshot.index)
            self.installing = installed = ready.snapshot.index
            self._discard_staged(lambda index: index < installed)
            if self.unsent_waiters:  # the install answers those it covers
                waiting, self.unsent_waiters = tuple(self.unsent_waiters), []
                self.edges.to_state_machine(AwaitWrites(waiting))
            self.edges.to_state_machine(ExpectSnapshot(ready.snapshot.index))
        item = PersistItem(
            ready.snapshot,
            staged,
            tuple(ready.entries),
            ready.hard_state,
            tuple(ready.messages_after_persist),
        )
        self.edges.persist(item)

    def _apply(self, ready: Ready) -> None:
        """Committed entries to the state machine, with the waiters proposed since."""
        waiting, self.unsent_waiters = tuple(self.unsent_waiters), []
        self.edges.to_state_machine(ApplyBatch(tuple(ready.committed), waiting))

    def _reads(self, ready: Ready) -> None:
        reads = []
        for state in ready.read_states:
            request = self.reads.pop(state.context, None)
            if request is None:
                continue
            identity, request_id, query, _, watch = request
            if watch is not None and self.role is not Role.LEADER:
                # Confirmed while we led, but the table it would be armed in is gone.
                reply = ClientReply(request_id, False, None, "not_leader", self.leader)
                self.edges.reply([(identity, reply)])
                continue
            reads.append(PendingRead(state.index, identity, request_id, query, watch))
        if reads:
            self.edges.to_state_machine(ServeReads(tuple(reads)))
        failures = []
        for failure in ready.read_failures:
            request = self.reads.pop(failure.context, None)
            if request is not None:
                reply = ClientReply(request[1], False, failure.reason, "not_leader", self.leader)
                failures.append((request[0], reply))
        if failures:
            self.edges.reply(failures)

    def _forget_lost_reads(self) -> None:
        """A read forwarded to a leader that never answered (lost message, leader gone)
        waits no longer than a few election timeouts; the client has timed out by then."""
        horizon = self.ticks - 10 * self.node.options.election_ticks
        while self.reads:
            context, request = next(iter(self.reads.items()))
            if request[3] > horizon:
                break
            del self.reads[context]

    def _observe_roles(self, ready: Ready) -> None:
        if ready.role is not self.role:
            if ready.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
                self.metrics["elections_started"] += ready.role is Role.CANDIDATE
            if self.role is Role.LEADER and self.membership_waiters:
                self._answer_membership()  # a leader removed by the change answers it first
            if self.role is Role.LEADER and self.membership_waiters:
                self.edges.reply(
                    (identity, ClientReply(rid, False, None, "not_leader", ready.leader))
                    for identity, rid, _ in self.membership_waiters
                )
                self.membership_waiters = []
            if self.role is Role.LEADER:
                self.edges.to_state_machine(LEADERSHIP_LOST)
            self.role = ready.role
            self.leader_since = time.time() if ready.role is Role.LEADER else None
            # Whoever leads next starts every session's timeout afresh.
            self.last_heard.clear()
            self.expiring.clear()
        if ready.leader != self.leader:
            self.leader = ready.leader
            if ready.leader is not None:
                self.metrics["leader_changes"] += 1
                log.info("%s: leader is now %s (term %d)", self.node.id, ready.leader, ready.term)

    def _wanted_peers(self) -> frozenset[str]:
        """Whom we must be able to send to: the members, the peers a leader still tracks (a
        removed peer until it learns its removal committed), and a leader we do not know
        yet (a peer being added hears from the leader before it holds the configuration)."""
        node = self.node
        if self.askers:
            self.askers = {p: t for p, t in self.askers.items() if t > self.ticks}
        wanted = node.config.members | node.progress.keys() | self.askers.keys()
        return wanted | {node.leader} if node.leader is not None else wanted

    def _answer_membership(self) -> None:
        node = self.node
        if not node.membership_stable:
            return
        done = [w for w in self.membership_waiters if w[2] == node.config]
        if done:
            self.membership_waiters = [w for w in self.membership_waiters if w not in done]
            self.edges.reply(
                (identity, ClientReply(rid, True, node.config.to_wire()))
                for identity, rid, _ in done
            )

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        """The peer's state and counters (the edges add those the shell owns)."""
        node = self.node
        members = {}
        for peer, progress in sorted(node.progress.items()):
            members[peer] = {
                "match": progress.match,
                "next": progress.next,
                "state": str(progress.state),
                "lag": node.log.last_index - progress.match,
                "active": progress.recent_active,
                "snapshot": progress.state is ReplicationState.SNAPSHOT,
            }
        metrics: dict[str, Any] = dict(self.metrics)
        metrics["ignored_messages"] = sum(node.ignored.values())
        for name, values in {**self.reported_metrics, **self.edges.counters()}.items():
            for key, value in values:
                metrics[f"{name}_{key}"] = value
        guard = self.identity_guard
        return {
            "id": node.id,
            "cluster_uuid": guard.cluster_uuid if guard is not None else None,
            "instance": guard.identity.instance if guard is not None else None,
            "role": str(node.role),
            "leader_since": self.leader_since,
            "term": node.term,
            "leader": node.leader,
            "commit": node.commit,
            "applied": self.applied.index,
            "apply_lag": node.commit - self.applied.index,
            "last_index": node.log.last_index,
            "snapshot_index": node.log.snap_index,
            "config": node.config.to_wire(),
            "members": members,
            "metrics": metrics,
        }

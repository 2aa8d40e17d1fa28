"""One Raft peer as a pure state machine: inputs in, a Ready of things to do out.

The driver calls ``tick``, ``step``, ``propose``, ``read_index``, ``propose_membership``,
``transfer_leadership``, ``persisted``, ``compact`` and ``report_snapshot``; then takes
``ready()`` and carries it out in this order:

1. install ``ready.snapshot`` (if any), append ``ready.entries`` (truncating any stored
   suffix from ``entries[0].index``), save ``ready.hard_state``, all durably;
2. send ``ready.messages_after_persist`` (they promise what step 1 made durable) and call
   ``persisted(last_index, last_term)``;
3. apply ``ready.committed`` in order; answer ``ready.read_states`` once applied.

``ready.messages`` may be sent at once, before or during step 1. Several Readys may be
in flight as long as each one's step 1 finishes in order.

No clocks, threads, sockets, files or randomness of its own: time is ``tick``, randomness is
the injected ``rng``. Inputs that are malformed or impossible are ignored, and ``step``
returns the reason; nothing a peer sends can raise out of here.

Why one module: the Raft state machine is one object whose handlers all read and write the
same fields (term, log, progress, commit); split, its invariants would be spread over files
(etcd keeps raft.go whole for the same reason).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from .messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from .progress import Progress, ReplicationState
from .quorum import VoteResult, joint_value, vote_result
from .raft_log import RaftLog
from .types import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    ReadFailed,
    ReadState,
    Role,
    SnapshotMeta,
)


class RandomSource(Protocol):
    def randint(self, a: int, b: int) -> int: ...


@dataclass(frozen=True, slots=True)
class NodeOptions:
    election_ticks: int = 10  # election timeout, randomized in [E, 2E)
    heartbeat_ticks: int = 1
    max_entries_per_message: int = 512
    max_bytes_per_message: int = 1 << 20
    max_inflight: int = 64  # appends in flight per follower (pipelining window)
    pre_vote: bool = True
    check_quorum: bool = True

    def __post_init__(self) -> None:
        if self.heartbeat_ticks < 1 or self.election_ticks <= self.heartbeat_ticks:
            raise ValueError("need 1 <= heartbeat_ticks < election_ticks")
        if self.max_inflight < 1 or self.max_entries_per_message < 1:
            raise ValueError("max_inflight and max_entries_per_message must be >= 1")


@dataclass(slots=True)
class Ready:
    """Everything the driver has to do after a batch of inputs (see the module docstring)."""

    role: Role
    leader: str | None
    term: int
    hard_state: HardState | None = None
    snapshot: SnapshotMeta | None = None
    entries: list[Entry] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    messages_after_persist: list[Message] = field(default_factory=list)
    committed: list[Entry] = field(default_factory=list)
    read_states: list[ReadState] = field(default_factory=list)
    read_failures: list[ReadFailed] = field(default_factory=list)

    @property
    def must_persist(self) -> bool:
        return bool(self.entries or self.hard_state is not None or self.snapshot is not None)


@dataclass(frozen=True, slots=True)
class ProposalResult:
    accepted: bool
    index: int = 0  # index of the first proposed entry
    term: int = 0
    reason: str | None = None
    leader: str | None = None


@dataclass(slots=True)
class _PendingRead:
    round: int
    context: Any
    index: int
    requester: str | None  # None: asked locally; otherwise the follower that forwarded it


class Node:
    """The Raft consensus state of one peer. Not thread-safe: one driver owns it."""

    def __init__(
        self,
        peer_id: str,
        rng: RandomSource,
        options: NodeOptions | None = None,
        *,
        hard_state: HardState | None = None,
        snapshot: SnapshotMeta | None = None,
        entries: list[Entry] | tuple[Entry, ...] = (),
    ) -> None:
        """Start from durable state: the hard state, latest snapshot and the entries after it.

        A new cluster starts every founding peer with ``snapshot=SnapshotMeta(0, 0, config)``;
        a peer that will join later starts with an empty configuration and waits.
        """
        self.id = peer_id
        self.rng = rng
        self.options = options or NodeOptions()
        snapshot = snapshot or SnapshotMeta()
        hard_state = hard_state or HardState()
        self.log = RaftLog(snapshot, entries)
        self.snapshot_meta = snapshot
        self.term = hard_state.term
        self.vote = hard_state.vote
        self.commit = max(snapshot.index, min(hard_state.commit, self.log.last_index))
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.applied_out = snapshot.index  # highest index handed out for applying
        self.stable_index = self.log.last_index  # everything loaded was durable
        self._unsaved_from = self.log.last_index + 1
        self._config_history: list[tuple[int, Configuration]] = []
        self.config = snapshot.config
        self._track_configs(self.log.slice(self.log.first_index, self.log.last_index + 1))
        self.progress: dict[str, Progress] = {}
        self.votes: dict[str, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        self.transfer_target: str | None = None
        self._timeout_now_sent = False
        self._reads_before_commit: list[tuple[Any, str | None]] = []
        self._pending_reads: deque[_PendingRead] = deque()
        self._read_round = 0  # last round broadcast
        self._read_round_wanted = False
        self._saved_hard_state = hard_state
        self._snapshot_out: SnapshotMeta | None = None
        self._messages: list[Message] = []
        self._messages_after: list[Message] = []
        self._read_states: list[ReadState] = []
        self._read_failures: list[ReadFailed] = []
        self.ignored: dict[str, int] = {}  # reason -> count, for metrics
        self._reset_election_timer()

    # ------------------------------------------------------------------ inputs

    def tick(self) -> None:
        """One unit of logical time."""
        if self.role is Role.LEADER:
            self._tick_leader()
            return
        self.election_elapsed += 1
        if self.election_elapsed >= self.randomized_timeout and self.promotable:
            self._start_election(pre_vote=self.options.pre_vote)

    def bootstrap(self, voters: frozenset[str] | set[str]) -> str | None:
        """Found a new cluster from a pristine peer: its first entry is the configuration.

        The entry (index 1, term 1) is committed by definition and persisted like any other,
        so the cluster survives restarts; the other voters learn it by replication. Returns
        why not, if this peer already has state.
        """
        if self.term != 0 or self.log.last_index != 0 or self.config.members:
            return "already present"
        if self.id not in voters:
            return "the founding peer must be one of the voters"
        config = Configuration.of(voters)
        self.term = 1
        entry = Entry(1, 1, EntryKind.CONFIG, config)
        self.log.append([entry])
        self._on_appended([entry])
        self.commit = 1
        return None

    def campaign(self) -> str | None:
        """Start an election now instead of waiting for the timeout; returns why not."""
        if self.role is Role.LEADER:
            return "already leader"
        if not self.promotable:
            return "not a voter"
        self._start_election(pre_vote=self.options.pre_vote)
        return None

    def step(self, msg: Message) -> str | None:
        """Take one message from a peer; returns why it was ignored, or None."""
        reason = self._validate(msg)
        if reason is None:
            reason = self._step(msg)
        if reason is not None:
            self.ignored[reason] = self.ignored.get(reason, 0) + 1
        return reason

    def propose(self, data: list[bytes] | tuple[bytes, ...]) -> ProposalResult:
        """Append a batch of application commands (leader only)."""
        if self.role is not Role.LEADER:
            return ProposalResult(False, reason="not leader", leader=self.leader)
        if self.transfer_target is not None:
            return ProposalResult(False, reason="leadership transfer in progress", leader=self.id)
        if not data:
            return ProposalResult(False, reason="empty proposal")
        first = self.log.last_index + 1
        self._leader_append([(EntryKind.NORMAL, item) for item in data])
        return ProposalResult(True, index=first, term=self.term, leader=self.id)

    def propose_membership(
        self, voters: frozenset[str] | set[str], learners: frozenset[str] | set[str] = frozenset()
    ) -> ProposalResult:
        """Move to a new membership by joint consensus: C_old,new now, C_new once it commits."""
        if self.role is not Role.LEADER:
            return ProposalResult(False, reason="not leader", leader=self.leader)
        if self.transfer_target is not None:
            return ProposalResult(False, reason="leadership transfer in progress", leader=self.id)
        if not self.membership_stable:
            return ProposalResult(False, reason="not stable")
        voters, learners = frozenset(voters), frozenset(learners)
        if not voters:
            return ProposalResult(False, reason="a configuration needs at least one voter")
        if voters & learners:
            return ProposalResult(False, reason="a peer cannot be both voter and learner")
        if voters == self.config.voters and learners == self.config.learners:
            return ProposalResult(False, reason="configuration unchanged")
        joint = Configuration(voters=voters, outgoing=self.config.voters, learners=learners)
        index = self.log.last_index + 1
        self._leader_append([(EntryKind.CONFIG, joint)])
        return ProposalResult(True, index=index, term=self.term, leader=self.id)

    def transfer_leadership(self, target: str) -> str | None:
        """Hand leadership to ``target``; returns why not, or None once started."""
        if self.role is not Role.LEADER:
            return "not leader"
        if target == self.id:
            return "already leader"
        if not self.config.is_voter(target) or target not in self.progress:
            return "target is not a voter"
        if self.transfer_target == target:
            return None
        self.transfer_target = target
        self._timeout_now_sent = False
        if self.progress[target].match == self.log.last_index:
            self._send_timeout_now(target)
        else:
            self._send_appends(target, allow_empty=True)  # exposes a lost append at once
        return None

    def read_index(self, context: Any) -> None:
        """Ask for a linearizable read; answered by a ReadState or ReadFailed in a Ready."""
        if self.role is Role.LEADER:
            self._leader_read(context, None)
        elif self.leader is not None:
            self._messages.append(ReadIndexRequest(self.term, self.id, self.leader, context))
        else:
            self._read_failures.append(ReadFailed(context, "no leader"))

    def persisted(self, index: int, term: int) -> None:
        """Storage made entries up to ``index`` (of ``term``) durable."""
        if index <= self.stable_index or self.log.term(index) != term:
            return  # stale: that suffix was replaced since
        self.stable_index = min(index, self.log.last_index)
        if self.role is Role.LEADER:
            self._maybe_commit()

    def compact(self, index: int) -> bool:
        """A snapshot of the state machine at ``index`` is durable: drop the log before it."""
        if index <= self.log.snap_index or index > min(self.applied_out, self.stable_index):
            return False
        term = self.log.term(index)
        assert term is not None
        self.snapshot_meta = SnapshotMeta(index, term, self.config_at(index))
        self._config_history = [(i, c) for i, c in self._config_history if i > index]
        self.log.compact(index)
        return True

    def report_snapshot(self, peer: str, success: bool) -> None:
        """The driver's transfer of a snapshot to ``peer`` finished or failed."""
        progress = self.progress.get(peer)
        if self.role is not Role.LEADER or progress is None:
            return
        if progress.state is not ReplicationState.SNAPSHOT:
            return
        if not success:
            progress.pending_snapshot = 0
        progress.become_probe()
        progress.probe_sent = True  # wait for the follower's answer or a heartbeat

    # ------------------------------------------------------------------ outputs

    def has_ready(self) -> bool:
        return bool(
            self._messages
            or self._messages_after
            or self._read_states
            or self._read_failures
            or self._read_round_wanted
            or self._snapshot_out is not None
            or self._unsaved_from <= self.log.last_index
            or self.commit > self.applied_out
            or self._hard_state_changed()
        )

    def ready(self) -> Ready:
        """Take everything that is due (see the module docstring for the order)."""
        if self._read_round_wanted:
            self._broadcast_read_round()
        ready = Ready(self.role, self.leader, self.term)
        if self._hard_state_changed():
            ready.hard_state = self._saved_hard_state = self._hard_state()
        if self._snapshot_out is not None:
            ready.snapshot, self._snapshot_out = self._snapshot_out, None
        if self._unsaved_from <= self.log.last_index:
            ready.entries = self.log.slice(self._unsaved_from, self.log.last_index + 1)
        self._unsaved_from = self.log.last_index + 1
        if self.commit > self.applied_out:
            ready.committed = self.log.slice(self.applied_out + 1, self.commit + 1)
            self.applied_out = self.commit
        ready.messages, self._messages = self._messages, []
        ready.messages_after_persist, self._messages_after = self._messages_after, []
        ready.read_states, self._read_states = self._read_states, []
        ready.read_failures, self._read_failures = self._read_failures, []
        return ready

    # ------------------------------------------------------------------ queries

    @property
    def promotable(self) -> bool:
        return self.config.is_voter(self.id)

    @property
    def membership_stable(self) -> bool:
        """No configuration change is under way (the latest one is committed and final)."""
        if self.config.joint:
            return False
        return not self._config_history or self._config_history[-1][0] <= self.commit

    def config_at(self, index: int) -> Configuration:
        config = self.snapshot_meta.config
        for entry_index, entry_config in self._config_history:
            if entry_index > index:
                break
            config = entry_config
        return config

    def _hard_state(self) -> HardState:
        return HardState(self.term, self.vote, self.commit)

    def _hard_state_changed(self) -> bool:
        # Field by field: asked several times per message, and building a HardState to
        # compare would cost more than the answer.
        saved = self._saved_hard_state
        return self.commit != saved.commit or self.term != saved.term or self.vote != saved.vote

    # ------------------------------------------------------------------ validation

    def _validate(self, msg: Message) -> str | None:
        if not isinstance(msg, Message):
            return "not a message"
        if msg.dst != self.id:
            return "wrong destination"
        if msg.src == self.id:
            return "message from self"
        if not isinstance(msg.term, int) or msg.term < 0:
            return "bad term"
        if isinstance(msg, AppendEntries):
            if msg.prev_index < 0 or msg.prev_term < 0 or msg.commit < 0:
                return "negative index"
            if msg.prev_term > msg.term:
                return "prev_term beyond message term"
            expected, last_term = msg.prev_index + 1, msg.prev_term
            for entry in msg.entries:
                if entry.index != expected or entry.term < last_term or entry.term > msg.term:
                    return "entries not contiguous or terms out of order"
                expected, last_term = expected + 1, entry.term
        elif isinstance(msg, AppendResponse | Heartbeat | HeartbeatResponse):
            if min(getattr(msg, "index", 0), getattr(msg, "commit", 0)) < 0:
                return "negative index"
        elif isinstance(msg, InstallSnapshot):
            if msg.meta.index <= 0 or msg.meta.term <= 0 or msg.meta.term > msg.term:
                return "impossible snapshot"
            if not msg.meta.config.all_voters:
                return "snapshot without voters"
        return None

    # ------------------------------------------------------------------ stepping

    def _step(self, msg: Message) -> str | None:
        if msg.term > self.term:
            if isinstance(msg, RequestVote):
                in_lease = (
                    self.options.check_quorum
                    and self.leader is not None
                    and self.election_elapsed < self.options.election_ticks
                )
                if in_lease and not msg.transfer:
                    return "vote request ignored: current leader is alive"
            keep_term = (isinstance(msg, RequestVote) and msg.pre_vote) or (
                isinstance(msg, VoteResponse) and msg.pre_vote and msg.granted
            )
            if not keep_term:
                leader_msg = isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot)
                self._become_follower(msg.term, msg.src if leader_msg else None)
        elif msg.term < self.term:
            return self._step_stale(msg)

        if isinstance(msg, RequestVote):
            return self._handle_vote_request(msg)
        if self.role is Role.LEADER:
            return self._step_leader(msg)
        if self.role in (Role.CANDIDATE, Role.PRE_CANDIDATE):
            return self._step_candidate(msg)
        return self._step_follower(msg)

    def _step_stale(self, msg: Message) -> str:
        opts = self.options
        if isinstance(msg, AppendEntries | Heartbeat) and (opts.check_quorum or opts.pre_vote):
            # A leader cut off for a while learns our term and steps down; without this it
            # could keep followers from campaigning (they would reject its term forever).
            self._messages.append(AppendResponse(self.term, self.id, msg.src, False, 0))
        elif isinstance(msg, RequestVote) and msg.pre_vote:
            self._messages.append(VoteResponse(self.term, self.id, msg.src, False, pre_vote=True))
        return "stale term"

    def _handle_vote_request(self, msg: RequestVote) -> str | None:
        free = (
            self.vote == msg.src
            or (self.vote is None and self.leader is None)
            or (msg.pre_vote and msg.term > self.term)
        )
        granted = free and self._log_allows_vote(msg.last_index, msg.last_term)
        term = msg.term if granted else self.term
        response = VoteResponse(term, self.id, msg.src, granted, pre_vote=msg.pre_vote)
        if granted and not msg.pre_vote:
            self.vote = msg.src
            self.election_elapsed = 0
            self._messages_after.append(response)  # the vote must be durable first
            return None
        self._messages.append(response)
        return None if granted else "vote not granted"

    def _log_allows_vote(self, last_index: int, last_term: int) -> bool:
        return self.log.is_up_to_date(last_index, last_term)

    def _step_follower(self, msg: Message) -> str | None:
        if isinstance(msg, AppendEntries):
            self._heard_from_leader(msg.src)
            return self._handle_append(msg)
        elif isinstance(msg, Heartbeat):
            self._heard_from_leader(msg.src)
            self._handle_heartbeat(msg)
        elif isinstance(msg, InstallSnapshot):
            self._heard_from_leader(msg.src)
            self._handle_snapshot(msg)
        elif isinstance(msg, TimeoutNow):
            if not self.promotable:
                return "timeout-now ignored: not a voter"
            self._start_election(pre_vote=False, transfer=True)
        elif isinstance(msg, ReadIndexResponse):
            if msg.ok:
                self._read_states.append(ReadState(msg.context, msg.index))
            else:
                self._read_failures.append(ReadFailed(msg.context, "leadership lost"))
        elif isinstance(msg, ReadIndexRequest):
            self._messages.append(
                ReadIndexResponse(self.term, self.id, msg.src, msg.context, 0, ok=False)
            )
            return "read forwarded to a non-leader"
        else:
            return f"{type(msg).__name__} ignored by follower"
        return None

    def _step_candidate(self, msg: Message) -> str | None:
        if isinstance(msg, AppendEntries | Heartbeat | InstallSnapshot):
            self._become_follower(msg.term, msg.src)
            return self._step_follower(msg)
        if isinstance(msg, VoteResponse):
            if msg.pre_vote != (self.role is Role.PRE_CANDIDATE):
                return "vote response for another kind of election"
            self.votes.setdefault(msg.src, msg.granted)
            result = vote_result(self.config, self.votes)
            if result is VoteResult.WON:
                if self.role is Role.PRE_CANDIDATE:
                    self._start_election(pre_vote=False)
                else:
                    self._become_leader()
            elif result is VoteResult.LOST:
                self._become_follower(self.term, None)
            return None
        if isinstance(msg, ReadIndexRequest | ReadIndexResponse):
            return self._step_follower(msg)
        return f"{type(msg).__name__} ignored by candidate"

    def _step_leader(self, msg: Message) -> str | None:
        if isinstance(msg, ReadIndexRequest):
            self._leader_read(msg.context, msg.src)
            return None
        progress = self.progress.get(msg.src)
        if progress is None:
            return "message from a peer outside the configuration"
        if isinstance(msg, AppendResponse):
            if msg.index > self.log.last_index:
                return "response index beyond our log"
            progress.recent_active = True
            self._handle_append_response(msg, progress)
        elif isinstance(msg, HeartbeatResponse):
            progress.recent_active = True
            progress.probe_sent = False
            if progress.state is ReplicationState.REPLICATE and progress.paused():
                # An append in the window may have been lost; free a slot so the next one
                # goes out, and the follower's rejection of it restarts probing.
                progress.inflight.popleft()
            if msg.round > progress.read_ack:
                progress.read_ack = msg.round
                self._release_confirmed_reads()
            if progress.match < self.log.last_index:
                # Even with nothing new to send, an empty append exposes a lost one: the
                # follower rejects it and probing starts from what it really has.
                self._send_appends(msg.src, allow_empty=True)
        else:
            return f"{type(msg).__name__} ignored by leader"
        return None

    # ------------------------------------------------------------------ follower side

    def _heard_from_leader(self, leader: str) -> None:
        self.election_elapsed = 0
        self.leader = leader

    def _handle_append(self, msg: AppendEntries) -> str | None:
        if msg.prev_index < self.commit:
            # Our prefix up to commit is settled and, by leader completeness, equal to the
            # leader's: re-anchor the message there and keep only what lies beyond it.
            entries = tuple(e for e in msg.entries if e.index > self.commit)
            if not entries:
                # After the persist like every acknowledgement: entries up to our commit may
                # still be on their way to our disk, and an ack promises they are there.
                self._messages_after.append(
                    AppendResponse(self.term, self.id, msg.src, True, self.commit)
                )
                return None
            commit_term = self.log.term(self.commit)
            assert commit_term is not None  # snap_index <= commit <= last_index
            msg = replace(msg, prev_index=self.commit, prev_term=commit_term, entries=entries)
        if self.log.term(msg.prev_index) != msg.prev_term:
            hint = self.log.find_conflict_by_term(
                min(msg.prev_index, self.log.last_index), msg.prev_term
            )
            self._messages.append(
                AppendResponse(
                    self.term,
                    self.id,
                    msg.src,
                    False,
                    msg.prev_index,
                    hint_index=hint,
                    hint_term=self.log.term(hint) or 0,
                )
            )
            return None
        last_new = msg.prev_index + len(msg.entries)
        reason = self._append_from_leader(msg.entries)
        if reason is not None:
            return reason
        new_commit = min(msg.commit, last_new)
        if new_commit > self.commit:
            self.commit = new_commit
        self._messages_after.append(AppendResponse(self.term, self.id, msg.src, True, last_new))
        return None

    def _append_from_leader(self, entries: tuple[Entry, ...]) -> str | None:
        for position, entry in enumerate(entries):
            existing = self.log.term(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                if entry.index <= self.commit:
                    # Only a leader that broke Raft's rules could ask this; refuse it.
                    return "append would overwrite a committed entry"
                self._truncate_from(entry.index)
            new = list(entries[position:])
            self.log.append(new)
            self._on_appended(new)
            return None
        return None

    def _handle_heartbeat(self, msg: Heartbeat) -> None:
        # The leader sends min(commit, our match), so this never passes our log's end.
        commit = min(msg.commit, self.log.last_index)
        if commit > self.commit:
            self.commit = commit
        self._messages.append(HeartbeatResponse(self.term, self.id, msg.src, msg.round))

    def _handle_snapshot(self, msg: InstallSnapshot) -> None:
        meta = msg.meta
        if meta.index <= self.commit:
            self._messages_after.append(
                AppendResponse(self.term, self.id, msg.src, True, self.commit)
            )
            return
        if self.log.term(meta.index) == meta.term:
            # We already hold that prefix: just learn it is committed.
            self.commit = meta.index
            self._messages_after.append(
                AppendResponse(self.term, self.id, msg.src, True, meta.index)
            )
            return
        self.log.restore(meta)
        self.snapshot_meta = meta
        self._config_history = []
        self.config = meta.config
        self.commit = self.applied_out = self.stable_index = meta.index
        self._unsaved_from = meta.index + 1
        self._snapshot_out = meta
        self._messages_after.append(AppendResponse(self.term, self.id, msg.src, True, meta.index))

    # ------------------------------------------------------------------ configuration

    def _on_appended(self, entries: list[Entry]) -> None:
        """A configuration takes effect as soon as its entry is in the log."""
        self._track_configs(entries)

    def _track_configs(self, entries: list[Entry]) -> None:
        for entry in entries:
            if entry.kind is EntryKind.CONFIG:
                self._config_history.append((entry.index, entry.data))
                self._set_config(entry.data)

    def _truncate_from(self, index: int) -> None:
        self.log.truncate_from(index)
        self._unsaved_from = min(self._unsaved_from, index)
        self.stable_index = min(self.stable_index, index - 1)
        if self._config_history and self._config_history[-1][0] >= index:
            self._config_history = [(i, c) for i, c in self._config_history if i < index]
            latest = self._config_history[-1][1] if self._config_history else None
            self._set_config(latest or self.snapshot_meta.config)

    def _set_config(self, config: Configuration, on_election: bool = False) -> None:
        previous, self.config = self.config, config
        if self.role is not Role.LEADER:
            return
        # Peers that a pending change removes keep getting the log until it commits, so
        # they learn they were removed (and can stop) instead of waiting forever.
        committed = self.config_at(self.commit).members
        members = (config.members | committed) - {self.id}
        for peer in list(self.progress):
            # A retired peer added back before we stopped tracking it is a new member (its
            # directory may be new): what it matched before says nothing about it now.
            if peer not in members or peer not in previous.members | committed:
                del self.progress[peer]
        if self.transfer_target not in members:
            self.transfer_target = None
        # A member added while we lead starts probing at our last entry (the configuration
        # that added it), so it hears from us at once; on election everyone starts after it.
        first_probe = self.log.last_index + (1 if on_election else 0)
        for peer in sorted(members):  # sorted: runs must not depend on hash seeds
            if peer not in self.progress:
                progress = Progress(max(1, first_probe), self.options.max_inflight)
                progress.recent_active = True  # give a new member one timeout of grace
                self.progress[peer] = progress

    def _on_commit_advanced(self) -> None:
        if self.role is not Role.LEADER:
            return
        index = self._config_history[-1][0] if self._config_history else self.log.snap_index
        if index > self.commit:
            return
        config = self.config
        if config.joint:
            final = Configuration(voters=config.voters, learners=config.learners)
            self._leader_append([(EntryKind.CONFIG, final)])
            return
        if any(peer not in config.members for peer in self.progress):
            # The peers this configuration removed learn that it committed only from us:
            # tell them now; they are dropped once they acknowledge it (or at the next
            # election timeout).
            for peer in self.progress:
                self._send_appends(peer, allow_empty=True)
        if not config.is_voter(self.id):
            # Removed ourselves: hand over to the best-placed voter.
            best = max(
                (p for p in self.progress if config.is_voter(p)),
                key=lambda p: self.progress[p].match,
                default=None,
            )
            if best is not None and self.progress[best].match == self.log.last_index:
                self._send_timeout_now(best)
            self._become_follower(self.term, None)

    # ------------------------------------------------------------------ elections

    def _reset_election_timer(self) -> None:
        self.election_elapsed = 0
        ticks = self.options.election_ticks
        self.randomized_timeout = self.rng.randint(ticks, 2 * ticks - 1)

    def _start_election(self, pre_vote: bool, transfer: bool = False) -> None:
        if pre_vote:
            self._reset_common(Role.PRE_CANDIDATE, self.term)
            term = self.term + 1
        else:
            self._reset_common(Role.CANDIDATE, self.term + 1)
            self.vote = self.id
            term = self.term
        self.votes = {self.id: True}
        if vote_result(self.config, self.votes) is VoteResult.WON:
            if pre_vote:
                self._start_election(pre_vote=False, transfer=transfer)
            else:
                self._become_leader()
            return
        out = self._messages if pre_vote else self._messages_after  # a vote needs term+vote durable
        for peer in sorted(self.config.all_voters - {self.id}):
            out.append(
                RequestVote(
                    term,
                    self.id,
                    peer,
                    self.log.last_index,
                    self.log.last_term,
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def _reset_common(self, role: Role, term: int) -> None:
        if term != self.term:
            self.term = term
            self.vote = None
        if self.role is Role.LEADER and role is not Role.LEADER:
            self._fail_pending_reads("leadership lost")
        self.role = role
        self.leader = None
        self.votes = {}
        self.progress = {}
        self.transfer_target = None
        self.heartbeat_elapsed = 0
        self._reset_election_timer()

    def _become_follower(self, term: int, leader: str | None) -> None:
        self._reset_common(Role.FOLLOWER, term)
        self.leader = leader

    def _become_leader(self) -> None:
        self._reset_common(Role.LEADER, self.term)
        self.leader = self.id
        self._set_config(self.config, on_election=True)
        for progress in self.progress.values():
            progress.recent_active = True
        self._leader_append([(EntryKind.NOOP, b"")])

    # ------------------------------------------------------------------ leader side

    def _tick_leader(self) -> None:
        self.heartbeat_elapsed += 1
        self.election_elapsed += 1
        if self.election_elapsed >= self.options.election_ticks:
            self.election_elapsed = 0
            if self.options.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
            self._drop_retired(lambda progress: not progress.recent_active)
            for progress in self.progress.values():
                progress.recent_active = False
            if self.transfer_target is not None:
                self.transfer_target = None  # the target did not take over in time
        if self.heartbeat_elapsed >= self.options.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._read_round)

    def _quorum_active(self) -> bool:
        active = {peer: int(p.recent_active) for peer, p in self.progress.items()}
        active[self.id] = 1
        return joint_value(self.config, active) >= 1

    def _leader_append(self, items: list[tuple[EntryKind, Any]]) -> None:
        first = self.log.last_index + 1
        entries = [
            Entry(first + offset, self.term, kind, data)
            for offset, (kind, data) in enumerate(items)
        ]
        self.log.append(entries)
        self._on_appended(entries)
        for peer in self.progress:
            self._send_appends(peer)
        self._maybe_commit()  # a single-voter cluster may already have a quorum

    def _send_appends(self, peer: str, allow_empty: bool = False) -> None:
        """Send what ``peer`` lacks, pipelining up to the in-flight window."""
        progress = self.progress[peer]
        sent_any = False
        while not progress.paused():
            if not self._send_append(peer, progress, allow_empty and not sent_any):
                break
            sent_any = True
            if progress.state is not ReplicationState.REPLICATE:
                break

    def _send_append(self, peer: str, progress: Progress, allow_empty: bool) -> bool:
        if progress.next == self.log.last_index + 1 and not allow_empty:
            return False  # the usual answer after an acknowledgement: nothing new to send
        prev_index = progress.next - 1
        prev_term = self.log.term(prev_index)
        if prev_term is None:
            # What the follower needs was compacted away: it gets the snapshot instead.
            meta = self.snapshot_meta
            progress.become_snapshot(meta.index)
            self._messages.append(InstallSnapshot(self.term, self.id, peer, meta))
            return True
        entries = self.log.slice(
            progress.next,
            self.log.last_index + 1,
            self.options.max_entries_per_message,
            self.options.max_bytes_per_message,
        )
        if not entries and not allow_empty:
            return False
        last_sent = entries[-1].index if entries else prev_index
        progress.commit_sent = max(progress.commit_sent, min(self.commit, last_sent))
        self._messages.append(
            AppendEntries(
                self.term, self.id, peer, prev_index, prev_term, tuple(entries), self.commit
            )
        )
        progress.sent(entries[-1].index if entries else prev_index, len(entries))
        return True

    def _handle_append_response(self, msg: AppendResponse, progress: Progress) -> None:
        if not msg.success:
            hint = msg.hint_index
            if msg.hint_term > 0:
                hint = self.log.find_conflict_by_term(msg.hint_index, msg.hint_term)
            if progress.reject(msg.index, hint):
                self._send_appends(msg.src)
            return
        moved = progress.acknowledge(msg.index)
        if progress.state is ReplicationState.PROBE or (
            progress.state is ReplicationState.SNAPSHOT
            and progress.match >= progress.pending_snapshot
        ):
            progress.become_replicate()  # the match point is known: start pipelining
        if not (moved and self._maybe_commit()):
            self._send_appends(msg.src)  # (a commit broadcast already did this)
        self._drop_retired(lambda p: p is progress)
        if (
            msg.src == self.transfer_target
            and not self._timeout_now_sent
            and progress.match == self.log.last_index
        ):
            self._send_timeout_now(msg.src)

    def _drop_retired(self, candidate: Callable[[Progress], bool]) -> None:
        """Stop replicating to peers that a committed configuration removed, once they know
        it committed (or have stopped answering)."""
        if not self.membership_stable:
            return
        index = self._config_history[-1][0] if self._config_history else self.log.snap_index
        for peer in [p for p in self.progress if p not in self.config.members]:
            progress = self.progress[peer]
            informed = progress.match >= index and progress.commit_sent >= index
            if candidate(progress) and (informed or not progress.recent_active):
                del self.progress[peer]

    def _maybe_commit(self) -> bool:
        values = {peer: p.match for peer, p in self.progress.items()}
        values[self.id] = self.stable_index  # our own entries count only once durable
        index = joint_value(self.config, values)
        if index <= self.commit or not self._may_commit_at(index):
            return False
        self.commit = index
        self._on_commit_advanced()
        if self.role is Role.LEADER:
            self._admit_reads_waiting_for_commit()
            # Followers learn the new commit index with the next append or heartbeat: an
            # empty append per commit would double the messages of a busy cluster.
            for peer in self.progress:
                self._send_appends(peer)
        return True

    def _may_commit_at(self, index: int) -> bool:
        """Raft's commitment rule: only an entry of the leader's own term commits by counting."""
        return self.log.term(index) == self.term

    def _broadcast_heartbeat(self, round_: int) -> None:
        for peer, progress in self.progress.items():
            commit = min(progress.match, self.commit)
            progress.commit_sent = max(progress.commit_sent, commit)
            self._messages.append(Heartbeat(self.term, self.id, peer, commit, round_))

    def _send_timeout_now(self, peer: str) -> None:
        self._timeout_now_sent = True
        self._messages.append(TimeoutNow(self.term, self.id, peer))

    # ------------------------------------------------------------------ linearizable reads

    def _leader_read(self, context: Any, requester: str | None) -> None:
        if self.log.term(self.commit) != self.term:
            # Until an entry of this term commits we may not know the latest commit index.
            self._reads_before_commit.append((context, requester))
            return
        index = self.commit
        if joint_value(self.config, {self.id: 1}) >= 1:
            self._answer_read(context, requester, index)  # we alone are a quorum
            return
        self._pending_reads.append(_PendingRead(self._read_round + 1, context, index, requester))
        self._read_round_wanted = True

    def _admit_reads_waiting_for_commit(self) -> None:
        if self._reads_before_commit and self.log.term(self.commit) == self.term:
            waiting, self._reads_before_commit = self._reads_before_commit, []
            for context, requester in waiting:
                self._leader_read(context, requester)

    def _broadcast_read_round(self) -> None:
        """One heartbeat round confirms every read that arrived before it was sent."""
        self._read_round_wanted = False
        if self.role is not Role.LEADER:
            return
        self._read_round += 1
        self._broadcast_heartbeat(self._read_round)

    def _release_confirmed_reads(self) -> None:
        acks = {peer: p.read_ack for peer, p in self.progress.items()}
        acks[self.id] = self._read_round
        confirmed = joint_value(self.config, acks)
        while self._pending_reads and self._pending_reads[0].round <= confirmed:
            read = self._pending_reads.popleft()
            self._answer_read(read.context, read.requester, read.index)

    def _answer_read(self, context: Any, requester: str | None, index: int) -> None:
        if requester is None:
            self._read_states.append(ReadState(context, index))
        else:
            self._messages.append(ReadIndexResponse(self.term, self.id, requester, context, index))

    def _fail_pending_reads(self, reason: str) -> None:
        pending = [(r.context, r.requester) for r in self._pending_reads]
        pending += self._reads_before_commit
        self._pending_reads.clear()
        self._reads_before_commit = []
        for context, requester in pending:
            if requester is None:
                self._read_failures.append(ReadFailed(context, reason))
            else:
                self._messages.append(
                    ReadIndexResponse(self.term, self.id, requester, context, 0, ok=False)
                )

"""Which cluster a peer belongs to: founding once, and refusing what is not ours.

The rule (docs/configuration.md, "what `peers` means"):

* A directory holding no state founds the cluster if the settings list this peer among
  ``peers``: its first log entry (index 1, term 1, committed) is the configuration of those
  voters, written durably before the peer answers anything. Founders given the same list
  write the same entry, so their logs agree from the start. It founds only once every other
  founder has answered (``await_founders``), none knowing it from an earlier directory, and
  it records the instance each answered with.
* A directory holding no state whose peer is not among ``peers`` (or with no ``peers``)
  joins: it waits, empty, until a leader adds it.
* A directory holding state never founds again: its configuration comes from its log and
  snapshots alone, and ``peers`` is ignored (a differing value is logged once).

``create`` founds its first peer alone through the ``bootstrap`` op (``IdentityGuard.founded``).

``IdentityGuard`` then keeps the founding honest on the wire: every peer frame carries
(cluster uuid, instance) and a frame of another founding, or from a member whose data
directory was replaced since we first heard from it, is refused and counted.

Why one module: the founding rule, the probes that gather its inputs and the guard that
enforces it afterwards must agree on one definition of a founding (founding_uuid), and are
read together.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

from zraft.core import (
    AppendEntries,
    AppendResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    SnapshotMeta,
    VoteResponse,
)
from zraft.storage import HardStateStorage, LogStorage
from zraft.storage.identity import DirectoryIdentity, IdentityFile
from zraft.transport import (
    ClientChannel,
    ClientReply,
    ClientRequest,
    CurveSettings,
    TransportError,
    ZmqTransport,
)

log = logging.getLogger(__name__)

# What only a leader sends: a joiner takes its founding from the first of these.
_LEADER_MESSAGES = frozenset({AppendEntries, Heartbeat, InstallSnapshot})
# What a peer promises: a vote, or that it holds entries. Only these are refused from a
# member whose directory changed.
_PROMISES = frozenset({VoteResponse, AppendResponse, HeartbeatResponse})

# How long a founding peer waits for each listed peer's answer in one round of probes, the
# pause between rounds, and how often it repeats whom it is still waiting for.
PROBE_TIMEOUT_S = 1.0
_PROBE_ATTEMPT_S = 0.25
_PROBE_PAUSE_S = 0.2
_WAIT_LOG_INTERVAL_S = 30.0

_REFUSAL_LOG_INTERVAL_S = 10.0
REFUSED_OTHER_FOUNDING = "other-founding"
REFUSED_REPLACED_PEER = "replaced-peer"


class DirectoryRefused(Exception):
    """The data directory is not the one these settings may serve (one line, for operators)."""


def founding_uuid(
    cluster_id: str, voters: Iterable[str], instances: Mapping[str, str] | None = None
) -> str:
    """A founding's id. Without ``instances``: the founding list's id, the same for every
    founder given the same cluster id and voters (how founders check they agree). With the
    founders' directory instances: the cluster uuid itself, different for every founding,
    even of the same list (a lone founder wiped and started again founds another)."""
    parts = [cluster_id, *sorted(set(voters))]
    parts += [f"{peer}={instance}" for peer, instance in sorted((instances or {}).items())]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def founding_entry(voters: Iterable[str]) -> Entry:
    return Entry(1, 1, EntryKind.CONFIG, Configuration.of(voters))


def has_state(raft_log: LogStorage, hard_state: HardState, has_snapshot: bool) -> bool:
    return bool(raft_log.last_index or hard_state.term or hard_state.vote or has_snapshot)


def open_identity(
    identity_file: IdentityFile,
    *,
    cluster_id: str,
    peer_id: str,
    state_present: bool,
) -> DirectoryIdentity | None:
    """The directory's identity, checked against the settings; None for a directory that
    holds nothing yet. Raises ``DirectoryRefused`` for another cluster's or peer's directory,
    or for state without an identity."""
    identity = identity_file.load()
    where = identity_file.directory
    if identity is None:
        if state_present:
            raise DirectoryRefused(
                f"{where} holds Raft state but no {identity_file.path.rsplit('/', 1)[-1]}: "
                "it was not made by this zraft, or that file was deleted; refusing to guess "
                "which cluster it belongs to"
            )
        return None
    if identity.cluster_id != cluster_id:
        raise DirectoryRefused(
            f"{where} belongs to cluster {identity.cluster_id!r}, not {cluster_id!r} "
            "(the --cluster-id given)"
        )
    if identity.peer_id != peer_id:
        raise DirectoryRefused(
            f"{where} belongs to peer {identity.peer_id}, not {peer_id} (the --peer-id given)"
        )
    # Known members but no state: the state was deleted (a founding still pending knows the
    # other founders already, and writes its entry next).
    pending = identity.founding_pending
    if not state_present and not pending and (identity.founding or identity.known):
        raise DirectoryRefused(
            f"{where} belongs to peer {peer_id} of cluster {cluster_id!r}, but its Raft state "
            "is gone (deleted?): its votes and log are lost. Remove the peer from the "
            "cluster, empty the directory, start it without --peers and add it back"
        )
    return identity


def check_snapshots(
    where: str,
    identity: DirectoryIdentity,
    log_first_index: int,
    latest: tuple[SnapshotMeta, dict[str, Any]] | None,
) -> None:
    """Raises ``DirectoryRefused`` unless the snapshots in ``where`` (the snapshot_dir) can
    be this directory's: of its cluster and founding, and reaching the start of its log
    (a compacted log without its snapshot would start the state machine from nothing)."""
    if latest is None:
        if log_first_index > 1:
            raise DirectoryRefused(
                f"{where} holds no snapshot, but the log starts at index {log_first_index} "
                "(compacted behind one): is snapshot_dir the one this peer ran with?"
            )
        return
    meta, extra = latest
    cluster, founding = extra.get("cluster_id"), extra.get("founding")
    if isinstance(cluster, str) and cluster and cluster != identity.cluster_id:
        raise DirectoryRefused(
            f"{where} holds a snapshot of cluster {cluster!r}, not {identity.cluster_id!r}: "
            "is snapshot_dir another cluster's?"
        )
    ours = identity.cluster_uuid
    if isinstance(founding, str) and founding and ours and founding != ours:
        raise DirectoryRefused(
            f"{where} holds a snapshot of another founding of cluster {identity.cluster_id!r} "
            f"({founding[:8]}, this directory's {ours[:8]}): is snapshot_dir another "
            "cluster's, or one founded before?"
        )
    if meta.index + 1 < log_first_index:
        raise DirectoryRefused(
            f"{where}'s newest snapshot (index {meta.index}) is older than the start of the "
            f"log (index {log_first_index}): a snapshot_dir restored from an older backup?"
        )


def new_identity(cluster_id: str, peer_id: str, founding: Iterable[str] = ()) -> DirectoryIdentity:
    voters = tuple(sorted(set(founding)))
    return DirectoryIdentity(
        cluster_id=cluster_id,
        peer_id=peer_id,
        instance=uuid.uuid4().hex,
        cluster_uuid=founding_uuid(cluster_id, voters) if voters else "",
        founding=voters,
        founding_pending=bool(voters),
    )


def write_founding(
    raft_log: LogStorage, hard_state_file: HardStateStorage, voters: Iterable[str]
) -> HardState:
    """The founding entry and its hard state (term 1, committed), durably. The identity
    records the founding as pending first: a crash before the entry is durable leaves no
    state, and the next start writes it again; a crash after it leaves the entry (term 0
    in the hard state until the first election, which is as safe)."""
    entry = founding_entry(voters)
    raft_log.append([entry])  # durable when it returns
    hard_state = HardState(term=1, vote=None, commit=1)
    hard_state_file.save(hard_state)
    return hard_state


@dataclass(frozen=True)
class FoundingVerdict:
    """What the answers of the other founders say: refuse (why), wait (for whom), or found
    ``cluster_uuid``, knowing the other members' directories (``instances``)."""

    refused: str | None = None
    waiting_for: tuple[str, ...] = ()
    instances: Mapping[str, str] = field(default_factory=dict)
    cluster_uuid: str = ""

    @property
    def found(self) -> bool:
        return self.refused is None and not self.waiting_for


def _instances(value: object) -> dict[str, str]:
    if not isinstance(value, dict):
        return {}
    return {p: i for p, i in value.items() if isinstance(p, str) and isinstance(i, str) and i}


def judge_founding(
    cluster_id: str,
    peer_id: str,
    instance: str,
    voters: Iterable[str],
    answers: Mapping[str, dict[str, Any] | None],
) -> FoundingVerdict:
    """Whether a pristine peer may found, from every other founder's answer (None: silent).

    Founding waits until every other founder has answered, once: only a peer that ran with
    us can say that this empty directory is a wiped one, and any of them may be the only one
    that does (the others down, or never started while we ran). Each answer records the
    other's instance, so that from the founding on every founder knows every other's
    directory, and a founder wiped later is recognised by all of them. The founding's uuid
    covers the founders' directories as well as the list, so a founding made again (a lone
    founder wiped and restarted) is another founding, refused by the members of the first.

    A founder that founded already answers with the directories it knows. If it knows this
    one by its current instance, it heard every founder (us included) at its founding: we
    take its founding and what it knows, not what the others answer now (one of them may
    have been wiped since). If it does not know this directory at all, we were removed or
    never were a founder of it: refused.
    """
    voters = tuple(sorted(set(voters)))
    listed = founding_uuid(cluster_id, voters)
    waiting: list[str] = []
    instances: dict[str, str] = {}
    founded: dict[str, dict[str, Any]] = {}
    for peer, answer in sorted(answers.items()):
        if answer is None or "unsure" in answer:
            waiting.append(peer)
            continue
        known = answer.get("known")
        if isinstance(known, str) and known and known != instance:
            return FoundingVerdict(
                refused=f"this data directory is empty, but peer {peer} knows {peer_id} from "
                f"an earlier one (instance {known[:8]}): it was wiped or replaced and its "
                f"votes and log are lost. Remove {peer_id} from the cluster, then start it "
                "without --peers and add it back"
            )
        uuid = answer.get("cluster_uuid")
        their_list = answer.get("founding") or answer.get("would_found")
        if isinstance(their_list, str) and their_list and their_list != listed:
            what = "already runs" if uuid else "would found"
            return FoundingVerdict(
                refused=f"peer {peer} {what} a founding of cluster {cluster_id!r} with other "
                f"peers than {list(voters)}: give every founder the same --peers, or "
                "to join a running cluster start without --peers and use `zraft members add`"
            )
        if isinstance(uuid, str) and uuid:
            founded[peer] = answer
            continue
        theirs = answer.get("instance")
        if isinstance(theirs, str) and theirs:
            instances[peer] = theirs
    if founded:
        uuids = {answer["cluster_uuid"] for answer in founded.values()}
        knowing = [p for p, answer in founded.items() if answer.get("known") == instance]
        if len(uuids) > 1:
            return FoundingVerdict(
                refused=f"peers {', '.join(founded)} run different foundings of cluster "
                f"{cluster_id!r}: one of them was founded again; not joining either"
            )
        if not knowing:
            return FoundingVerdict(
                refused=f"peer {next(iter(founded))} already runs this founding of cluster "
                f"{cluster_id!r} without this data directory ({peer_id} was removed, or "
                "never answered as a founder): start it without --peers and add it with "
                "`zraft members add`"
            )
        witness = founded[knowing[0]]
        vouched = _instances(witness.get("members"))
        vouched.pop(peer_id, None)
        if isinstance(witness.get("instance"), str):
            vouched[knowing[0]] = witness["instance"]
        return FoundingVerdict(cluster_uuid=witness["cluster_uuid"], instances=vouched)
    if waiting:
        return FoundingVerdict(waiting_for=tuple(waiting))
    uuid = founding_uuid(cluster_id, voters, {**instances, peer_id: instance})
    return FoundingVerdict(cluster_uuid=uuid, instances=instances)


def ask_founders(
    cluster_id: str,
    peer_id: str,
    instance: str,
    voters: Iterable[str],
    founding: str,
    curve: CurveSettings | None = None,
    routes: Mapping[str, str] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """Every other listed peer's ``identity`` answer (None if it is not up). A peer that
    answers without saying (shedding load, say) is asked again until the probe's time is
    up, then reported as unsure."""
    others = sorted(set(voters) - {peer_id})
    question = {"peer": peer_id, "instance": instance, "founding": founding}

    def ask(peer: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        error = None
        probe = f"founding-probe-{peer_id}"
        with contextlib.ExitStack() as stack:
            # At its route (a proxy, a NAT) and, in turn, at its id: a route may carry only
            # the peers' own traffic.
            channels = [stack.enter_context(ClientChannel(cluster_id, probe, curve))]
            if routes and peer in routes:
                channel = ClientChannel(cluster_id, probe, curve, routes=routes)
                channels.insert(0, stack.enter_context(channel))
            for attempt in itertools.count(1):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                channel = channels[attempt % len(channels)]
                request = ClientRequest(attempt, "identity", question)
                try:
                    # Short attempts: a request that reached a founder's responder just as it
                    # closed is lost; the next reaches the peer it became.
                    reply = channel.request(peer, request, min(left, _PROBE_ATTEMPT_S))
                except TransportError:
                    continue
                if reply.ok and isinstance(reply.result, dict):
                    return reply.result
                error = reply.error or "no answer"
                time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return None if error is None else {"unsure": error}

    if not others:
        return {}
    with ThreadPoolExecutor(max_workers=min(8, len(others))) as pool:
        return dict(zip(others, pool.map(ask, others), strict=True))


def await_founders(
    cluster_id: str,
    peer_id: str,
    instance: str,
    voters: Iterable[str],
    founding: str,
    *,
    listen_host: str,
    curve: CurveSettings | None = None,
    routes: Mapping[str, str] | None = None,
    stop: threading.Event | None = None,
) -> FoundingVerdict:
    """Wait until this pristine peer may found; the verdict to found by. ``founding`` is the
    founding list's id (``founding_uuid`` of the cluster id and voters).

    Meanwhile the peer answers the others' probes on its own address (``FounderResponder``),
    so founders started together find each other at once. Raises ``DirectoryRefused`` when
    founding here would be a mistake; waits (logging whom for) while a founder is silent.
    A signal ends the wait like any other start-up step.
    """
    voters = tuple(sorted(set(voters)))
    responder = FounderResponder(cluster_id, peer_id, instance, founding, listen_host, curve)
    waited_for: tuple[str, ...] = ()
    next_log = 0.0
    with responder:
        while True:
            answers = ask_founders(cluster_id, peer_id, instance, voters, founding, curve, routes)
            verdict = judge_founding(cluster_id, peer_id, instance, voters, answers)
            if verdict.refused is not None:
                raise DirectoryRefused(f"{peer_id} will not found a cluster: {verdict.refused}")
            if verdict.found:
                return verdict
            now = time.monotonic()
            if verdict.waiting_for != waited_for or now >= next_log:
                waited_for, next_log = verdict.waiting_for, now + _WAIT_LOG_INTERVAL_S
                log.warning(
                    "%s: waiting for %s to answer before founding cluster %r: every founder "
                    "must be up once, so that a wiped peer can never found again",
                    peer_id, ", ".join(verdict.waiting_for), cluster_id,
                )  # fmt: skip
            if stop is None:
                time.sleep(_PROBE_PAUSE_S)
            elif stop.wait(_PROBE_PAUSE_S):
                raise DirectoryRefused(f"{peer_id} stopped while waiting to found")


class FounderResponder:
    """Answers ``identity`` on a pristine founder's address while it waits to found: that it
    holds nothing yet, its instance, and the founding it would make. Everything else is
    turned away (no leader here yet); peer frames are dropped."""

    def __init__(
        self,
        cluster_id: str,
        peer_id: str,
        instance: str,
        founding: str,
        listen_host: str,
        curve: CurveSettings | None,
    ) -> None:
        self._answer = {
            "cluster_uuid": "",
            "instance": instance,
            "known": None,
            "would_found": founding,
        }
        self._transport = ZmqTransport(
            cluster_id=cluster_id,
            peer_id=peer_id,
            listen_host=listen_host,
            peers=(),
            on_peer_messages=lambda _messages: None,
            on_client_requests=self._answer_requests,
            curve=curve,
        )

    def _answer_requests(self, requests: list[tuple[bytes, ClientRequest]]) -> None:
        replies = []
        for routing_id, request in requests:
            if request.op == "identity":
                reply = ClientReply(request.request_id, True, dict(self._answer))
            else:
                reply = ClientReply(request.request_id, False, "founding", "not_leader", None)
            replies.append((routing_id, reply))
        self._transport.reply(replies)

    def __enter__(self) -> FounderResponder:
        self._transport.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._transport.close()


class IdentityGuard:
    """Admits peer frames of our founding from members we know, and records whom we know.

    Called by the transport for every peer frame (``admit``), by the peer actor when the
    configuration in force changes (``set_members``) and for the ``identity`` op, and by the
    state machine for every committed configuration and installed snapshot. The fast path
    (a member we know, our founding) takes no lock and writes nothing.

    A member's instance is forgotten, so that it may come back with a new directory, when a
    committed configuration applied after we recorded it leaves it out, and when a snapshot
    is installed past that point (the configurations it covers are not seen one by one).
    """

    def __init__(self, identity_file: IdentityFile, identity: DirectoryIdentity) -> None:
        self._file = identity_file
        self._identity = identity
        self._known: dict[str, str] = dict(identity.known)
        self._since: dict[str, int] = dict(identity.known_since)
        self._members: frozenset[str] = frozenset()
        self._lock = threading.Lock()
        self.origin: tuple[str, str] = (identity.cluster_uuid, identity.instance)
        self.applied_index: Callable[[], int] = lambda: 0
        self._last_logged: dict[str, float] = {}  # reason -> when it was last logged

    @property
    def identity(self) -> DirectoryIdentity:
        return self._identity

    @property
    def cluster_uuid(self) -> str:
        return self.origin[0]

    def known(self, peer: str) -> str | None:
        return self._known.get(peer)

    def admit(
        self, sender: str, origin: tuple[str, str], messages: Sequence[object] = ()
    ) -> str | None:
        """Why a frame from ``sender`` with ``origin`` is refused, or None to accept it.
        ``messages`` (the frame's) are looked at only on the slow path: a joiner learns its
        founding from a leader's message, not from anyone's hello."""
        their_uuid, their_instance = origin
        mine = self.origin[0]
        if their_uuid == mine and self._known.get(sender) == their_instance:
            return None  # the usual case
        with self._lock:
            mine = self.origin[0]
            if their_uuid and mine and their_uuid != mine:
                self._refuse(sender, REFUSED_OTHER_FOUNDING, their_uuid, mine)
                return REFUSED_OTHER_FOUNDING
            known = self._known.get(sender)
            if known is not None and known != their_instance:
                # What a wiped member lost is its promises: its votes and its acknowledgements
                # are refused. What it says as a candidate or leader is safe to hear (votes
                # go by the log, not by who asks), and a follower that missed its removal
                # and return must hear it to catch up and learn that it may forget it. A
                # hello promises nothing and records nothing here: refusing it would only
                # raise a false alarm about a member removed and added back while we were
                # away (a wiped peer that was not has no configuration, so no hellos).
                if not any(type(m) in _PROMISES for m in messages):
                    return None
                self._refuse(sender, REFUSED_REPLACED_PEER, their_instance, known)
                return REFUSED_REPLACED_PEER
            changed = False
            if their_uuid and not mine and any(type(m) in _LEADER_MESSAGES for m in messages):
                self.origin = (their_uuid, self.origin[1])
                log.info("%s: joined founding %s (via %s)", self._identity.peer_id,
                         their_uuid[:8], sender)  # fmt: skip
                changed = True
            # Only a frame of our own founding vouches for an instance (an unfounded peer's
            # claim would let anyone lock a member out).
            if known is None and sender in self._members and their_uuid and their_uuid == mine:
                self._known[sender] = their_instance
                self._since[sender] = self.applied_index()
                changed = True
            if changed:
                self._save()
        return None

    def set_members(self, members: frozenset[str]) -> None:
        """The configuration in force (appended, maybe not committed): whom we record."""
        self._members = members

    def committed(self, config: Configuration, index: int) -> None:
        """A committed configuration at ``index``: members it leaves out that we recorded
        before it are forgotten (a peer removed and added back with a new directory is a
        new member, not a replaced one)."""
        if self._identity.founding_pending:
            # The founding entry (a ``bootstrap``'s) is committed: from now on, state found
            # missing at start is state lost, not a founding to finish.
            with self._lock:
                self._identity = replace(self._identity, founding_pending=False)
                self._file.save(self._identity)
        if config.joint:
            return
        self._forget(lambda peer: peer not in config.members and self._since[peer] < index)

    def snapshot_installed(self, meta: SnapshotMeta) -> None:
        self._forget(lambda peer: self._since[peer] < meta.index)

    def _forget(self, stale: Callable[[str], bool]) -> None:
        with self._lock:
            gone = [peer for peer in self._known if stale(peer)]
            if gone:
                for peer in gone:
                    del self._known[peer], self._since[peer]
                self._save()

    def founded(self, voters: Iterable[str]) -> None:
        """This pristine joiner founds now (the ``bootstrap`` op): record it durably."""
        founding = tuple(sorted(set(voters)))
        with self._lock:
            instance = self.origin[1]
            uuid = founding_uuid(
                self._identity.cluster_id, founding, {self._identity.peer_id: instance}
            )
            self.origin = (uuid, instance)
            self._save(founding)

    def describe(self, asker: str | None) -> dict[str, Any]:
        """The answer to the ``identity`` op: our founding (its uuid and list), our
        directory, the one we know ``asker`` by, and every member directory we know."""
        with self._lock:  # called on the transport's thread, as admit is
            founders = self._identity.founding
            return {
                "cluster_uuid": self.origin[0],
                "instance": self.origin[1],
                "known": self._known.get(asker) if asker else None,
                "members": dict(self._known),
                "founding": founding_uuid(self._identity.cluster_id, founders) if founders else "",
            }

    def _save(self, founding: tuple[str, ...] | None = None) -> None:
        self._identity = replace(
            self._identity,
            cluster_uuid=self.origin[0],
            founding=self._identity.founding if founding is None else founding,
            founding_pending=self._identity.founding_pending or founding is not None,
            known=dict(self._known),
            known_since=dict(self._since),
        )
        self._file.save(self._identity)

    def _refuse(self, sender: str, reason: str, theirs: str, ours: str) -> None:
        # Once per reason every few seconds: frames with made-up origins cannot flood the log
        # (each refusal is counted by the transport anyway).
        now = time.monotonic()
        if now - self._last_logged.get(reason, -_REFUSAL_LOG_INTERVAL_S) < _REFUSAL_LOG_INTERVAL_S:
            return
        self._last_logged[reason] = now
        if reason == REFUSED_OTHER_FOUNDING:
            log.error(
                "%s: refusing peer %s: it belongs to another founding of this cluster "
                "(%s, ours %s): it was founded with other peers or founded twice",
                self._identity.peer_id, sender, theirs[:8], ours[:8],
            )  # fmt: skip
        else:
            log.error(
                "%s: refusing peer %s: its data directory was replaced (instance %s, we "
                "knew %s): a wiped member lost its votes and log. Remove it from the "
                "cluster, then add it back",
                self._identity.peer_id, sender, theirs[:8], ours[:8],
            )  # fmt: skip

"""Messages the actors of one peer tell each other. Frozen: pykka does not copy messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from zraft.core import Entry, HardState, InstallSnapshot, Message, SnapshotMeta
from zraft.transport import ClientRequest, SnapshotOffer, SnapshotReady

Identity = bytes  # the ZeroMQ routing id of a client connection


@dataclass(frozen=True, slots=True)
class Tick:
    pass


TICK = Tick()


@dataclass(frozen=True, slots=True)
class StatusRequest:
    pass


@dataclass(frozen=True, slots=True)
class ReportMetrics:
    """The peer actor, to the others once a tick: report your counters if they changed."""


REPORT_METRICS = ReportMetrics()


@dataclass(frozen=True, slots=True)
class MetricsReport:
    """An actor's counters as they are now (a copy: each actor owns its counters)."""

    source: str
    values: tuple[tuple[str, int | float], ...]


@dataclass(frozen=True, slots=True)
class PeerBatch:
    """Messages from other peers, decoded by the transport."""

    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class ClientBatch:
    requests: tuple[tuple[Identity, ClientRequest], ...]


@dataclass(frozen=True, slots=True)
class Persisted:
    index: int
    term: int


@dataclass(frozen=True, slots=True)
class SnapshotTaken:
    """A snapshot at ``index`` is durable: the log before it may go."""

    index: int


@dataclass(frozen=True, slots=True)
class SnapshotWritten:
    """A snapshot writer finished (``error`` None: the snapshot at ``index`` is durable)."""

    index: int
    error: str | None


@dataclass(frozen=True, slots=True)
class SnapshotStaged:
    """A snapshot received from the leader waits, verified, in ``path``."""

    index: int
    path: str


@dataclass(frozen=True, slots=True)
class SnapshotReport:
    peer: str
    success: bool


@dataclass(frozen=True, slots=True)
class AppliedUpTo:
    """The state machine actor, to the peer actor: how far the state machine has applied, and the
    long-lived sessions' timeouts (ms) when they changed (a copy nobody changes; None: as
    last sent)."""

    index: int
    term: int
    sessions: dict[str, int] | None = None


# ----------------------------------------------------------------------- to the log actor


@dataclass(frozen=True, slots=True)
class PersistItem:
    """The durable part of one Ready, and the messages that wait for it."""

    snapshot: SnapshotMeta | None
    staged_path: str | None
    entries: tuple[Entry, ...]
    hard_state: HardState | None
    messages: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class CompactLog:
    index: int
    term: int


# ----------------------------------------------------------------------- to the state machine actor


class PendingWrite(NamedTuple):
    """A client waiting for the write proposed at ``index`` in ``term``: the one waiter of
    a write, made when the write is proposed and held by the apply driver until its reply."""

    index: int
    term: int
    identity: Identity
    request_id: int


@dataclass(frozen=True, slots=True)
class ApplyBatch:
    """Committed entries to apply, with the waiters of the writes proposed since the last
    batch: a waiter rides with the next batch (one message, not two; a waiter always
    reaches the apply driver before its entry can)."""

    entries: tuple[Entry, ...]
    waiting: tuple[PendingWrite, ...] = ()


@dataclass(frozen=True, slots=True)
class AwaitWrites:
    """Waiters handed over without entries: those still with the peer driver when a
    snapshot from the leader is about to be installed."""

    writes: tuple[PendingWrite, ...]


@dataclass(frozen=True, slots=True)
class PendingRead:
    index: int  # serve once the state machine has applied this index (0: at once)
    identity: Identity
    request_id: int
    query: Any
    watch: tuple[str, int] | None = None  # arm (session id, watch id) on what it read


@dataclass(frozen=True, slots=True)
class ServeReads:
    reads: tuple[PendingRead, ...]


@dataclass(frozen=True, slots=True)
class WatchPoll:
    """A session asks for its fired watches (held until one fires or ``wait`` seconds)."""

    identity: Identity
    request_id: int
    session: str
    epoch: str
    after: int
    wait: float


@dataclass(frozen=True, slots=True)
class LeadershipLost:
    """This peer stopped leading: its watches fire ``change_leader``."""


LEADERSHIP_LOST = LeadershipLost()


@dataclass(frozen=True, slots=True)
class WatchTick:
    """Time passed: answer held watch polls whose deadline came."""


WATCH_TICK = WatchTick()


@dataclass(frozen=True, slots=True)
class ExpectSnapshot:
    """Entries after ``index`` wait until the snapshot at ``index`` is installed."""

    index: int


@dataclass(frozen=True, slots=True)
class InstallState:
    meta: SnapshotMeta
    path: str
    extra: dict[str, Any]


# ----------------------------------------------------------------------- to the snapshot actor


@dataclass(frozen=True, slots=True)
class SendSnapshot:
    message: InstallSnapshot


@dataclass(frozen=True, slots=True)
class DiscardStaged:
    """Received snapshots that will never be installed (superseded, or at or below the
    commit index): their directories go."""

    paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OfferReceived:
    offer: SnapshotOffer


@dataclass(frozen=True, slots=True)
class ReadyReceived:
    ready: SnapshotReady


@dataclass(frozen=True, slots=True)
class TransferFinished:
    peer: str
    index: int
    success: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ReceiveFinished:
    index: int
    path: str | None
    reason: str = ""

"""One peer, assembled: storage, backend, the four actors and the transport.

``PeerRuntime(settings).start()`` recovers from disk (latest snapshot, then the log after
it, then the hard state) and joins the cluster; ``stop()`` takes everything down. If any
actor fails, the whole peer stops (``failed`` is set) rather than limp on half-alive; the
process supervisor restarts it from disk. If ``start()`` fails, it stops whatever it had
started and raises ``StartupError``, whose message is one line saying what failed.

Why one module: start-up is one ordered sequence with an undo for every step, and stop is
its mirror; apart, the two would drift.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import pykka

from zraft.backends.base import Backend, BackendLoadError, load_backend
from zraft.core import Configuration
from zraft.settings import Settings
from zraft.storage import (
    CorruptSnapshotError,
    HardStateFile,
    HardStateStorage,
    LogLockedError,
    LogStorage,
    ReadOnlyStorageError,
    SegmentedLog,
    SnapshotStorage,
    SnapshotStore,
    StorageError,
)
from zraft.storage.identity import DirectoryIdentity, IdentityFile
from zraft.transport import CurveSettings, TransportError, ZmqTransport

from .founding import (
    DirectoryRefused,
    IdentityGuard,
    await_founders,
    check_snapshots,
    has_state,
    new_identity,
    open_identity,
    write_founding,
)
from .hosted_loop import LoopWakingRef
from .log_actor import LogActor, LogWriter
from .messages import AppliedUpTo, ClientBatch, PeerBatch, StatusRequest
from .metrics import MetricsServer
from .peer_actor import PeerActor
from .recovery import recover
from .snapshot_actor import SnapshotActor
from .state_machine import ReplicatedState
from .state_machine_actor import StateMachineActor

log = logging.getLogger(__name__)

_NOT_WRITABLE = frozenset({errno.EACCES, errno.EROFS, errno.EPERM})


class StartupError(Exception):
    """The peer could not start, and whatever it had started is stopped again. The message
    is one line naming what failed; the exception behind it is chained as the cause."""


@dataclass(frozen=True, slots=True)
class PeerStorage:
    """The three stores a peer runs on (see ``zraft.storage.protocols``)."""

    raft_log: LogStorage
    hard_state: HardStateStorage
    snapshots: SnapshotStorage


# How a runtime opens its stores. The default is the disk under the settings' directories;
# the fault suite passes one that wraps them (zraft.chaos.faulty_peer), never an env var.
StorageOpener = Callable[[Settings], PeerStorage]


def open_disk_storage(settings: Settings) -> PeerStorage:
    """The peer's stores on disk, the log first: its lock refuses a second peer at once."""
    log_dir = Path(settings.log_dir or settings.data_dir)
    snapshot_dir = Path(settings.snapshot_dir or settings.data_dir)
    raft_log = SegmentedLog(
        log_dir / "log",
        max_segment_size=settings.max_segment_size,
        fsync=settings.fsync,
        remove_in_background=True,
    )
    try:
        hard_state_file = HardStateFile(log_dir / "hard_state", fsync=settings.fsync)
        snapshots = SnapshotStore(
            snapshot_dir / "snapshots",
            backup=settings.snapshot_backup,
            keep_backups=settings.snapshot_backups_kept,
            fsync=settings.fsync,
        )
        (log_dir / "hard_state").mkdir(parents=True, exist_ok=True)
    except BaseException:
        raft_log.close()  # its lock must not outlive a failed start
        raise
    return PeerStorage(raft_log, hard_state_file, snapshots)


class PeerRuntime:
    def __init__(self, settings: Settings, open_storage: StorageOpener | None = None) -> None:
        self.settings = settings
        self.open_storage = open_storage or open_disk_storage
        self.peer_id = settings.require_peer_id()
        self.failed = threading.Event()
        self.removed = threading.Event()  # a committed configuration left this peer out
        self.failure: str | None = None
        self.stopped = threading.Event()
        self._actors: list[pykka.ActorRef[Any]] = []
        self.transport: ZmqTransport | None = None
        self.peer: pykka.ActorRef[Any] | None = None
        # How this thread and others reach the peer actor (its thread may wait in the loop).
        self._peer_from_outside: LoopWakingRef | None = None
        self._metrics_server: MetricsServer | None = None
        self._raft_log: LogStorage | None = None  # closed by stop(): frees its lock file

    # ------------------------------------------------------------------ life cycle

    def start(self) -> PeerRuntime:
        """Recover from disk, start the actors and the transport, serve the metrics.

        If anything fails, everything already started is stopped (actors, sockets, the
        log's lock, the metrics port) and ``StartupError`` says what failed in one line.
        A ``BaseException`` (KeyboardInterrupt, a signal's) gets the same undo and goes on.
        """
        try:
            self._bind_metrics()
            self._start()
            if self._metrics_server is not None:
                self._metrics_server.start()
        except BaseException as exc:
            self._undo_start()
            if isinstance(exc, Exception) and not isinstance(exc, StartupError):
                raise StartupError(_describe(exc, self.settings, self.peer_id)) from exc
            raise
        return self

    def _bind_metrics(self) -> None:
        # Before anything else: a port in use then fails before the disk is touched or an
        # actor starts. Requests are served only once the peer is up.
        port = self.settings.metrics_port
        if port is None:
            return
        host = _listen_host(self.peer_id)
        try:
            self._metrics_server = MetricsServer(host, port, self._status)
        except OSError as exc:
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            if exc.errno == errno.EADDRINUSE:
                raise StartupError(f"metrics port {where} is in use") from exc
            raise StartupError(f"metrics port {where} cannot be bound: {exc.strerror}") from exc

    def _status(self) -> dict[str, Any]:
        if self._peer_from_outside is None or self.peer is None:
            raise RuntimeError("the peer has not started")
        status: dict[str, Any] = self._peer_from_outside.ask(StatusRequest(), timeout=2)
        return status

    def _undo_start(self) -> None:
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - the start-up failure is the one to report
            log.debug("%s: undoing a failed start", self.peer_id, exc_info=True)

    def _start(self) -> None:
        s = self.settings
        log_dir = Path(s.log_dir or s.data_dir)
        storage = self.open_storage(s)
        raft_log, hard_state_file = storage.raft_log, storage.hard_state
        snapshots = storage.snapshots
        self._raft_log = raft_log
        hard_state, _ = hard_state_file.load()
        latest = snapshots.latest()
        present = has_state(raft_log, hard_state, latest is not None)
        identity_file = IdentityFile(log_dir, fsync=s.fsync)
        identity = self._identity(identity_file, state_present=present)
        if identity.founding_pending:
            if not present:  # founding now, or mending a crash before its entry was durable
                hard_state = write_founding(raft_log, hard_state_file, identity.founding)
                log.info("%s founded cluster %r with voters %s", self.peer_id, s.cluster_id,
                         ", ".join(identity.founding))  # fmt: skip
            identity = replace(identity, founding_pending=False)
            identity_file.save(identity)
        snapshot_dir = Path(s.snapshot_dir or s.data_dir)
        check_snapshots(
            str(snapshot_dir / "snapshots"),
            identity,
            raft_log.first_index,
            None if latest is None else (latest[0], latest[2]),
        )
        guard = IdentityGuard(identity_file, identity)
        backend = load_backend(s.backend)()
        backend.init(self.peer_id)
        # The configuration comes from the log and the snapshots alone (the founding entry
        # is the log's first), never from the settings.
        state = ReplicatedState(backend, Configuration())
        state.snapshot_origin = lambda: {"cluster_id": s.cluster_id, "founding": guard.cluster_uuid}
        node = recover(
            peer_id=self.peer_id,
            rng=random.Random(),
            options=s.node_options(),
            raft_log=raft_log,
            hard_state=hard_state,
            latest=latest,
            state=state,
        )
        meta = node.snapshot_meta
        # From now on (not for the recovered snapshot): configurations that commit and
        # snapshots received tell the guard whom to forget.
        state.on_config, state.on_snapshot = guard.committed, guard.snapshot_installed
        guard.applied_index = lambda: state.applied_index
        if present and s.peers and frozenset(s.peers) != node.config.all_voters:
            log.warning(
                "%s: the peers setting (%s) differs from the cluster's configuration in "
                "the log (%s) and is ignored: peers only founds a new cluster",
                self.peer_id, ", ".join(sorted(s.peers)), node.config,
            )  # fmt: skip
        log.info(
            "%s starting: term %d, snapshot %d, log %d..%d, %s",
            self.peer_id,
            hard_state.term,
            meta.index,
            raft_log.first_index,
            raft_log.last_index,
            node.config,
        )
        self.transport = ZmqTransport(
            cluster_id=s.cluster_id,
            peer_id=self.peer_id,
            listen_host=_listen_host(self.peer_id),
            peers=node.config.members - {self.peer_id},
            on_peer_messages=self._on_peer_messages,
            on_client_requests=self._on_client_requests,
            curve=_curve(s),
            max_frame_bytes=s.max_frame_bytes,
            routes=s.route_map(),
            max_client_requests=s.max_client_requests,
            origin_check=guard,
        )
        transport = self.transport
        # Bound now (a busy port fails here, before any actor starts); the peer actor's
        # thread runs its loop.
        transport.start(hosted=True)
        # Guards the snapshot store, which the state machine, snapshot and log writers share.
        lock = threading.Lock()
        # The state machine, snapshot and log actors tell the peer actor through this ref: the
        # peer's thread may be waiting in the transport's loop. Set before the peer starts.
        peer_ref = LoopWakingRef(transport.wake)
        self._peer_from_outside = peer_ref
        state_machine = StateMachineActor.start(
            peer_id=self.peer_id,
            state=state,
            snapshots=snapshots,
            snapshot_lock=lock,
            max_log_count=s.max_log_count,
            reply=transport.reply,
            peer=peer_ref,
            on_failure=self._fail,
        )
        # Each actor is listed as it starts: a failed start stops those that did.
        self._actors.append(state_machine)
        log_writer = LogWriter(
            raft_log=raft_log,
            hard_state_file=hard_state_file,
            snapshots=snapshots,
            snapshot_lock=lock,
            send=transport.send,
            flush=transport.flush,
            state_machine=_SafeRef(state_machine),
            saved=hard_state,
            own_thread=s.log_thread,
        )
        # Written on the peer actor's thread unless the settings give it one of its own.
        log_actor = None
        if s.log_thread:
            log_actor = LogActor.start(log_writer, peer_ref, self._fail)
            self._actors.append(log_actor)
        snapshot_actor = SnapshotActor.start(
            peer_id=self.peer_id,
            cluster_id=s.cluster_id,
            snapshots=snapshots,
            snapshot_lock=lock,
            listen_host=s.snapshot_listener_addr,
            listen_port=s.snapshot_listener_port,
            transfer_timeout=max(5.0, s.request_timeout / 1000 * 5),  # type: ignore[operator]
            send=transport.send,
            peer=peer_ref,
            on_failure=self._fail,
        )
        self._actors.insert(0, snapshot_actor)
        self.peer = PeerActor.start(
            node=node,
            loop=transport,
            send=transport.send,
            reply=transport.reply,
            set_peers=transport.set_peers,
            log_writer=None if s.log_thread else log_writer,
            log_actor=_SafeRef(log_actor) if log_actor is not None else None,
            state_machine_actor=_SafeRef(state_machine),
            snapshot_actor=_SafeRef(snapshot_actor),
            applied=AppliedUpTo(state.applied_index, state.applied_term, state.session_table()),
            transport_stats=transport.stats,
            on_failure=self._fail,
            on_removed=self.removed.set,
            tick_seconds=s.tick_interval / 1000,  # type: ignore[operator]
            max_results_per_client=s.max_results_per_client,
            on_ref=peer_ref.set,
            identity_guard=guard,
        )

    def _identity(self, identity_file: IdentityFile, *, state_present: bool) -> DirectoryIdentity:
        """Check the directory is ours (or make it ours, founding if the settings say so)."""
        s = self.settings
        identity = open_identity(
            identity_file,
            cluster_id=s.cluster_id,
            peer_id=self.peer_id,
            state_present=state_present,
        )
        may_found = not state_present and (identity is None or not identity.cluster_uuid)
        if may_found and self.peer_id in s.peers:
            if identity is None:
                # The instance is durable before any founder hears of it: one that records it
                # must never see another from this directory unless it was wiped.
                identity = new_identity(s.cluster_id, self.peer_id)
                identity_file.save(identity)
            fresh = replace(
                new_identity(s.cluster_id, self.peer_id, s.peers), instance=identity.instance
            )
            verdict = await_founders(
                s.cluster_id,
                self.peer_id,
                fresh.instance,
                s.peers,
                fresh.cluster_uuid,
                listen_host=_listen_host(self.peer_id),
                curve=_curve(s),
                routes=s.route_map(),
                stop=self.stopped,
            )
            identity = replace(
                fresh,
                cluster_uuid=verdict.cluster_uuid,
                known=dict(verdict.instances),
                known_since=dict.fromkeys(verdict.instances, 0),
            )
            identity_file.save(identity)
        elif identity is None:
            identity = new_identity(s.cluster_id, self.peer_id)
            identity_file.save(identity)
        return identity

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        if self.peer is not None and self._peer_from_outside is not None:
            # First, and woken: its thread may be waiting in the transport's loop. Its
            # on_stop closes the loop's sockets before the stop is answered.
            try:
                self._peer_from_outside.stop(timeout=10)
            except Exception:  # stopping must go on for the others
                log.exception("%s: stopping the peer actor", self.peer_id)
        for ref in self._actors:
            try:
                ref.stop(block=True, timeout=10)
            except pykka.ActorDeadError:
                pass
            except Exception:  # stopping must go on for the others
                log.exception("stopping %s", ref)
        # Each step on its own: one that fails must not leave the rest (a port, the log's
        # lock) held.
        steps = []
        if self.transport is not None:
            steps.append(("closing the transport", self.transport.close))
        if self._raft_log is not None:
            # The actors that used it have stopped: the same process may start the peer again.
            steps.append(("closing the log", self._raft_log.close))
        if self._metrics_server is not None:
            steps.append(("closing the metrics server", self._metrics_server.close))
        for what, step in steps:
            try:
                step()
            except Exception:
                log.exception("%s: %s", self.peer_id, what)

    def wait(self) -> None:
        """Block until a failure or ``stop()``."""
        while not (self.failed.wait(0.5) or self.stopped.is_set() or self.removed.is_set()):
            pass

    # ------------------------------------------------------------------ plumbing

    def _on_peer_messages(self, messages: list[Any]) -> None:
        if self.peer is not None:
            self.peer.tell(PeerBatch(tuple(messages)))

    def _on_client_requests(self, requests: list[Any]) -> None:
        if self.peer is not None:
            self.peer.tell(ClientBatch(tuple(requests)))

    def _fail(self, reason: str) -> None:
        log.critical("%s stopping: %s", self.peer_id, reason)
        self.failure = reason
        self.failed.set()


class _SafeRef:
    """How the peer actor tells the others: a message to an actor that already stopped
    (the peer is shutting down) is dropped instead of failing the sender."""

    def __init__(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref

    def tell(self, message: Any) -> None:
        try:
            self.ref.tell(message)
        except pykka.ActorDeadError:
            log.debug("dropped %s to a stopped actor", type(message).__name__)


def _describe(exc: Exception, settings: Settings, peer_id: str) -> str:
    """What failed to start, in one line for an operator."""
    log_dir = settings.log_dir or settings.data_dir  # derived from data_dir unless set
    where = f"data dir {log_dir}" if log_dir == settings.data_dir else f"log dir {log_dir}"
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else None
    if isinstance(exc, DirectoryRefused):
        text = str(exc)  # written for the operator already
    elif isinstance(exc, TransportError):
        if getattr(exc.__cause__, "errno", None) == errno.EADDRINUSE:
            text = f"peer port {peer_id} is in use"
        else:
            text = f"peer port {peer_id}: {exc}"
    elif isinstance(exc, LogLockedError):
        text = f"{where} is in use by another running peer (its log is locked)"
    elif isinstance(exc, CorruptSnapshotError):
        text = f"the latest snapshot cannot be read: {exc}"
    elif isinstance(exc, BackendLoadError):
        text = str(exc)  # names the backend already
    elif isinstance(exc, ReadOnlyStorageError):
        text = f"{where} is not writable: {_os_error(exc.cause)}"
    elif isinstance(exc, StorageError):
        text = f"{where} cannot be used: {_os_error(cause) if cause else exc}"
    elif isinstance(exc, OSError) and _raised_in(exc, _in("SnapshotReceiver.__init__")):
        port = f"{settings.snapshot_listener_addr}:{settings.snapshot_listener_port}"
        if exc.errno == errno.EADDRINUSE:
            text = f"snapshot port {port} is in use"
        else:
            text = f"snapshot port {port} cannot be bound: {exc.strerror}"
    # The backend's own code may fail in any way (an OSError too): by where it was raised.
    elif _raised_in(exc, _in("ReplicatedState.install")):
        text = f"the latest snapshot cannot be installed: {type(exc).__name__}: {exc}"
    elif _raised_in(exc, lambda frame: isinstance(frame.f_locals.get("self"), Backend)):
        text = f"backend {settings.backend} failed to start: {type(exc).__name__}: {exc}"
    elif isinstance(exc, OSError):  # the peer's own directories (making hard_state's, say)
        verb = "is not writable" if exc.errno in _NOT_WRITABLE else "cannot be used"
        text = f"{where} {verb}: {_os_error(exc)}"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return " ".join(text.split())  # one line, whatever the exception's text holds


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror}: {exc.filename}" if exc.filename else str(exc)


def _raised_in(exc: BaseException, where: Callable[[FrameType], bool]) -> bool:
    return any(where(frame) for frame, _ in traceback.walk_tb(exc.__traceback__))


def _in(qualname: str) -> Callable[[FrameType], bool]:
    return lambda frame: frame.f_code.co_qualname == qualname


def _listen_host(peer_id: str) -> str:
    host = peer_id.rsplit(":", 1)[0]
    return host.strip("[]")


def _curve(settings: Settings) -> CurveSettings | None:
    if settings.curve_secret_key is None:
        return None
    return CurveSettings(
        secret_key_file=settings.curve_secret_key,
        public_key_file=settings.curve_public_key,
        authorized_keys_dir=settings.curve_authorized_keys,
    )

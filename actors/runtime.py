"""One peer, assembled: storage, backend, the four actors and the transport.

``PeerRuntime(settings).start()`` recovers from disk (latest snapshot, then the log after
it, then the hard state) and joins the cluster; ``stop()`` takes everything down. If any
actor fails, the whole peer stops (``failed`` is set) rather than limp on half-alive; the
process supervisor restarts it from disk.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import deque
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pykka

from zraft.backends.base import load_backend
from zraft.core import Configuration, Node, SnapshotMeta
from zraft.settings import Settings
from zraft.storage import HardStateFile, SegmentedLog, SnapshotStore
from zraft.transport import CurveSettings, ZmqTransport

from .log_actor import LogActor
from .loop_inbox import HostedRef, InlineRef, OwnThread
from .messages import ClientBatch, PeerBatch, PersistItem, StatusRequest
from .metrics import serve_metrics
from .peer_actor import PeerActor
from .session_actor import SessionActor
from .snapshot_actor import SnapshotActor
from .state_machine import ReplicatedState

log = logging.getLogger(__name__)


class PeerRuntime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.peer_id = settings.require_peer_id()
        self.failed = threading.Event()
        self.removed = threading.Event()  # a committed configuration left this peer out
        self.failure: str | None = None
        self.stopped = threading.Event()
        self._actors: list[pykka.ActorRef[Any]] = []
        self.transport: ZmqTransport | None = None
        self.peer: pykka.ActorRef[Any] | None = None
        self._hosted: list[HostedRef] = []
        self._metrics_server: ThreadingHTTPServer | None = None
        self._raft_log: SegmentedLog | None = None  # closed by stop(): frees its lock file

    # ------------------------------------------------------------------ life cycle

    def start(self) -> PeerRuntime:
        s = self.settings
        log_dir = Path(s.log_dir or s.data_dir)
        snapshot_dir = Path(s.snapshot_dir or s.data_dir)
        raft_log = SegmentedLog(
            log_dir / "log",
            max_segment_size=s.max_segment_size,
            fsync=s.fsync,
            remove_in_background=True,
        )
        self._raft_log = raft_log
        hard_state_file = HardStateFile(log_dir / "hard_state", fsync=s.fsync)
        snapshots = SnapshotStore(
            snapshot_dir / "snapshots",
            backup=s.snapshot_backup,
            keep_backups=s.snapshot_backups_kept,
            fsync=s.fsync,
        )
        (log_dir / "hard_state").mkdir(parents=True, exist_ok=True)
        hard_state, _ = hard_state_file.load()
        backend = load_backend(s.backend)()
        backend.init(self.peer_id)
        bootstrap = Configuration.of(s.peers) if self.peer_id in s.peers else Configuration()
        state = ReplicatedState(backend, bootstrap)
        latest = snapshots.latest()
        if latest is None:
            meta = SnapshotMeta(0, 0, bootstrap)
        else:
            meta, path, extra = latest
            state.install(meta, Path(path), extra)
            raft_log.restore_to_snapshot(meta.index, meta.term)
        entries = raft_log.entries(raft_log.first_index, raft_log.last_index + 1)
        node = Node(
            self.peer_id,
            random.Random(),
            s.node_options(),
            hard_state=hard_state,
            snapshot=meta,
            entries=entries,
        )
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
        )
        transport = self.transport
        # Bound now (a busy port fails here, before any actor starts); the peer actor's
        # thread runs its loop.
        transport.start(hosted=True)
        lock = threading.Lock()
        queue: deque[PersistItem] = deque()
        self.metrics: dict[str, dict[str, Any]] = {"log": {}, "apply": {}, "snapshot": {}}
        peer_proxy = _SafeRef()  # filled in by the peer actor before its thread starts
        session_ref = InlineRef()  # the peer actor runs the session actor inline when it can
        session = SessionActor.start(
            peer_id=self.peer_id,
            state=state,
            snapshots=snapshots,
            snapshot_lock=lock,
            max_log_count=s.max_log_count,
            reply=transport.reply,
            peer=peer_proxy,
            metrics=self.metrics["apply"],
            on_failure=self._fail,
            inline_ref=session_ref,
        )
        log_actor = LogActor(
            raft_log=raft_log,
            hard_state_file=hard_state_file,
            snapshots=snapshots,
            snapshot_lock=lock,
            queue=queue,
            send=transport.send,
            flush=transport.flush,
            peer=peer_proxy,
            session=_SafeRef(session_ref),
            saved=hard_state,
            metrics=self.metrics["log"],
            on_failure=self._fail,
            own_thread=s.log_thread,
        )
        # On the peer actor's thread unless the settings give it one of its own.
        log_ref: Any = OwnThread.start(log_actor) if s.log_thread else log_actor.actor_ref
        snapshot_actor = SnapshotActor.start(
            peer_id=self.peer_id,
            cluster_id=s.cluster_id,
            snapshots=snapshots,
            snapshot_lock=lock,
            listen_host=s.snapshot_listener_addr,
            listen_port=s.snapshot_listener_port,
            transfer_timeout=max(5.0, s.request_timeout / 1000 * 5),  # type: ignore[operator]
            send=transport.send,
            peer=peer_proxy,
            metrics=self.metrics["snapshot"],
            on_failure=self._fail,
        )
        self.peer = PeerActor.start(
            node=node,
            loop=transport,
            send=transport.send,
            reply=transport.reply,
            set_peers=transport.set_peers,
            persist_queue=queue,
            log_actor=_SafeRef(log_ref),
            session_actor=_SafeRef(session_ref),
            snapshot_actor=_SafeRef(snapshot_actor),
            applied_index=lambda: state.applied_index,
            applied_term=lambda: state.applied_term,
            metrics_sources={
                "transport": transport.stats,
                **{name: (lambda m=m: dict(m)) for name, m in self.metrics.items()},
            },
            on_failure=self._fail,
            on_removed=self.removed.set,
            session_table=state.session_table,
            tick_seconds=s.tick_interval / 1000,  # type: ignore[operator]
            max_results_per_client=s.max_results_per_client,
            hosted=(session_ref,) if s.log_thread else (log_ref, session_ref),
            on_ref=peer_proxy.set,
        )
        self._actors = [self.peer, snapshot_actor, session]  # the peer's thread hosts
        if s.log_thread:
            self._actors.append(log_ref)
        else:
            self._hosted = [log_ref]
        if s.metrics_port is not None:
            peer_ref = self.peer
            self._metrics_server = serve_metrics(
                _listen_host(self.peer_id),
                s.metrics_port,
                lambda: peer_ref.ask(StatusRequest(), timeout=2),
            )
        return self

    def stop(self) -> None:
        if self.stopped.is_set():
            return
        self.stopped.set()
        for ref in self._actors:
            try:
                ref.stop(block=True, timeout=10)
            except pykka.ActorDeadError:
                pass
            except Exception:  # stopping must go on for the others
                log.exception("stopping %s", ref)
        # pykka answers the stop before the actor's thread closes the loop's sockets: wait
        # for that, or the transport's close below would only ask for it.
        closed = self.peer.actor_inbox.closed if self.peer is not None else None
        if closed is not None and not closed.wait(10):
            log.error("%s: the peer actor's loop did not close", self.peer_id)
        for hosted in self._hosted:  # their host has stopped: nothing reaches them now
            hosted.stop()
        if self.transport is not None:
            self.transport.close()
        if self._raft_log is not None:
            # The actors that used it have stopped: the same process may start the peer again.
            self._raft_log.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()

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
    """How actors tell each other: the peer actor's ref can be set after the others start,
    and a message to an actor that already stopped (the peer is shutting down) is dropped
    instead of failing the sender."""

    def __init__(self, ref: pykka.ActorRef[Any] | None = None) -> None:
        self.ref = ref

    def set(self, ref: pykka.ActorRef[Any]) -> None:
        self.ref = ref

    def tell(self, message: Any) -> None:
        if self.ref is None:
            return
        try:
            self.ref.tell(message)
        except pykka.ActorDeadError:
            log.debug("dropped %s to a stopped actor", type(message).__name__)


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

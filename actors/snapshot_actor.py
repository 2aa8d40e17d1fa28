"""The snapshot actor: moves snapshots between peers over their own TCP stream.

Leader side: the core asks for ``InstallSnapshot``; we offer the snapshot to the follower
(``SnapshotOffer``), it answers where to stream it (``SnapshotReady``), a worker thread
streams the files with sendfile, and only once the follower acknowledged every file do we
send the core's ``InstallSnapshot`` and report the outcome to the core.

Follower side: an offer opens a staging directory and a receiver expectation; when the files
are in and verified, the peer actor learns where they are (``SnapshotStaged``), so the
``InstallSnapshot`` that follows can be carried out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pykka

from zraft.core import InstallSnapshot, Message
from zraft.storage import SnapshotStorage
from zraft.transport import (
    SnapshotOffer,
    SnapshotReady,
    SnapshotReceiver,
    send_snapshot,
    split_address,
)

from .counters import Counters
from .messages import (
    DiscardStaged,
    OfferReceived,
    ReadyReceived,
    ReceiveFinished,
    ReportMetrics,
    SendSnapshot,
    SnapshotReport,
    SnapshotStaged,
    TransferFinished,
)

log = logging.getLogger(__name__)

_OFFER_UNANSWERED = "no answer to the offer"


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    """From a worker thread or timer: the actor may have stopped meanwhile."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


class SnapshotActor(pykka.ThreadingActor):
    def __init__(
        self,
        *,
        peer_id: str,
        cluster_id: str,
        snapshots: SnapshotStorage,
        snapshot_lock: Any,
        listen_host: str,
        listen_port: int,
        transfer_timeout: float,
        send: Callable[[Iterable[Message]], None],
        peer: pykka.ActorRef[Any],
        on_failure: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.peer_id = peer_id
        self.cluster_id = cluster_id
        self.snapshots = snapshots
        self.snapshot_lock = snapshot_lock
        self.listen = (listen_host, listen_port)
        self.transfer_timeout = transfer_timeout
        self.send = send
        self.peer = peer
        self.report_failure = on_failure
        self.receiver: SnapshotReceiver | None = None
        self.outgoing: dict[str, InstallSnapshot] = {}  # follower -> what we offered it
        self.streaming: set[str] = set()
        self.incoming: dict[int, str] = {}  # snapshot index -> staging directory
        self.counters = Counters(
            "snapshot", snapshots_sent=0, snapshots_received=0, transfer_failures=0
        )
        # Bound here, on the starting thread, rather than in on_start: a port in use then
        # fails the peer's start-up instead of an actor that has started already.
        host, port = self.listen
        advertise = split_address(self.peer_id)[0] if host in ("0.0.0.0", "::", "") else host
        me = self.actor_ref
        self.receiver = SnapshotReceiver(
            host,
            port,
            cluster_id=self.cluster_id,
            advertise_host=advertise,
            on_complete=lambda index, path: _tell(me, ReceiveFinished(index, str(path))),
            on_failed=lambda index, reason: _tell(me, ReceiveFinished(index, None, reason)),
        )

    def on_stop(self) -> None:
        if self.receiver is not None:
            self.receiver.close()

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        if self.receiver is not None:
            self.receiver.close()
        self.report_failure(f"snapshot actor failed: {exc_value!r}")

    def on_receive(self, message: Any) -> None:
        if isinstance(message, SendSnapshot):
            self._offer(message.message)
        elif isinstance(message, ReadyReceived):
            self._stream(message.ready)
        elif isinstance(message, TransferFinished):
            self._finished_sending(message)
        elif isinstance(message, OfferReceived):
            self._accept(message.offer)
        elif isinstance(message, ReceiveFinished):
            self._finished_receiving(message)
        elif isinstance(message, ReportMetrics):
            self._report_metrics()
        elif isinstance(message, DiscardStaged):
            with self.snapshot_lock:
                for path in message.paths:
                    self.snapshots.abort_install(path)

    def _report_metrics(self) -> None:
        report = self.counters.report()
        if report is not None:
            self.peer.tell(report)

    # ------------------------------------------------------------------ leader side

    def _offer(self, message: InstallSnapshot) -> None:
        follower = message.dst
        if follower in self.streaming:
            return  # one transfer per follower at a time; the core retries after our report
        self.outgoing[follower] = message
        self.send([SnapshotOffer(message.term, self.peer_id, follower, message.meta)])
        timer = threading.Timer(
            self.transfer_timeout,
            lambda: _tell(
                self.actor_ref,
                TransferFinished(follower, message.meta.index, False, _OFFER_UNANSWERED),
            ),
        )
        timer.daemon = True
        timer.start()

    def _stream(self, ready: SnapshotReady) -> None:
        offered = self.outgoing.get(ready.src)
        if offered is None or offered.meta.index != ready.index or ready.src in self.streaming:
            return
        with self.snapshot_lock:
            latest = self.snapshots.latest()
        if latest is None or latest[0].index != ready.index:
            self.actor_ref.tell(TransferFinished(ready.src, ready.index, False, "superseded"))
            return
        path = Path(latest[1])
        names = [name for name, _ in self.snapshots.list_files(str(path))]
        if any("/" in name for name in names):
            # The stream sends plain file names; a backend must write a flat directory.
            log.error("snapshot %s has nested files; backends must write flat directories", path)
            self.actor_ref.tell(TransferFinished(ready.src, ready.index, False, "nested files"))
            return
        files = [path / name for name in names]
        self.streaming.add(ready.src)
        me = self.actor_ref

        def work() -> None:
            try:
                send_snapshot(
                    ready.host,
                    ready.port,
                    cluster_id=self.cluster_id,
                    sender=self.peer_id,
                    index=ready.index,
                    files=files,
                    timeout=self.transfer_timeout,
                )
            except Exception as error:  # a worker thread must report, never die silently
                _tell(me, TransferFinished(ready.src, ready.index, False, repr(error)))
            else:
                _tell(me, TransferFinished(ready.src, ready.index, True))

        threading.Thread(target=work, name=f"zraft-snapshot-send-{ready.src}", daemon=True).start()

    def _finished_sending(self, done: TransferFinished) -> None:
        offered = self.outgoing.get(done.peer)
        if offered is None or offered.meta.index != done.index:
            return
        if done.reason == _OFFER_UNANSWERED and done.peer in self.streaming:
            return  # the offer timer fired while the stream runs; the stream will report
        self.outgoing.pop(done.peer, None)
        self.streaming.discard(done.peer)
        if done.success:
            self.counters.add("snapshots_sent")
            self.send([offered])  # files are in place: now the follower's core may install
            log.info("sent snapshot %d to %s", done.index, done.peer)
        else:
            self.counters.add("transfer_failures")
            log.warning("snapshot %d to %s failed: %s", done.index, done.peer, done.reason)
        self._report_metrics()  # at once: transfers are rare, and someone may be waiting
        self.peer.tell(SnapshotReport(done.peer, done.success))

    # ------------------------------------------------------------------ follower side

    def _accept(self, offer: SnapshotOffer) -> None:
        assert self.receiver is not None
        index = offer.meta.index
        staging = self.incoming.get(index)
        if staging is None:
            with self.snapshot_lock:
                staging = self.snapshots.begin_install()
            self.incoming[index] = staging
        host, port = self.receiver.expect(index, staging)
        self.send([SnapshotReady(offer.term, self.peer_id, offer.src, index, host, port)])

    def _finished_receiving(self, done: ReceiveFinished) -> None:
        if done.path is None:
            log.warning("receiving snapshot %d failed: %s", done.index, done.reason)
            return  # the expectation stays; the leader retries
        self.counters.add("snapshots_received")
        self._report_metrics()
        self.peer.tell(SnapshotStaged(done.index, done.path))

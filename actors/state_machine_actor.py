"""The state machine actor: a thin shell that runs an ``ApplyDriver`` (apply, answer,
watch, snapshot when due) on a thread of its own, and writes its snapshots."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from zraft.backends.base import SnapshotWriter
from zraft.core import SnapshotMeta
from zraft.storage import SnapshotStorage
from zraft.transport import ClientReply

from .apply_driver import ApplyDriver
from .messages import Identity, SnapshotWritten
from .state_machine import ReplicatedState

log = logging.getLogger(__name__)

Replier = Callable[[Iterable[tuple[Identity, ClientReply]]], None]


class StateMachineActor(pykka.ThreadingActor):
    """Has a thread of its own, so a long apply (user code) never holds up the peer's loop.
    It answers the clients itself, through the transport."""

    def __init__(
        self,
        *,
        peer_id: str,
        state: ReplicatedState,
        snapshots: SnapshotStorage,
        snapshot_lock: Any,
        max_log_count: int,
        reply: Replier,
        peer: pykka.ActorRef[Any] | None,
        on_failure: Callable[[str], None],
    ) -> None:
        super().__init__()
        self.snapshots = snapshots
        self.snapshot_lock = snapshot_lock
        self.reply = reply
        self.peer = peer
        self.report_failure = on_failure
        self.driver = ApplyDriver(
            peer_id=peer_id,
            state=state,
            max_log_count=max_log_count,
            edges=self,
            clock=time.monotonic,
        )

    def on_receive(self, message: Any) -> None:
        self.driver.receive(message)

    def on_failure(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self.report_failure(f"state machine actor failed: {exc_value!r}")

    # ------------------------------------------------------------------ the driver's edges

    def tell_peer(self, message: Any) -> None:
        if self.peer is not None:
            self.peer.tell(message)

    def write_snapshot(
        self, meta: SnapshotMeta, writer: SnapshotWriter, extra: dict[str, Any]
    ) -> None:
        """At once if the backend's writer needs its live state; else on a worker thread
        (the backend copied its state), so applying goes on meanwhile."""
        store, lock = self.snapshots, self.snapshot_lock
        if not writer.background:
            self.driver.receive(write_snapshot(store, lock, meta, writer, extra))
            return
        me = self.actor_ref

        def write() -> None:
            done = write_snapshot(store, lock, meta, writer, extra)
            with contextlib.suppress(pykka.ActorDeadError):  # the peer is shutting down
                me.tell(done)

        threading.Thread(target=write, name="zraft-snapshot-writer", daemon=True).start()


def write_snapshot(
    store: SnapshotStorage,
    lock: Any,
    meta: SnapshotMeta,
    writer: SnapshotWriter,
    extra: dict[str, Any],
) -> SnapshotWritten:
    """Create the snapshot in the store; a failure is reported, not raised (the backend
    hears of it, and the next one is tried later)."""
    try:
        with lock:
            store.create(meta, writer, extra)
    except ValueError as error:  # a newer one arrived from the leader meanwhile: nothing lost
        log.info("snapshot at %d not kept: %s", meta.index, error)
        return SnapshotWritten(meta.index, repr(error))
    except Exception as error:
        log.error("snapshot at %d failed: %s", meta.index, error)
        return SnapshotWritten(meta.index, repr(error))
    return SnapshotWritten(meta.index, None)

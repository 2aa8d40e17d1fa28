"""The peer actor: a thin shell that runs the peer's ``PeerDriver`` on the transport's loop.

Every input (a tick, a batch of peer messages, a batch of client requests, a persisted
report) goes to the driver, and the driver's effects leave through this actor's edges:
messages to the transport at once, writes to the log writer (inline, or the log actor's
thread), committed entries and reads to the state machine actor, snapshot transfers to the
snapshot actor. Nothing here blocks on another actor.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

import pykka

from zraft.core import Message, Node
from zraft.transport import ClientReply

from .driver import PeerDriver
from .founding import IdentityGuard
from .hosted_loop import HostedLoop, LoopTurningActor
from .log_actor import LogWriter
from .messages import (
    REPORT_METRICS,
    AppliedUpTo,
    CompactLog,
    Identity,
    PersistItem,
    StatusRequest,
)
from .state_machine import DEFAULT_MAX_RESULTS_PER_CLIENT

log = logging.getLogger(__name__)

# Inputs handed to the driver at most before its output is gathered (see receive).
MAX_UNDRAINED = 64


class PeerActor(LoopTurningActor):
    """Turns the transport's loop on its own thread (see ``hosted_loop``): peer messages
    and client requests reach the driver on the thread that received them, and what the
    core sends is flushed by it. It owns the log writer unless the log has a thread of its
    own (``log_actor``), and keeps the clock (a tick when one is due).

    Tell it from other threads through a ``LoopWakingRef``: a plain tell would wait until
    the loop's current wait ends.
    """

    def __init__(
        self,
        *,
        node: Node,
        loop: HostedLoop,
        send: Callable[[Iterable[Message]], None],
        reply: Callable[[Iterable[tuple[Identity, ClientReply]]], None],
        set_peers: Callable[[Iterable[str]], None],
        log_writer: LogWriter | None,
        log_actor: pykka.ActorRef[Any] | None = None,
        state_machine_actor: pykka.ActorRef[Any],
        snapshot_actor: pykka.ActorRef[Any],
        applied: AppliedUpTo,
        transport_stats: Callable[[], dict[str, Any]] = dict,
        on_failure: Callable[[str], None],
        on_removed: Callable[[], None] = lambda: None,
        tick_seconds: float = 0.05,
        on_ref: Callable[[pykka.ActorRef[Any]], None] = lambda ref: None,
        identity_guard: IdentityGuard | None = None,
        max_results_per_client: int = DEFAULT_MAX_RESULTS_PER_CLIENT,
    ) -> None:
        super().__init__(loop, tick_seconds, on_failure)
        on_ref(self.actor_ref)  # before the thread starts: others may tell us at once
        self.flush = loop.flush  # sends what this thread queued, now
        self.send = send
        self.reply = reply
        self._set_peers = set_peers
        assert (log_writer is None) != (log_actor is None), "one place writes the log"
        self.log_writer = log_writer
        self.log_actor = log_actor
        self.state_machine_actor = state_machine_actor
        self.snapshot_actor = snapshot_actor
        self.transport_stats = transport_stats
        self.report_removed = on_removed
        self.undrained = 0  # inputs handed to the driver since its output was last gathered
        self.driver = PeerDriver(
            node=node,
            edges=self,
            applied=applied,
            tick_ms=tick_seconds * 1000,
            identity_guard=identity_guard,
            max_results_per_client=max_results_per_client,
        )

    def loop_opened(self) -> None:
        self.driver.open()

    def before_wait(self) -> None:
        if self.undrained:
            self._drain()  # what was stepped goes out before the loop may wait

    def receive(self, message: Any) -> Any:
        if isinstance(message, StatusRequest):
            return self.status()  # answers an ask() from a non-actor thread (metrics)
        if not self.driver.receive(message):
            return None
        # Everything already waiting is stepped before the output is gathered: one Ready,
        # one send per peer and one log write for the lot (bounded, so output keeps flowing).
        self.undrained += 1
        if self.actor_inbox.empty() or self.undrained >= MAX_UNDRAINED:
            self._drain()
        return None

    def on_tick(self) -> None:
        self.driver.tick()
        self.undrained += 1
        # The other actors own their counters: they send a copy if it changed.
        self.state_machine_actor.tell(REPORT_METRICS)
        self.snapshot_actor.tell(REPORT_METRICS)
        if self.log_actor is not None:
            self.log_actor.tell(REPORT_METRICS)

    def _drain(self) -> None:
        self.undrained = 0
        self.driver.drain()

    def status(self) -> dict[str, Any]:
        return self.driver.status()

    # ------------------------------------------------------------------ the driver's edges
    # send, reply and flush are the transport's own (set in __init__).

    def persist(self, item: PersistItem) -> None:
        if self.log_writer is None:
            assert self.log_actor is not None
            self.log_actor.tell(item)
            return
        # Written on this thread: what must go out first (appends to the followers, sent
        # before our own sync) leaves now. What is durable reaches the driver as a message,
        # after what is queued already, as it would from a log actor.
        self.flush()
        self.actor_ref.tell(self.log_writer.write((item,)))

    def compact(self, order: CompactLog) -> None:
        if self.log_writer is not None:
            self.log_writer.compact(order)
        else:
            assert self.log_actor is not None
            self.log_actor.tell(order)

    def to_state_machine(self, message: Any) -> None:
        self.state_machine_actor.tell(message)

    def to_snapshots(self, message: Any) -> None:
        self.snapshot_actor.tell(message)

    def set_peers(self, peers: frozenset[str]) -> None:
        self._set_peers(peers)

    def removed(self) -> None:
        self.report_removed()

    def counters(self) -> dict[str, tuple[tuple[str, Any], ...]]:
        sources = {"transport": tuple(self.transport_stats().items())}
        if self.log_writer is not None:
            sources["log"] = tuple(self.log_writer.counters.values.items())
        return sources

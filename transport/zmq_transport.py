"""ZeroMQ transport: one ROUTER per peer for inbound traffic, one DEALER per remote peer.

Threading model. zmq sockets are not thread-safe, so one I/O thread owns every socket of a
``ZmqTransport``. Other threads (actors) hand work over through ``send``/``reply``/
``set_peers``, which append to a list under a lock and, only if the I/O thread has not
already been woken since it last drained the list, write one byte to a pipe the I/O thread
polls beside its sockets. Why not an inproc PUSH socket per sender thread: that needs a
thread-local socket per actor thread (created lazily, leaked when the thread dies, one more
zmq message per call), whereas the pipe costs one lock round and, under load, no syscall at
all (wakeups coalesce: thousands of ``send`` calls between two drains write one byte).
Measured with ``benchmarks/transport_bench.py`` (see ``docs/transport.md``).

Inbound: per wakeup the I/O thread drains every frame available (up to a fairness cap),
decodes them and calls ``on_peer_messages`` once with all peer messages and
``on_client_requests`` once with all client requests. Callbacks run on the I/O thread and
must not block (an actor ``tell`` is right). Bad frames are dropped, counted, and logged at
most once per reason every few seconds.

Outbound: never blocks. A message is dropped and counted when its destination is unknown,
when the hand-off backlog is full, or when the peer's DEALER refuses it (EAGAIN: not
connected, since ``ZMQ_IMMEDIATE`` is set, or its ``SNDHWM`` queue is full), so a dead peer
costs at most ``send_hwm`` queued frames.

Why one module: one I/O thread owns every socket; its loop, the admission of client requests
and the origin checks run on that thread and share its state (the client side, CURVE,
addresses and errors are apart).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import zmq
import zmq.auth
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils.monitor import recv_monitor_message

from zraft.core.messages import Message

from .codec import (
    DEFAULT_MAX_FRAME_BYTES,
    DecodedBatch,
    FrameError,
    Origin,
    WireMessage,
    decode_batch,
    encode_batch,
    encode_batches,
)
from .curve import CurveSettings, client_curve, key_name
from .errors import TransportError
from .messages import (
    FOUNDING_FREE_OPS,
    IDENTITY,
    NOT_FOUNDED,
    OTHER_FOUNDING,
    ClientReply,
    ClientRequest,
)
from .sockets import (
    COPY_THRESHOLD,
    MAXMSGSIZE_SLACK,
    ZMQ_EVENTS,
    ZMQ_POLLIN,
    endpoint,
    split_address,
)

log = logging.getLogger(__name__)

# Fairness: at most this many inbound frames per wakeup before the outbox is looked at.
_MAX_FRAMES_PER_WAKEUP = 4096
# A callback gets at most about this many messages (more would only hold memory longer).
_MAX_MESSAGES_PER_CALLBACK = 8192
_LOG_INTERVAL_S = 5.0
# Client requests handed to the peer and not yet answered, per peer (see ``_admit``).
DEFAULT_MAX_CLIENT_REQUESTS = 10_000
# A request unanswered this long is forgotten: its client gave up long ago, and a reply
# that never comes (a read lost with a leader change) must not hold a slot forever.
_CLIENT_REQUEST_EXPIRY_S = 60.0
OVERLOADED = "overloaded"
_ADMIT, _SHED, _DUP = "admit", "shed", "duplicate"

# How often a peer announces its origin to every peer it connects to, so that each member
# learns every other's data directory early, not only the leader's.
_HELLO_INTERVAL_S = 1.0

PeerCallback = Callable[[list[Message]], None]
ClientCallback = Callable[[list[tuple[bytes, ClientRequest]]], None]


class OriginCheck(Protocol):
    """Which founding and data directory this peer's frames carry, and whether another
    peer's frame is admitted (see ``zraft.actors.founding.IdentityGuard``)."""

    origin: Origin

    def admit(self, sender: str, origin: Origin, messages: Sequence[WireMessage]) -> str | None:
        """Why the frame (its ``messages``) is refused (a short stable reason), or None."""
        ...

    def describe(self, asker: str | None) -> dict[str, Any]:
        """The answer to an ``identity`` request (``asker``: the peer id it names)."""
        ...


class _PerConnectionBudget:
    """At most ``per_second`` uses per connection in each second (a fixed window)."""

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window = 0.0
        self._used: Counter[bytes] = Counter()

    def take(self, routing_id: bytes, now: float) -> bool:
        if now - self._window >= 1.0:
            self._window, self._used = now, Counter()
        self._used[routing_id] += 1
        return self._used[routing_id] <= self.per_second


# ``identity`` answers per client connection per second: a session asks once per peer, a
# founder a few times a second while it waits; more is a flood, shed as overloaded.
IDENTITY_PER_CONNECTION_PER_S = 20


def _identity_reply(check: OriginCheck, request: ClientRequest) -> ClientReply:
    payload = request.payload if isinstance(request.payload, dict) else {}
    asker = payload.get("peer")
    if not (asker is None or isinstance(asker, str)):
        return ClientReply(request.request_id, False, "{peer: id}", "bad_request")
    return ClientReply(request.request_id, True, check.describe(asker))


# --------------------------------------------------------------------------- logging


class _RateLimitedLog:
    """At most one line per reason per interval, carrying how many were suppressed."""

    def __init__(self, interval: float = _LOG_INTERVAL_S) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: Counter[str] = Counter()
        self._lock = threading.Lock()

    def warning(self, reason: str, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(reason)
            if last is not None and now - last < self._interval:
                self._suppressed[reason] += 1
                return
            self._last[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
        log.warning(fmt + " (%d more like it since the last report)", *args, suppressed)


# --------------------------------------------------------------------------- transport

_SEND = 0
_REPLY = 1
_PEERS = 2


class ZmqTransport:
    """Peer-to-peer and client traffic of one peer over ZeroMQ. See the module docstring."""

    def __init__(
        self,
        *,
        cluster_id: str,
        peer_id: str,
        listen_host: str = "127.0.0.1",
        peers: Iterable[str],
        on_peer_messages: PeerCallback,
        on_client_requests: ClientCallback,
        curve: CurveSettings | None = None,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        send_hwm: int = 10000,
        max_backlog: int = 200_000,
        routes: Mapping[str, str] | None = None,
        max_client_requests: int = DEFAULT_MAX_CLIENT_REQUESTS,
        origin_check: OriginCheck | None = None,
    ) -> None:
        _, self._port = split_address(peer_id)
        # With a check, peer frames carry our origin and must carry one to be admitted.
        self._origin_check = origin_check
        self._next_hello = 0.0
        if max_client_requests < 1:
            raise ValueError("max_client_requests must be at least 1")
        self._max_client_requests = max_client_requests
        # Where to connect to reach a peer, when that is not its id (a proxy, a NAT).
        self._routes = dict(routes or {})
        self.cluster_id = cluster_id
        self.peer_id = peer_id
        self._listen_host = listen_host
        self._on_peer_messages = on_peer_messages
        self._on_client_requests = on_client_requests
        self._curve = curve
        self._max_frame_bytes = max_frame_bytes
        self._send_hwm = send_hwm
        self._max_backlog = max_backlog
        for peer in peers:
            split_address(peer)
        self._peers: frozenset[str] = frozenset(peers) - {peer_id}

        self._lock = threading.Lock()  # guards everything below up to the I/O thread's own
        self._outbox: list[tuple[int, Any]] = []
        self._backlog = 0  # messages and replies waiting in _outbox
        self._wake_pending = False
        self._closed = False
        self._counters: Counter[str] = Counter()

        self._ctx: zmq.Context[Any] = zmq.Context()
        self._router: zmq.Socket[Any] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._pipe_open = True
        self._ratelog = _RateLimitedLog()
        # Owned by the I/O thread once started:
        self._dealers: dict[str, zmq.Socket[Any]] = {}
        self._missing_keys: set[str] = set()
        # Client requests admitted and not answered: (routing id, request id) -> admission
        # time, oldest first; and how many each connection has.
        self._client_inflight: OrderedDict[tuple[bytes, int], float] = OrderedDict()
        self._client_inflight_per_conn: Counter[bytes] = Counter()
        self._identity_budget = _PerConnectionBudget(IDENTITY_PER_CONNECTION_PER_S)
        # CURVE: peer id -> its public key (z85) from the authorized directory, or None.
        self._peer_keys: dict[str, str | None] = {}
        self._stop = False
        self._close_on_exit = False
        self._ctx_done = False
        # The thread that owns the sockets while the loop is open, and the loop's parts.
        self._loop_ident: int | None = None
        self._in_turn = False  # the owning thread is inside run_once
        self._poller: zmq.Poller | None = None
        self._monitor: zmq.Socket[Any] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, hosted: bool = False) -> None:
        """Bind the ROUTER (errors raise here) and start the I/O thread.

        ``hosted``: start no thread; another thread runs the loop instead (``open_loop``,
        then ``run_once`` in a loop, then ``close_loop``), so that it can handle what
        arrives without handing it to yet another thread.
        """
        if self._thread is not None or self._router is not None or self._closed:
            raise TransportError("transport already started or closed")
        router = self._ctx.socket(zmq.ROUTER)
        try:
            router.linger = 0
            router.copy_threshold = COPY_THRESHOLD
            router.setsockopt(zmq.MAXMSGSIZE, self._max_frame_bytes + MAXMSGSIZE_SLACK)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            router.sndhwm = self._send_hwm
            if ":" in self._listen_host:
                router.ipv6 = True
            if self._curve is not None:
                self._auth = ThreadAuthenticator(self._ctx, log=log.getChild("auth"))
                self._auth.start()
                self._auth.configure_curve(
                    domain="*", location=os.fspath(self._curve.authorized_keys_dir)
                )
                public, secret = self._curve.own_keys()
                router.curve_publickey = public
                router.curve_secretkey = secret
                router.curve_server = True
            router.bind(endpoint(self._listen_host, self._port))
        except (zmq.ZMQError, OSError, ValueError) as exc:
            router.close(linger=0)
            self._shutdown_context()
            self._closed = True
            where = f"{self._listen_host}:{self._port}"
            raise TransportError(f"cannot listen on {where}: {exc}") from exc
        self._router = router
        if hosted:
            return
        # zmq allows moving a socket to another thread across a full memory barrier, which
        # Thread.start() is; from here on only the I/O thread touches it.
        self._thread = threading.Thread(
            target=self._run, name=f"zraft-transport-{self.peer_id}", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        """Stop the I/O thread and close every socket. Idempotent; pending sends are lost."""
        with self._lock:
            if self._closed and self._thread is None:
                return
            self._closed = True
            self._stop = True
        thread = self._thread
        if thread is not None:
            self._wake()
            if thread is threading.current_thread():
                # Called from a callback on the I/O thread: it finishes the job on its way out.
                self._close_on_exit = True
            else:
                thread.join()
                self._thread = None
                self._shutdown_context()
            return
        with self._lock:
            owner = self._loop_ident
            if owner is not None and (owner != threading.get_ident() or self._in_turn):
                # A hosted loop still owns the sockets (another thread's, or this thread's
                # turn is under way: a callback closed us): the host closes them on its way
                # out (run_once now returns False), then the context.
                self._close_on_exit = True
                self._wake_locked()
                return
        self.close_loop()  # never looped, or looped on this thread
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        self._shutdown_context()

    def _shutdown_context(self) -> None:
        if self._ctx_done:
            return
        self._ctx_done = True
        if self._auth is not None:
            self._auth.stop()
            self._auth = None
        self._ctx.term()
        with self._lock:
            if self._pipe_open:
                self._pipe_open = False
                os.close(self._wake_r)
                os.close(self._wake_w)

    def __enter__(self) -> ZmqTransport:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ any thread

    def send(self, messages: Iterable[Message]) -> None:
        """Queue peer messages for sending. Never blocks; what cannot be sent is counted."""
        peers = self._peers
        batch: list[Message] = []
        unknown = 0
        for msg in messages:
            if msg.dst in peers:
                batch.append(msg)
            else:
                unknown += 1
        if unknown:
            self._ratelog.warning("unknown-peer", "dropped %d message(s) to unknown peers", unknown)
        self._enqueue(_SEND, batch, len(batch), unknown)

    def reply(self, replies: Iterable[tuple[bytes, ClientReply]]) -> None:
        """Queue replies to clients (routing ids from ``on_client_requests``). Never blocks."""
        batch = list(replies)
        self._enqueue(_REPLY, batch, len(batch), 0)

    def set_peers(self, peers: Iterable[str]) -> None:
        """Membership changed: connect to new peers, disconnect removed ones.

        With CURVE, the authorized keys directory is re-read too (add a new peer's key
        before calling this).
        """
        new = frozenset(peers) - {self.peer_id}
        for peer in new:
            split_address(peer)
        if self._auth is not None and self._curve is not None:
            location = os.fspath(self._curve.authorized_keys_dir)
            self._auth.configure_curve(domain="*", location=location)
            self._peer_keys = {}  # read the peers' keys again too
        with self._lock:
            if self._closed:
                return
            self._peers = new
            self._outbox.append((_PEERS, new))
            if threading.get_ident() != self._loop_ident:
                self._wake_once_locked()

    def stats(self) -> dict[str, int]:
        """Counters: sent, received (messages), frames, ``dropped_<reason>`` (outbound,
        per message), ``rejected_<reason>`` (inbound, per frame or message), connection
        events, ``backlog`` (messages waiting for the I/O thread)."""
        with self._lock:
            out = dict(self._counters)
            out["backlog"] = self._backlog
        out["client_inflight"] = len(self._client_inflight)
        for key in ("sent", "received", "dropped", "rejected", "replies_sent"):
            out.setdefault(key, 0)
        return out

    @property
    def peers(self) -> frozenset[str]:
        return self._peers

    def _enqueue(self, kind: int, items: list[Any], count: int, dropped_unknown: int) -> None:
        with self._lock:
            counters = self._counters
            if dropped_unknown:
                counters["dropped_unknown-peer"] += dropped_unknown
                counters["dropped"] += dropped_unknown
            if not count:
                return
            if self._closed:
                counters["dropped_closed"] += count
                counters["dropped"] += count
                return
            if self._backlog + count > self._max_backlog:
                counters["dropped_backlog"] += count
                counters["dropped"] += count
                full = True
            else:
                full = False
                self._backlog += count
                self._outbox.append((kind, items))
                if threading.get_ident() != self._loop_ident:  # it never waits on itself
                    self._wake_once_locked()
        if full:
            self._ratelog.warning("backlog", "send backlog full (%d); dropping", self._max_backlog)

    def _wake(self) -> None:
        with self._lock:
            self._wake_locked()

    def _wake_once_locked(self) -> None:
        # One byte until the owning thread drains: thousands of sends share one wakeup.
        if not self._wake_pending:
            self._wake_pending = True
            self._wake_locked()

    def _wake_locked(self) -> None:
        # Under the lock, so the pipe cannot be closed (and its fd reused) meanwhile.
        if self._pipe_open:
            with contextlib.suppress(OSError):  # full: the thread will wake anyway
                os.write(self._wake_w, b"\x01")

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counters[key] += n

    def _count_many(self, items: dict[str, int]) -> None:
        with self._lock:
            for key, n in items.items():
                self._counters[key] += n

    # ------------------------------------------------------------------ the I/O thread

    def _run(self) -> None:
        self.open_loop()
        try:
            while self.run_once(1000):
                pass
        except Exception:  # noqa: BLE001 - last resort: log, then close cleanly
            log.exception("transport I/O thread crashed")
        finally:
            self.close_loop()

    # ------------------------------------------------------------------ the loop, hosted

    def open_loop(self) -> None:
        """Make the calling thread the one that owns the sockets (the I/O thread, or the
        thread hosting the loop after ``start(hosted=True)``)."""
        with self._lock:
            router = self._router
            if router is None or self._closed:
                raise TransportError("transport not started, or closed")
            self._loop_ident = threading.get_ident()  # close() now leaves the sockets to us
        self._monitor = router.get_monitor_socket(
            zmq.EVENT_ACCEPTED
            | zmq.EVENT_DISCONNECTED
            | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
        )
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        self._poller = poller
        self._connect_peers(self._peers)

    def run_once(self, timeout_ms: int) -> bool:
        """One turn of the loop on the owning thread: send what is queued, wait up to
        ``timeout_ms`` for traffic or a wakeup, and handle it (callbacks run here).
        False once the transport is closing."""
        if self._stop:
            return False
        self._in_turn = True
        try:
            return self._turn(timeout_ms)
        finally:
            self._in_turn = False

    def _turn(self, timeout_ms: int) -> bool:
        if self._outbox:  # queued by the owning thread itself, which never wakes itself
            self._drain_outbox()
        router, poller, monitor = self._router, self._poller, self._monitor
        assert router is not None and poller is not None and monitor is not None
        try:
            events = dict(poller.poll(timeout_ms))
        except zmq.ZMQError as exc:
            if exc.errno == zmq.ETERM:
                return False
            log.exception("poll failed")
            return True
        if self._wake_r in events:
            self._drain_outbox(signaled=True)
        if self._origin_check is not None and not self._stop:
            self._maybe_hello()
        if router in events and not self._stop:
            self._drain_inbound(router)
        if monitor in events and not self._stop:
            self._drain_monitor(monitor)
        return not self._stop

    def _maybe_hello(self) -> None:
        now = time.monotonic()
        if now < self._next_hello:
            return
        self._next_hello = now + _HELLO_INTERVAL_S
        check = self._origin_check
        assert check is not None
        frame = encode_batch([], cluster_id=self.cluster_id, sender=self.peer_id,
                             origin=check.origin)  # fmt: skip
        for sock in self._dealers.values():
            with contextlib.suppress(zmq.Again):  # not connected yet: the next one goes
                sock.send(frame, zmq.NOBLOCK)

    def flush(self) -> None:
        """On the owning thread: send what is queued now rather than at the next turn."""
        if self._outbox and threading.get_ident() == self._loop_ident:
            self._drain_outbox()

    def wake(self) -> None:
        """From any thread: make the owning thread's current or next wait return."""
        with self._lock:
            self._wake_once_locked()

    def close_loop(self) -> None:
        """On the owning thread, last: close every socket it owns."""
        router = self._router
        if router is None:
            return
        if self._monitor is not None:
            router.disable_monitor()
            self._monitor.close(linger=0)
            self._monitor = None
        self._poller = None
        for sock in self._dealers.values():
            sock.close(linger=0)
        self._dealers.clear()
        router.close(linger=0)
        self._router = None
        with self._lock:
            self._loop_ident = None
            close_context = self._close_on_exit
        if close_context:
            self._shutdown_context()

    def _drain_outbox(self, signaled: bool = False) -> None:
        with self._lock:
            # Bytes are written to the pipe only under the lock, so none is left behind.
            # Only a turn whose poll saw the pipe readable takes the wakeup: a drain of what
            # the owning thread queued itself must leave it for the poll, or a message put
            # in the host's inbox meanwhile would wait out the poll's timeout.
            if signaled:
                try:
                    while os.read(self._wake_r, 4096):
                        pass
                except BlockingIOError:
                    pass
                self._wake_pending = False
            items = self._outbox
            self._outbox = []
            self._backlog = 0
        if not items:
            return
        by_peer: dict[str, list[Message]] = defaultdict(list)
        replies: dict[bytes, list[ClientReply]] = defaultdict(list)
        for kind, payload in items:
            if kind == _SEND:
                for msg in payload:
                    by_peer[msg.dst].append(msg)
            elif kind == _REPLY:
                for routing_id, rep in payload:
                    replies[routing_id].append(rep)
                    self._release(routing_id, rep.request_id)
            else:
                self._flush(by_peer, replies)
                by_peer.clear()
                replies.clear()
                self._connect_peers(payload)
        self._flush(by_peer, replies)

    def _flush(
        self, by_peer: dict[str, list[Message]], replies: dict[bytes, list[ClientReply]]
    ) -> None:
        counts: Counter[str] = Counter()
        origin = self._origin_check.origin if self._origin_check is not None else None

        def encode_failed(msg: WireMessage, exc: Exception) -> None:
            reason = "oversized" if isinstance(exc, FrameError) else "encode-error"
            counts[f"dropped_{reason}"] += 1
            counts["dropped"] += 1
            self._ratelog.warning(
                reason, "cannot send %s: %s", type(msg).__name__, exc or type(exc).__name__
            )

        for peer, msgs in by_peer.items():
            sock = self._dealers.get(peer)
            if sock is None:  # removed meanwhile, or no CURVE key for it
                reason = "no-key" if peer in self._missing_keys else "unknown-peer"
                counts[f"dropped_{reason}"] += len(msgs)
                counts["dropped"] += len(msgs)
                continue
            frames = encode_batches(
                msgs,
                cluster_id=self.cluster_id,
                sender=self.peer_id,
                max_frame_bytes=self._max_frame_bytes,
                on_error=encode_failed,
                origin=origin,
            )
            for frame, n in frames:
                try:
                    sock.send(frame, zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    counts["dropped_unavailable"] += n
                    counts["dropped"] += n
                    self._ratelog.warning(
                        "unavailable:" + peer,
                        "peer %s unreachable or its queue is full; dropping",
                        peer,
                    )
                else:
                    counts["sent"] += n
                    counts["sent_frames"] += 1
        router = self._router
        assert router is not None
        for routing_id, reps in replies.items():
            frames = encode_batches(
                reps,
                cluster_id=self.cluster_id,
                sender=self.peer_id,
                max_frame_bytes=self._max_frame_bytes,
                on_error=encode_failed,
            )
            for frame, n in frames:
                try:
                    router.send_multipart([routing_id, frame], zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    counts["dropped_reply-queue-full"] += n
                    counts["dropped"] += n
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    counts["dropped_client-gone"] += n
                    counts["dropped"] += n
                else:
                    counts["replies_sent"] += n
        if counts:
            self._count_many(counts)

    def _connect_peers(self, peers: frozenset[str]) -> None:
        for peer in list(self._dealers):
            if peer not in peers:
                self._dealers.pop(peer).close(linger=0)
                log.info("%s: disconnected from removed peer %s", self.peer_id, peer)
        self._missing_keys &= peers
        for peer in peers:
            if peer in self._dealers:
                continue
            sock = self._ctx.socket(zmq.DEALER)
            sock.linger = 0
            sock.copy_threshold = COPY_THRESHOLD
            sock.immediate = True
            sock.sndhwm = self._send_hwm
            # Nothing is ever sent back on this socket: refuse anything that tries.
            sock.rcvhwm = 1
            sock.setsockopt(zmq.MAXMSGSIZE, 1024)
            sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
            host, port = split_address(self._routes.get(peer, peer))
            if ":" in host:
                sock.ipv6 = True
            if self._curve is not None and not client_curve(sock, self._curve, peer):
                sock.close(linger=0)
                self._missing_keys.add(peer)
                log.error(
                    "%s: no CURVE public key for peer %s (%s.key)",
                    self.peer_id,
                    peer,
                    key_name(peer),
                )
                continue
            sock.connect(endpoint(host, port))
            self._dealers[peer] = sock

    def _drain_inbound(self, router: zmq.Socket[Any]) -> None:
        peer_msgs: list[Message] = []
        client_reqs: list[tuple[bytes, ClientRequest]] = []
        shed: dict[bytes, list[ClientReply]] = defaultdict(list)
        # Answered by the transport itself: identity, and refusals of another founding.
        answered: dict[bytes, list[ClientReply]] = defaultdict(list)
        counts: Counter[str] = Counter()
        now = time.monotonic()
        self._expire_client_requests(now)
        cluster_id = self.cluster_id
        me = self.peer_id
        limit = self._max_frame_bytes
        check = self._origin_check
        # With CURVE, frames are received as zmq Frames to read the key that sent them.
        copy = self._curve is None
        for count in range(_MAX_FRAMES_PER_WAKEUP):
            # The poll said the first frame is there; for the rest, asking is cheaper than
            # the zmq.Again a receive raises on an empty socket (~1 µs against ~4).
            if count and not router.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN:
                break
            try:
                parts = router.recv_multipart(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                break
            counts["received_frames"] += 1
            if len(parts) != 2:
                self._reject(counts, "bad-parts", bytes(parts[0]) if parts else b"")
                continue
            routing_id, frame = parts
            user_id = None
            if not copy:
                user_id = frame.get("User-Id")  # the sender's public key (z85), from ZAP
                routing_id, frame = routing_id.bytes, frame.bytes
            try:
                decoded = decode_batch(frame, cluster_id=cluster_id, max_frame_bytes=limit)
            except FrameError as exc:
                self._reject(counts, exc.reason, routing_id)
                continue
            except Exception:  # noqa: BLE001 - never let one frame kill the thread
                log.exception("unexpected error decoding a frame")
                self._reject(counts, "decode-crash", routing_id)
                continue
            if user_id is not None and not self._peer_key_matches(decoded, user_id):
                self._reject(counts, "unauthenticated-peer", routing_id)
                continue
            origin = decoded.origin
            # A client's origin has no instance: it names the founding it wants, no more.
            from_client = origin is not None and not origin[1]
            other_founding: str | None = None  # ours, when a client wants another one
            if from_client:
                if check is not None and check.origin[0] != origin[0]:  # type: ignore[index]
                    other_founding = check.origin[0]  # "" while not founded: nothing yet
            elif check is not None and origin is not None:
                refused = check.admit(decoded.sender, origin, decoded.messages)
                if refused is not None:
                    self._reject(counts, refused, routing_id)
                    continue
                if not decoded.messages:
                    counts["hellos"] += 1
            peer_ok = check is None or (origin is not None and not from_client)
            for msg in decoded.messages:
                if type(msg) is ClientRequest:  # first: a leader gets one per write
                    if other_founding is not None and msg.op not in FOUNDING_FREE_OPS:
                        answered[routing_id].append(self._other_founding(msg, other_founding))
                        continue
                    if msg.op == IDENTITY and check is not None:
                        # Answered here, never queued behind writes (a session asks every
                        # peer before its first request; founders ask too), within a
                        # budget per connection: a flood of them is shed like any other.
                        if self._identity_budget.take(routing_id, now):
                            answered[routing_id].append(_identity_reply(check, msg))
                        else:
                            shed[routing_id].append(self._overloaded(msg))
                        continue
                    verdict = self._admit(routing_id, msg.request_id, now)
                    if verdict == _ADMIT:
                        client_reqs.append((routing_id, msg))
                    elif verdict == _SHED:
                        shed[routing_id].append(self._overloaded(msg))
                    else:  # the answer to the copy in flight answers this one too
                        counts["client_duplicates"] += 1
                elif isinstance(msg, Message):
                    if msg.dst != me:
                        self._reject(counts, "wrong-dst", routing_id)
                        continue
                    if not peer_ok:  # a peer of an older zraft, or a client posing as one
                        self._reject(counts, "no-origin", routing_id)
                        continue
                    peer_msgs.append(msg)
                else:
                    self._reject(counts, "unexpected-type", routing_id)
            if len(peer_msgs) + len(client_reqs) >= _MAX_MESSAGES_PER_CALLBACK:
                self._deliver(peer_msgs, client_reqs, counts)
                peer_msgs, client_reqs, counts = [], [], Counter()
        self._deliver(peer_msgs, client_reqs, counts)
        if shed:  # answered at once, never queued behind the work that caused it
            self._count("client_shed", sum(len(r) for r in shed.values()))
            self._ratelog.warning(
                OVERLOADED,
                "%s: overloaded (%d client requests in flight); answering 'overloaded'",
                self.peer_id,
                len(self._client_inflight),
            )
            self._flush({}, shed)
        if answered:
            refused = sum(1 for r in answered.values() for a in r if a.error == OTHER_FOUNDING)
            if refused:
                self._count("client_other_founding", refused)
                self._ratelog.warning(
                    OTHER_FOUNDING,
                    "%s: refusing requests of clients pinned to another founding of the "
                    "cluster (a session that talked to it before this directory was founded "
                    "again?)",
                    self.peer_id,
                )
            self._flush({}, answered)

    def _other_founding(self, request: ClientRequest, mine: str) -> ClientReply:
        if not mine:  # a joiner: nothing yet, but soon, maybe (sessions treat it so)
            why = f"{self.peer_id} is not founded yet: it holds nothing of any founding"
            return ClientReply(request.request_id, False, why, NOT_FOUNDED)
        why = f"{self.peer_id} belongs to founding {mine[:8]}"
        return ClientReply(request.request_id, False, why, OTHER_FOUNDING)

    def _deliver(
        self,
        peer_msgs: list[Message],
        client_reqs: list[tuple[bytes, ClientRequest]],
        counts: Counter[str],
    ) -> None:
        counts["received"] += len(peer_msgs)
        counts["client_requests"] += len(client_reqs)
        self._count_many(counts)
        if peer_msgs:
            try:
                self._on_peer_messages(peer_msgs)
            except Exception:  # noqa: BLE001
                self._count("callback_errors")
                log.exception("on_peer_messages raised")
        if client_reqs:
            try:
                self._on_client_requests(client_reqs)
            except Exception:  # noqa: BLE001
                self._count("callback_errors")
                log.exception("on_client_requests raised")

    def _peer_key_matches(self, decoded: DecodedBatch, user_id: str) -> bool:
        """Peer messages must come from the key of the peer they name as sender: any
        authorized key may talk as a client, but only a peer's own key as that peer."""
        if not any(isinstance(m, Message) for m in decoded.messages):
            return True
        keys = self._peer_keys
        if decoded.sender not in keys:
            if len(keys) >= 1024:  # senders named by strangers: keep the cache bounded
                keys.clear()
            assert self._curve is not None
            key = self._curve.server_key(decoded.sender)
            keys[decoded.sender] = key.decode("ascii") if key is not None else None
        return keys[decoded.sender] == user_id

    def _admit(self, routing_id: bytes, request_id: int, now: float) -> str:
        """Whether a client request goes to the peer (``_ADMIT``), is shed as overloaded
        (``_SHED``) or is dropped as a copy of one in flight on its connection (``_DUP``:
        a replayed frame, which must not slip past the bound by reusing an id).

        Up to ``max_client_requests`` in flight, everything is admitted. Beyond it, only a
        connection with nothing in flight gets one more (up to twice the bound): a client
        that waits for each answer is never starved by another's flood, while a flooding
        connection (or a flood of new connections past twice the bound) is shed.
        """
        key = (routing_id, request_id)
        if key in self._client_inflight:
            return _DUP
        total = len(self._client_inflight)
        bound = self._max_client_requests
        if total >= bound and (
            total >= 2 * bound or self._client_inflight_per_conn[routing_id] > 0
        ):
            return _SHED
        self._client_inflight[key] = now
        self._client_inflight_per_conn[routing_id] += 1
        return _ADMIT

    def _release(self, routing_id: bytes, request_id: int) -> None:
        if self._client_inflight.pop((routing_id, request_id), None) is not None:
            self._forget_one(routing_id)

    def _forget_one(self, routing_id: bytes) -> None:
        per_conn = self._client_inflight_per_conn
        per_conn[routing_id] -= 1
        if per_conn[routing_id] <= 0:
            del per_conn[routing_id]

    def _expire_client_requests(self, now: float) -> None:
        inflight = self._client_inflight
        while inflight:
            (routing_id, _), admitted = next(iter(inflight.items()))
            if now - admitted < _CLIENT_REQUEST_EXPIRY_S:
                break
            inflight.popitem(last=False)
            self._forget_one(routing_id)

    def _overloaded(self, request: ClientRequest) -> ClientReply:
        why = (
            f"overloaded: {len(self._client_inflight)} client requests in flight at "
            f"{self.peer_id} (max_client_requests {self._max_client_requests}); retry later"
        )
        return ClientReply(request.request_id, False, why, OVERLOADED)

    def _reject(self, counts: Counter[str], reason: str, routing_id: bytes) -> None:
        counts[f"rejected_{reason}"] += 1
        counts["rejected"] += 1
        self._ratelog.warning(
            "rejected:" + reason,
            "%s: dropped an inbound frame: %s (connection %s)",
            self.peer_id,
            reason,
            routing_id[:16].hex(),
        )

    def _drain_monitor(self, monitor: zmq.Socket[Any]) -> None:
        names = {
            zmq.EVENT_ACCEPTED: "conn_accepted",
            zmq.EVENT_DISCONNECTED: "conn_disconnected",
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "conn_handshake_failed",
            zmq.EVENT_HANDSHAKE_FAILED_AUTH: "conn_auth_failed",
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "conn_handshake_failed",
        }
        counts: Counter[str] = Counter()
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
            except zmq.Again:
                break
            name = names.get(event["event"])
            if name is None:
                continue
            counts[name] += 1
            if name in ("conn_handshake_failed", "conn_auth_failed"):
                self._ratelog.warning(
                    name, "%s: inbound connection %s: %s", self.peer_id, name, event["endpoint"]
                )
        if counts:
            self._count_many(counts)



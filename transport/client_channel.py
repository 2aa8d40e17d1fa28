"""The client side of the request/reply protocol: ``ClientChannel`` (synchronous, one
request at a time per peer, or one to each of many peers at once) and the DEALER socket
the asyncio channel uses too."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import zmq

from .codec import DEFAULT_MAX_FRAME_BYTES, MAX_PEER_ID_LEN, FrameError, decode_batch, encode
from .curve import CurveSettings, client_curve, key_name
from .errors import ChannelClosed, NotSent, TransportError, TransportTimeout
from .messages import ClientReply, ClientRequest
from .sockets import COPY_THRESHOLD, MAXMSGSIZE_SLACK, endpoint, split_address

log = logging.getLogger(__name__)


_CLIENT_MAX_SOCKETS = 32768


def _client_context() -> zmq.Context[Any]:
    ctx = zmq.Context.instance()
    if ctx.get(zmq.MAX_SOCKETS) < _CLIENT_MAX_SOCKETS:
        try:
            ctx.set(zmq.MAX_SOCKETS, _CLIENT_MAX_SOCKETS)  # the default 1,024 caps sessions
        except zmq.ZMQError as error:  # too late once sockets exist: keep the default
            log.warning("cannot raise the client socket limit: %s", error)
    return ctx


class ClientChannel:
    """Client side of the request/reply protocol: one DEALER per peer, created lazily.

    Thread-confined: create, use and close it on one thread (zmq sockets are not
    thread-safe); give each client thread its own channel. ``request`` sends only once a
    connection to the peer is up (``ZMQ_IMMEDIATE``), so a request never waits in a queue
    for a dead peer and surfaces later.
    """

    def __init__(
        self,
        cluster_id: str,
        client_id: str,
        curve: CurveSettings | None = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        routes: Mapping[str, str] | None = None,
    ) -> None:
        if not client_id or len(client_id) > MAX_PEER_ID_LEN:
            raise ValueError("client_id must be a non-empty string of at most 256 characters")
        self.cluster_id = cluster_id
        self.client_id = client_id
        self._curve = curve
        self._routes = dict(routes or {})  # peer id -> address to connect to, if another
        self._max_frame_bytes = max_frame_bytes
        # One process-wide context (and its I/O thread) for every client channel, so a
        # process can hold thousands of sessions.
        self._ctx: zmq.Context[Any] = _client_context()
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._closed = False
        self.ignored = 0  # replies dropped: malformed, other request ids, wrong cluster
        # The founding (cluster uuid) our requests are for, once known: peers of another
        # founding refuse them (sent as the frame's origin, with no instance).
        self.founding = ""

    def request(
        self,
        peer: str,
        req: ClientRequest,
        timeout: float,
        connect_timeout: float | None = None,
    ) -> ClientReply:
        """Send ``req`` to ``peer`` and wait for its reply. Raises ``TransportTimeout``.

        ``connect_timeout`` (default: ``timeout``) bounds the wait for a connection, so a
        peer that is down is given up on sooner than one that is merely slow to answer.
        """
        if self._closed:
            raise ChannelClosed("channel closed")
        deadline = time.monotonic() + timeout
        connect_by = min(deadline, time.monotonic() + (connect_timeout or timeout))
        sock = self._socket(peer)
        frame = self._encode(req)
        while True:
            if not sock.poll(remaining_ms(connect_by), zmq.POLLOUT):
                # One request at a time on this socket: a send queue cannot be full of our
                # own requests, so this is a missing connection (or a peer not reading).
                raise NotSent(f"no connection to {peer}")
            try:
                sock.send(frame, zmq.NOBLOCK)
                break
            except zmq.Again:
                continue
        while True:
            remaining = remaining_ms(deadline)
            if remaining <= 0 or not sock.poll(remaining, zmq.POLLIN):
                raise TransportTimeout(f"no reply from {peer} within {timeout}s")
            reply = self._reply_to(sock, req.request_id)
            if reply is not None:
                return reply

    def request_each(
        self,
        requests: Mapping[str, ClientRequest],
        timeout: float,
        enough: Callable[[dict[str, ClientReply]], bool] = lambda _replies: False,
        connect_timeout: float | None = None,
    ) -> tuple[dict[str, ClientReply], set[str]]:
        """Send every peer its request at once; gather the replies, by peer, until each
        has answered, ``enough`` says so, or ``timeout`` passes. Also returns the peers
        that had no connection within ``connect_timeout`` (default: ``timeout``): their
        requests were never sent."""
        if self._closed:
            raise ChannelClosed("channel closed")
        deadline = time.monotonic() + timeout
        connect_by = min(deadline, time.monotonic() + (connect_timeout or timeout))
        unconnected: set[str] = set()
        unsent = dict(requests)
        waiting: dict[zmq.Socket[Any], tuple[str, int]] = {}
        replies: dict[str, ClientReply] = {}
        while (unsent or waiting) and not enough(replies):
            for peer, req in list(unsent.items()):
                sock = self._socket(peer)
                try:
                    sock.send(self._encode(req), zmq.NOBLOCK)
                except zmq.Again:  # no connection yet (ZMQ_IMMEDIATE)
                    continue
                del unsent[peer]
                waiting[sock] = (peer, req.request_id)
            if unsent and time.monotonic() >= connect_by:
                unconnected.update(unsent)
                unsent.clear()
            remaining = remaining_ms(deadline)
            if remaining <= 0:
                break
            # Wait for a reply, or for a connection to come up (the send goes at once).
            poller = zmq.Poller()
            for sock in waiting:
                poller.register(sock, zmq.POLLIN)
            for peer in unsent:
                poller.register(self._socket(peer), zmq.POLLOUT)
            wait_ms = min(remaining, remaining_ms(connect_by)) if unsent else remaining
            for sock, events in poller.poll(wait_ms):
                if events & zmq.POLLIN and sock in waiting:
                    peer, request_id = waiting[sock]
                    reply = self._reply_to(sock, request_id)
                    if reply is not None:
                        replies[peer] = reply
                        del waiting[sock]
        return replies, unconnected

    def _reply_to(self, sock: zmq.Socket[Any], request_id: int) -> ClientReply | None:
        """The reply to ``request_id`` among the frames waiting on ``sock``, if there."""
        while True:
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return None
            try:
                decoded = decode_batch(
                    raw, cluster_id=self.cluster_id, max_frame_bytes=self._max_frame_bytes
                )
            except FrameError as exc:
                self.ignored += 1
                log.debug("ignored a reply: %s", exc.reason)
                continue
            for msg in decoded.messages:
                if isinstance(msg, ClientReply) and msg.request_id == request_id:
                    return msg
                self.ignored += 1

    def _encode(self, req: ClientRequest) -> bytes:
        origin = (self.founding, "") if self.founding else None
        return encode(req, cluster_id=self.cluster_id, sender=self.client_id, origin=origin)

    def close(self) -> None:
        """Close every socket. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._sockets.clear()

    def __enter__(self) -> ClientChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _socket(self, peer: str) -> zmq.Socket[Any]:
        sock = self._sockets.get(peer)
        if sock is None:
            sock = self._sockets[peer] = client_socket(
                self._ctx, peer, self._curve, self._max_frame_bytes, self._routes.get(peer)
            )
        return sock


def client_socket(
    ctx: zmq.Context[Any],
    peer: str,
    curve: CurveSettings | None,
    max_frame_bytes: int,
    address: str | None = None,
) -> Any:
    """A client's DEALER to ``peer`` (sync or asyncio, as ``ctx`` is), connected to
    ``address`` where that differs from the peer's id (a route: a proxy, a NAT)."""
    host, port = split_address(address or peer)
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.copy_threshold = COPY_THRESHOLD
    sock.immediate = True  # requests never queue for a peer that is not connected
    sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes + MAXMSGSIZE_SLACK)
    if ":" in host:
        sock.ipv6 = True
    if curve is not None and not client_curve(sock, curve, peer):
        sock.close(linger=0)
        raise TransportError(f"no CURVE public key for {peer} ({key_name(peer)}.key)")
    sock.connect(endpoint(host, port))
    return sock


def remaining_ms(deadline: float) -> int:
    return max(0, int((deadline - time.monotonic()) * 1000))

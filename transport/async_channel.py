"""The client side of the request/reply protocol for asyncio: many requests in flight.

One DEALER per peer, read by a callback on the event loop's selector that hands each
reply to the future waiting for its request id. Requests made in the same turn of the
event loop leave in one batch frame, so a client with thousands of requests in flight
costs the peer one decode per batch rather than per request.

The sockets are plain (blocking-API) pyzmq sockets used only with ``NOBLOCK``, watched
through their ``ZMQ_FD`` with ``loop.add_reader``: ``zmq.asyncio`` wraps every send and
receive in futures and extra loop turns, which cost more client CPU per request than all
the rest of a request's handling at one request in flight.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from typing import Any

import zmq

from .client_channel import client_socket
from .codec import DEFAULT_MAX_FRAME_BYTES, FrameError, decode_batch, encode_batches
from .curve import CurveSettings
from .errors import ChannelClosed, NotSent, TransportTimeout
from .messages import ClientReply, ClientRequest
from .sockets import ZMQ_EVENTS, ZMQ_POLLIN

log = logging.getLogger(__name__)

_RETRY_SEND_S = 0.001  # while a connection is being set up
# Frames read per reader callback before the loop gets a turn (the rest follow at once).
_MAX_READS_PER_CALLBACK = 256

# [loop time due, tie-breaker, the request's future (None once answered), peer, timeout,
#  request id]
_Deadline = list[Any]
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution


class AsyncClientChannel:
    """Use from one event loop; ``close()`` (or ``async with``) when done."""

    def __init__(
        self,
        cluster_id: str,
        client_id: str,
        curve: CurveSettings | None = None,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
    ) -> None:
        self.cluster_id = cluster_id
        self.client_id = client_id
        self._curve = curve
        self._max_frame_bytes = max_frame_bytes
        self._ctx = zmq.Context()
        self._sockets: dict[str, zmq.Socket[Any]] = {}
        self._fds: dict[str, int] = {}  # each socket's ZMQ_FD, watched by the loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: dict[int, asyncio.Future[ClientReply]] = {}
        # Per peer: requests not sent yet, with the loop time by which a connection must exist.
        self._outbox: dict[str, list[tuple[ClientRequest, float]]] = {}
        # Requests on the wire (sent, not answered): request id -> peer, and a count per
        # peer. A peer with requests on the wire is connected, so a send that would block
        # means its send queue is full: back-pressure, not a missing connection.
        self._sent: dict[int, str] = {}
        self._on_wire: dict[str, int] = {}
        self._flush_scheduled = False
        # Request deadlines: a heap served by one timer for the earliest, rather than a timer
        # per request (asyncio's TimerHandle was the biggest part of a request's client CPU).
        # An answered request clears its entry's future (so the heap holds no replies); cleared
        # entries are skipped when they come up, or pruned once they are most of the heap.
        self._deadlines: list[_Deadline] = []
        self._deadline_order = itertools.count()
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._closed = False
        self.ignored = 0
        self.founding = ""  # as ClientChannel.founding

    async def request(
        self,
        peer: str,
        req: ClientRequest,
        timeout: float,
        connect_timeout: float | None = None,
    ) -> ClientReply:
        """Send ``req`` and await its reply; raises ``TransportTimeout``."""
        if self._closed:
            raise ChannelClosed("channel closed")
        if req.request_id in self._waiting:
            raise ValueError(f"request id {req.request_id} is already in flight")
        self._socket(peer)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ClientReply] = loop.create_future()
        self._waiting[req.request_id] = future
        now = loop.time()
        connect_by = now + min(timeout, connect_timeout or timeout)
        self._outbox.setdefault(peer, []).append((req, connect_by))
        if len(self._waiting) == 1 and not self._flush_scheduled:
            self._flush()  # alone in flight: nothing to batch it with, so no loop turn first
        else:
            self._schedule_flush(loop, 0.0)
        deadline: _Deadline = [
            now + timeout,
            next(self._deadline_order),
            future,
            peer,
            timeout,
            req.request_id,
        ]
        self._add_deadline(loop, deadline)
        try:
            return await future
        finally:
            deadline[2] = None
            if self._waiting.get(req.request_id) is future:
                del self._waiting[req.request_id]
            sent_to = self._sent.pop(req.request_id, None)
            if sent_to is not None:
                self._on_wire[sent_to] -= 1

    def _add_deadline(self, loop: asyncio.AbstractEventLoop, deadline: _Deadline) -> None:
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self._waiting) + 1024:
            deadlines[:] = [d for d in deadlines if d[2] is not None]  # amortised O(1)
            heapq.heapify(deadlines)
        heapq.heappush(deadlines, deadline)
        if deadlines[0] is deadline:  # the new earliest: (re)arm the one timer
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._deadline_timer = loop.call_at(deadline[0], self._expire_due)

    def _expire_due(self) -> None:
        self._deadline_timer = None
        loop = asyncio.get_running_loop()
        # asyncio runs a timer up to its clock's resolution early: count that as due, or the
        # timer would re-arm for the same instant until the clock moves.
        now = loop.time() + _CLOCK_RESOLUTION
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            _, _, future, peer, timeout, request_id = heapq.heappop(deadlines)
            if future is not None and not future.done():
                if request_id in self._sent:
                    error = TransportTimeout(f"no reply from {peer} within {timeout}s")
                else:  # still queued behind a full send queue: it never left
                    error = NotSent(f"not sent to {peer} within {timeout}s (send queue full)", True)
                future.set_exception(error)
        if deadlines:
            self._deadline_timer = loop.call_at(deadlines[0][0], self._expire_due)

    def _schedule_flush(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        if self._flush_scheduled:
            return
        self._flush_scheduled = True
        if delay:
            loop.call_later(delay, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        pending = False
        for peer, queued in list(self._outbox.items()):
            live = [(r, by) for r, by in queued if not self._gone(r, peer, by, now)]
            if not live:
                self._outbox.pop(peer)
                continue
            frames = encode_batches(
                [r for r, _ in live],
                cluster_id=self.cluster_id,
                sender=self.client_id,
                max_frame_bytes=self._max_frame_bytes,
                origin=(self.founding, "") if self.founding else None,
            )
            sock = self._sockets[peer]
            sent = 0
            for frame, count in frames:
                try:
                    sock.send(frame, zmq.NOBLOCK)
                except zmq.Again:
                    # No connection yet (ZMQ_IMMEDIATE), or its send queue is full: try
                    # again shortly.
                    break
                except zmq.ZMQError as error:
                    log.warning("sending to %s failed: %s", peer, error)
                    break
                for r, _ in live[sent : sent + count]:
                    self._sent[r.request_id] = peer
                self._on_wire[peer] = self._on_wire.get(peer, 0) + count
                sent += count
            # ZMQ_FD is edge-triggered and a send can consume its edge: replies that came
            # meanwhile would wait for the next one unless read now.
            if sock.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN:
                loop.call_soon(self._on_readable, sock)
            if sent == len(live):
                self._outbox.pop(peer)
            else:
                self._outbox[peer] = live[sent:]
                pending = True
        if pending:
            self._schedule_flush(loop, _RETRY_SEND_S)

    def _gone(self, req: ClientRequest, peer: str, connect_by: float, now: float) -> bool:
        """Drop a queued request whose caller gave up or whose peer never connected."""
        future = self._waiting.get(req.request_id)
        if future is None or future.done():
            return True
        if now >= connect_by and not self._on_wire.get(peer):
            # Nothing of ours on the wire to it: no connection. With requests on the wire
            # the queue is merely full; this one waits, within its own deadline.
            future.set_exception(NotSent(f"no connection to {peer}"))
            return True
        return False

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None
        self._deadlines.clear()
        for future in self._waiting.values():  # no timer will end them now
            if not future.done():
                future.set_exception(ChannelClosed("channel closed"))
        if self._loop is not None:
            for fd in self._fds.values():
                self._loop.remove_reader(fd)
        self._fds.clear()
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._ctx.term()

    async def __aenter__(self) -> AsyncClientChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _socket(self, peer: str) -> zmq.Socket[Any]:
        sock = self._sockets.get(peer)
        if sock is not None:
            return sock
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("an AsyncClientChannel is used from one event loop only")
        sock = client_socket(self._ctx, peer, self._curve, self._max_frame_bytes)
        fd = sock.getsockopt(zmq.FD)
        loop.add_reader(fd, self._on_readable, sock)
        self._sockets[peer] = sock
        self._fds[peer] = fd
        return sock

    def _on_readable(self, sock: zmq.Socket[Any]) -> None:
        """Read every reply waiting on ``sock`` (its FD only says that something changed)."""
        if self._closed:
            return
        for _ in range(_MAX_READS_PER_CALLBACK):
            # EVENTS, not a receive until zmq.Again: it also re-arms the FD, and costs far
            # less than the exception.
            if not sock.getsockopt(ZMQ_EVENTS) & ZMQ_POLLIN:
                return
            try:
                raw = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_frame(raw)
        asyncio.get_running_loop().call_soon(self._on_readable, sock)  # more: after a turn

    def _on_frame(self, raw: bytes) -> None:
        try:
            decoded = decode_batch(
                raw, cluster_id=self.cluster_id, max_frame_bytes=self._max_frame_bytes
            )
        except FrameError as error:
            self.ignored += 1
            log.debug("ignored a reply: %s", error.reason)
            return
        waiting = self._waiting
        for msg in decoded.messages:
            future = waiting.get(msg.request_id) if isinstance(msg, ClientReply) else None
            if future is None or future.done():
                self.ignored += 1
                continue
            future.set_result(msg)

"""The client side of the request/reply protocol for asyncio: many requests in flight.

One DEALER per peer and one reader task per DEALER that hands each reply to the future
waiting for its request id. Requests made in the same turn of the event loop leave in one
batch frame, so a client with thousands of requests in flight costs the peer one decode
per batch rather than per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from typing import Any

import zmq
import zmq.asyncio

from .codec import DEFAULT_MAX_FRAME_BYTES, FrameError, decode_batch, encode_batches
from .messages import ClientReply, ClientRequest
from .zmq_transport import (
    ChannelClosed,
    CurveSettings,
    TransportTimeout,
    client_socket,
)

log = logging.getLogger(__name__)

_RETRY_SEND_S = 0.001  # while a connection is being set up

# [loop time due, tie-breaker, the request's future (None once answered), peer, timeout]
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
        self._ctx = zmq.asyncio.Context()
        self._sockets: dict[str, zmq.asyncio.Socket] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._waiting: dict[int, asyncio.Future[ClientReply]] = {}
        # Per peer: requests not sent yet, with the loop time by which a connection must exist.
        self._outbox: dict[str, list[tuple[ClientRequest, float]]] = {}
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
        self._schedule_flush(loop, 0.0)
        deadline: _Deadline = [now + timeout, next(self._deadline_order), future, peer, timeout]
        self._add_deadline(loop, deadline)
        try:
            return await future
        finally:
            deadline[2] = None
            if self._waiting.get(req.request_id) is future:
                del self._waiting[req.request_id]

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
            _, _, future, peer, timeout = heapq.heappop(deadlines)
            if future is not None and not future.done():
                future.set_exception(TransportTimeout(f"no reply from {peer} within {timeout}s"))
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
            )
            sock = self._sockets[peer]
            sent = 0
            for frame, count in frames:
                # On an asyncio socket a non-blocking send completes at once, its outcome
                # in the returned future.
                outcome = sock.send(frame, zmq.NOBLOCK)
                error = outcome.exception() if outcome.done() else None
                if isinstance(error, zmq.Again):
                    break  # no connection yet (ZMQ_IMMEDIATE): try again shortly
                if error is not None:
                    log.warning("sending to %s failed: %s", peer, error)
                    break
                sent += count
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
        if now >= connect_by:
            future.set_exception(TransportTimeout(f"no connection to {peer}"))
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
        for task in self._readers.values():
            task.cancel()
        for task in self._readers.values():
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for sock in self._sockets.values():
            sock.close(linger=0)
        self._ctx.term()

    async def __aenter__(self) -> AsyncClientChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _socket(self, peer: str) -> zmq.asyncio.Socket:
        sock = self._sockets.get(peer)
        if sock is not None:
            return sock
        sock = client_socket(self._ctx, peer, self._curve, self._max_frame_bytes)
        self._sockets[peer] = sock
        self._readers[peer] = asyncio.get_running_loop().create_task(self._read(sock))
        return sock

    async def _read(self, sock: zmq.asyncio.Socket) -> None:
        while True:
            raw = await sock.recv()
            try:
                decoded = decode_batch(
                    raw, cluster_id=self.cluster_id, max_frame_bytes=self._max_frame_bytes
                )
            except FrameError as error:
                self.ignored += 1
                log.debug("ignored a reply: %s", error.reason)
                continue
            for msg in decoded.messages:
                future = self._waiting.get(msg.request_id) if isinstance(msg, ClientReply) else None
                if future is None or future.done():
                    self.ignored += 1
                    continue
                future.set_result(msg)

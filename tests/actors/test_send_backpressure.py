"""A full send queue is back-pressure, not a missing connection: a request that cannot be
sent yet while others to the same peer are on the wire waits (within its own timeout)
instead of failing as "no connection", which made sessions mark a healthy leader failed.
A request that never left is reported as ``NotSent``, so a session knows it was not
applied. The peer is a real ROUTER on 127.0.0.1 (``tests.test_async_channel``'s)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq

import zraft.transport.async_channel as async_channel
from tests.transport.test_async_channel import CLUSTER, peer  # noqa: F401  (the fixture)
from zraft.transport import NotSent
from zraft.transport.async_channel import AsyncClientChannel
from zraft.transport.messages import ClientRequest


class Valve:
    """A client socket whose sends can be made to block (``zmq.Again``), as a full send
    queue does; everything else is the real socket's."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self.full = False

    def send(self, frame: bytes, flags: int = 0) -> None:
        if self.full:
            raise zmq.Again()
        self._sock.send(frame, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


@pytest.fixture
def valves(monkeypatch: pytest.MonkeyPatch) -> list[Valve]:
    made: list[Valve] = []
    real = async_channel.client_socket

    def wrapped(*args: Any) -> Valve:
        valve = Valve(real(*args))
        made.append(valve)
        return valve

    monkeypatch.setattr(async_channel, "client_socket", wrapped)
    return made


@pytest.mark.timeout(30)
def test_a_full_send_queue_waits_instead_of_failing_as_no_connection(
    peer: str,  # noqa: F811
    valves: list[Valve],
) -> None:
    async def scenario() -> None:
        async with AsyncClientChannel(CLUSTER, "client-bp") as channel:
            loop = asyncio.get_running_loop()
            held = asyncio.ensure_future(  # on the wire, never answered: connected
                channel.request(peer, ClientRequest(1, "write", "hold"), 5.0, 0.1)
            )
            await asyncio.sleep(0.2)
            valves[0].full = True
            started = loop.time()
            queued = asyncio.ensure_future(
                channel.request(peer, ClientRequest(2, "write", "answer"), 5.0, 0.1)
            )
            await asyncio.sleep(0.5)  # five connect timeouts: it must still be waiting
            assert not queued.done()
            valves[0].full = False  # the queue drains
            reply = await queued
            assert reply.result == "done" and loop.time() - started >= 0.5
            held.cancel()

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_a_request_that_never_left_is_not_sent(
    peer: str,  # noqa: F811
    valves: list[Valve],
) -> None:
    async def scenario() -> None:
        async with AsyncClientChannel(CLUSTER, "client-ns") as channel:
            # nothing on the wire to it: a blocked send is a missing connection
            channel._socket(peer)
            valves[0].full = True
            with pytest.raises(NotSent) as caught:
                await channel.request(peer, ClientRequest(1, "write", "answer"), 2.0, 0.1)
            assert not caught.value.queue_full
            valves[0].full = False
            await channel.request(peer, ClientRequest(2, "write", "answer"), 2.0, 0.1)
            # with a request on the wire, one stuck behind a full queue until its own
            # deadline never left either
            held = asyncio.ensure_future(
                channel.request(peer, ClientRequest(3, "write", "hold"), 5.0, 0.1)
            )
            await asyncio.sleep(0.2)
            valves[0].full = True
            with pytest.raises(NotSent) as caught:
                await channel.request(peer, ClientRequest(4, "write", "answer"), 0.5, 0.1)
            assert caught.value.queue_full
            held.cancel()

    asyncio.run(scenario())

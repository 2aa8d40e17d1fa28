"""AsyncClientChannel's request deadlines: one timer serves them all (a heap), so each
request must still time out at its own deadline, never before, and answered requests must
neither time out nor pile up. A real ROUTER on 127.0.0.1 plays the peer: it answers the
requests whose payload says so and ignores the others."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
import zmq

from zraft.session import AsyncLightSession, LightSession, SessionClosed, ZraftError
from zraft.transport import ChannelClosed, TransportTimeout, codec
from zraft.transport.async_channel import AsyncClientChannel
from zraft.transport.messages import ClientReply, ClientRequest

CLUSTER = "test-cluster"


@pytest.fixture
def peer() -> Iterator[str]:
    """A peer that answers requests whose payload is "answer", and nothing else."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    port = router.bind_to_random_port("tcp://127.0.0.1")
    stop = threading.Event()

    def serve() -> None:
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            if not poller.poll(20):
                continue
            identity, frame = router.recv_multipart()
            try:
                batch = codec.decode_batch(frame, cluster_id=CLUSTER, max_frame_bytes=1 << 20)
            except codec.FrameError:  # a test's mistake: fail it through a missing reply
                continue
            replies = [
                ClientReply(m.request_id, True, "done")
                for m in batch.messages
                if isinstance(m, ClientRequest) and m.payload == "answer"
            ]
            if replies:
                out = codec.encode_batch(replies, cluster_id=CLUSTER, sender="peer")
                router.send_multipart([identity, out])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)
        router.close(linger=0)
        ctx.term()


@pytest.mark.timeout(30)
def test_each_request_times_out_at_its_own_deadline(peer: str) -> None:
    async def scenario() -> None:
        async with AsyncClientChannel(CLUSTER, "client-1") as channel:
            loop = asyncio.get_running_loop()

            async def timed(request_id: int, payload: str, timeout: float) -> tuple[str, float]:
                started = loop.time()
                try:
                    reply = await channel.request(
                        peer, ClientRequest(request_id, "write", payload), timeout
                    )
                    return f"reply:{reply.result}", loop.time() - started
                except TransportTimeout:
                    return "timeout", loop.time() - started

            # Deadlines out of order: the later-made, shorter ones must not wait for the first.
            results = await asyncio.gather(
                timed(1, "ignore", 0.9),
                timed(2, "ignore", 0.3),
                timed(3, "answer", 0.5),
                timed(4, "ignore", 0.6),
            )
            outcomes = [r[0] for r in results]
            assert outcomes == ["timeout", "timeout", "reply:done", "timeout"]
            for (_, elapsed), timeout in zip(results, (0.9, 0.3, None, 0.6), strict=True):
                if timeout is not None:
                    assert timeout - 0.01 <= elapsed < timeout + 0.25

    asyncio.run(scenario())


@pytest.mark.timeout(60)
def test_answered_requests_neither_time_out_nor_pile_up(peer: str) -> None:
    async def scenario() -> None:
        async with AsyncClientChannel(CLUSTER, "client-2") as channel:
            ids = iter(range(1, 1_000_000))

            async def one() -> str:
                reply = await channel.request(peer, ClientRequest(next(ids), "w", "answer"), 30)
                return str(reply.result)

            for _ in range(20):
                assert set(await asyncio.gather(*(one() for _ in range(500)))) == {"done"}
            # The heap keeps no answered request's future (nor, through it, its reply).
            assert all(entry[2] is None for entry in channel._deadlines)
            # 10,000 answered requests with 30 s deadlines: the heap is pruned, not kept.
            assert len(channel._deadlines) <= 2 * 500 + 1024 + 1
            # A request cancelled by its caller leaves nothing waiting.
            task = asyncio.ensure_future(
                channel.request(peer, ClientRequest(next(ids), "w", "ignore"), 30)
            )
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert channel._waiting == {}

    started = time.monotonic()
    asyncio.run(scenario())
    assert time.monotonic() - started < 30  # nothing waited for a 30 s deadline


@pytest.mark.timeout(60)
def test_replies_in_many_frames_are_all_read(peer: str) -> None:
    """Requests sent one per loop turn get one reply frame each: far more frames than one
    reader callback takes, arriving while the channel keeps sending (a send may consume
    the edge of the socket's ZMQ_FD). Every request must still get its answer."""

    async def scenario() -> None:
        async with AsyncClientChannel(CLUSTER, "client-4") as channel:
            tasks = []
            for request_id in range(1, 2_001):
                request = ClientRequest(request_id, "w", "answer")
                tasks.append(asyncio.ensure_future(channel.request(peer, request, 20)))
                await asyncio.sleep(0)  # a turn of the loop: one frame per request
            replies = await asyncio.wait_for(asyncio.gather(*tasks), 20)
            assert [r.request_id for r in replies] == list(range(1, 2_001))
            assert channel._waiting == {}

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_close_ends_the_requests_in_flight(peer: str) -> None:
    async def scenario() -> None:
        channel = AsyncClientChannel(CLUSTER, "client-3")
        waiting = asyncio.ensure_future(
            channel.request(peer, ClientRequest(1, "w", "ignore"), 0.3)
        )
        await asyncio.sleep(0.05)
        await channel.close()
        with pytest.raises(ChannelClosed, match="channel closed"):
            await asyncio.wait_for(waiting, 2)

    asyncio.run(scenario())


@pytest.mark.timeout(30)
def test_a_closed_session_raises_session_closed(peer: str) -> None:
    """Calls still waiting when a session closes, and calls made after, raise SessionClosed:
    a ZraftError like every other client error, not the transport's own."""

    async def scenario() -> None:
        session = AsyncLightSession([peer], cluster_id=CLUSTER, timeout=5.0)
        waiting = asyncio.ensure_future(session.write("ignore"))
        await asyncio.sleep(0.1)
        await session.close()
        with pytest.raises(SessionClosed):
            await asyncio.wait_for(waiting, 2)  # at once, not after the 5 s timeout
        with pytest.raises(SessionClosed):
            await session.query("anything")

    asyncio.run(scenario())
    with LightSession([peer], cluster_id=CLUSTER, timeout=5.0) as session:
        pass
    with pytest.raises(SessionClosed) as info:
        session.write("after close")
    assert isinstance(info.value, ZraftError)

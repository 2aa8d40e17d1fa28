"""A leadership transfer lapses after an election timeout when its TimeoutNow is lost or the
target's campaign is beaten; ``transfer_leadership`` must then ask again, not wait out its
whole timeout on a transfer nobody is making. Two scripted ROUTERs on 127.0.0.1 play the
leader (it counts the transfers asked of it) and the target (it leads from the second)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import zmq

from zraft.session import AsyncLightSession, LightSession
from zraft.session.errors import NotLeader
from zraft.transport import codec
from zraft.transport.messages import ClientReply, ClientRequest

CLUSTER = "test-cluster"


@dataclass
class TwoPeers:
    leader: str
    target: str
    transfers_asked: int = 0
    lead_from: int = 2  # the target leads once this many transfers were asked
    ops_seen: list[str] = field(default_factory=list)


@pytest.fixture
def peers() -> Iterator[TwoPeers]:
    ctx = zmq.Context()
    routers = [ctx.socket(zmq.ROUTER) for _ in range(2)]
    ports = []
    for router in routers:
        router.linger = 0
        ports.append(router.bind_to_random_port("tcp://127.0.0.1"))
    world = TwoPeers(f"127.0.0.1:{ports[0]}", f"127.0.0.1:{ports[1]}")
    stop = threading.Event()

    def answer(is_leader: bool, request: ClientRequest) -> ClientReply:
        world.ops_seen.append(request.op)
        if request.op == "transfer" and is_leader:
            world.transfers_asked += 1
            return ClientReply(request.request_id, True, None)
        if request.op == "identity":
            return ClientReply(request.request_id, True, {"cluster_uuid": "founding-1"})
        if request.op == "status":
            leads = is_leader != (world.transfers_asked >= world.lead_from)
            return ClientReply(
                request.request_id, True, {"role": "leader" if leads else "follower"}
            )
        return ClientReply(request.request_id, False, "not the leader", "not_leader", world.leader)

    def serve() -> None:
        poller = zmq.Poller()
        for router in routers:
            poller.register(router, zmq.POLLIN)
        while not stop.is_set():
            for router, _ in poller.poll(20):
                identity, frame = router.recv_multipart()
                batch = codec.decode_batch(frame, cluster_id=CLUSTER, max_frame_bytes=1 << 20)
                replies = [
                    answer(router is routers[0], m)
                    for m in batch.messages
                    if isinstance(m, ClientRequest)
                ]
                out = codec.encode_batch(replies, cluster_id=CLUSTER, sender="peer")
                router.send_multipart([identity, out])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield world
    finally:
        stop.set()
        thread.join(5)
        for router in routers:
            router.close(linger=0)
        ctx.term()


@pytest.mark.timeout(30)
def test_a_lapsed_transfer_is_asked_for_again(peers: TwoPeers) -> None:
    with LightSession([peers.leader, peers.target], cluster_id=CLUSTER, timeout=10.0) as s:
        assert s.transfer_leadership(peers.target, timeout=10) == peers.target
    assert peers.transfers_asked == 2


@pytest.mark.timeout(30)
def test_a_lapsed_transfer_is_asked_for_again_by_the_async_session(peers: TwoPeers) -> None:
    async def scenario() -> None:
        session = AsyncLightSession([peers.leader, peers.target], cluster_id=CLUSTER, timeout=10)
        try:
            assert await session.transfer_leadership(peers.target, timeout=10) == peers.target
        finally:
            await session.close()

    asyncio.run(scenario())
    assert peers.transfers_asked == 2


@pytest.mark.timeout(30)
def test_a_transfer_that_never_happens_fails_at_its_deadline(peers: TwoPeers) -> None:
    peers.lead_from = 10**9
    s = LightSession([peers.leader, peers.target], cluster_id=CLUSTER, timeout=10.0)
    with s, pytest.raises(NotLeader, match="did not take over in time"):
        s.transfer_leadership(peers.target, timeout=2.5)
    # Asked again about once a second, not once for the whole wait nor in a tight loop.
    assert 2 <= peers.transfers_asked <= 4

"""The light session for asyncio applications, with many requests in flight at once.

    async with AsyncLightSession(peers) as s:
        await s.write(kv.put("k", 1))
        results = await asyncio.gather(*(s.write(kv.put(f"k{i}", i)) for i in range(1000)))

Concurrent writes each get their own sequence number; the cluster forgets a result once
every earlier write of this session has been answered too.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import Iterable, Sequence
from typing import Any

import tenacity

from zraft.core import Configuration
from zraft.transport import (
    AsyncClientChannel,
    ChannelClosed,
    ClientReply,
    CurveSettings,
    TransportTimeout,
)

from .errors import NotLeader, SessionClosed, UnreachablePeer
from .light import DEFAULT_ELECTION_TIMEOUT
from .requests import (
    RetryPolicy,
    SessionCore,
    TryAgain,
    change_payload,
    config_from_reply,
    interpret,
    members_from_reply,
    membership_payload,
    peers_from_status,
    pick_peer,
    retrying_kwargs,
    settle_pause,
)
from .tracker import LeaderTracker


class AsyncLightSession(SessionCore):
    def __init__(
        self,
        peers: Sequence[str],
        *,
        cluster_id: str = "zraft",
        election_timeout: float = DEFAULT_ELECTION_TIMEOUT,
        fail_timeout: float | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        curve: CurveSettings | None = None,
        client_id: str | None = None,
    ) -> None:
        self._configure(client_id, "a", election_timeout, fail_timeout, timeout, retry)
        self._channel = AsyncClientChannel(cluster_id, self.client_id, curve)
        self._seq = 0
        # Writes in flight: a min-heap of seqs plus the set of those answered but not yet
        # popped, so "acknowledged up to" costs O(log n) per write, not a scan.
        self._in_flight: list[int] = []
        self._answered: set[int] = set()
        self.tracker = LeaderTracker(peers, self.fail_timeout, election_timeout)

    @classmethod
    async def connect(cls, peer: str, **kwargs: Any) -> AsyncLightSession:
        """A session whose peers are read from the configuration ``peer`` knows."""
        session = cls([peer], **kwargs)
        try:
            status = await session._send(peer, "status", None, 2.0, 0, 0)
            session.tracker.set_peers(peers_from_status(status.result, peer))
        except TransportTimeout:
            await session.close()
            raise UnreachablePeer(peer) from None
        except BaseException:  # a malformed answer, or cancelled: no session to hand back
            await session.close()
            raise
        return session

    def _acked(self) -> int:
        """Every write up to this seq has its answer: the cluster may forget them."""
        heap = self._in_flight
        while heap and heap[0] in self._answered:
            self._answered.discard(heapq.heappop(heap))
        return heap[0] - 1 if heap else self._seq

    async def write(self, command: Any, timeout: float | None = None) -> Any:
        self._seq += 1
        seq = self._seq
        heapq.heappush(self._in_flight, seq)
        acked = self._acked()  # below this write's own seq
        try:
            return await self._call("write", command, timeout, seq, acked)
        finally:
            self._answered.add(seq)

    async def query(self, query: Any, timeout: float | None = None) -> Any:
        return await self._call("query", query, timeout)

    async def query_local(self, query: Any, peer: str | None = None, timeout: float = 2.0) -> Any:
        target = peer or self.tracker.leader
        return interpret(
            self.tracker, target, await self._send(target, "query_local", query, timeout, 0, 0)
        )

    async def status(self, peer: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        target = peer or self.tracker.leader
        reply = await self._send(target, "status", None, timeout, 0, 0)
        return interpret(self.tracker, target, reply)  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ membership

    async def set_new_conf(
        self,
        new_peers: Iterable[str],
        old_peers: Iterable[str] | None = None,
        learners: Iterable[str] = (),
        timeout: float | None = None,
    ) -> Configuration:
        """``LightSession.set_new_conf``."""
        payload = membership_payload(new_peers, old_peers, learners)
        return await self._set_members(payload, timeout)

    async def members(
        self, timeout: float | None = None, *, settled: bool = False
    ) -> Configuration:
        """``LightSession.members``: the leader's configuration; with ``settled``, once no
        change is under way (else ``NotStable`` at the timeout)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        while True:
            left = max(deadline - loop.time(), 0.0)
            config, is_settled = members_from_reply(await self._call("members", None, left))
            if is_settled or not settled:
                return config
            await asyncio.sleep(settle_pause(self.election_timeout, config, deadline - loop.time()))

    async def add_learner(self, peer: str, timeout: float | None = None) -> Configuration:
        return await self._change("add_learner", peer, timeout)

    async def promote(self, peer: str, timeout: float | None = None) -> Configuration:
        return await self._change("promote", peer, timeout)

    async def remove(self, peer: str, timeout: float | None = None) -> Configuration:
        return await self._change("remove", peer, timeout)

    async def transfer_leadership(self, target: str, timeout: float | None = None) -> str:
        """``LightSession.transfer_leadership``: returns once ``target`` leads."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        await self._call("transfer", target, timeout)
        while loop.time() < deadline:
            try:
                if (await self.status(target, timeout=0.5)).get("role") == "leader":
                    self.tracker.succeeded(target)
                    return target
            except Exception:  # the target may be busy campaigning
                pass
            await asyncio.sleep(0.02)
        raise NotLeader(f"{target} did not take over in time", None)

    async def _change(self, kind: str, peer: str, timeout: float | None) -> Configuration:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        payload = change_payload(kind, await self.members(timeout, settled=True), peer)
        return await self._set_members(payload, max(deadline - loop.time(), 0.0))

    async def _set_members(self, payload: dict[str, Any], timeout: float | None) -> Configuration:
        config = config_from_reply(await self._call("set_members", payload, timeout))
        self.tracker.set_peers(sorted(config.voters))
        return config

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncLightSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self, op: str, payload: Any, timeout: float | None, seq: int = 0, acked: int = 0
    ) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + budget
        try:  # the common case, without the cost of setting up retries
            return await self._attempt(op, payload, deadline, seq, acked)
        except TryAgain:
            pass
        left = deadline - asyncio.get_running_loop().time()
        async for attempt in tenacity.AsyncRetrying(**retrying_kwargs(self.retry, budget, left)):
            with attempt:
                return await self._attempt(op, payload, deadline, seq, acked)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(self, op: str, payload: Any, deadline: float, seq: int, acked: int) -> Any:
        peer = pick_peer(self.tracker)
        per_try = self._try_timeout(deadline - asyncio.get_running_loop().time())
        try:
            reply = await self._send(peer, op, payload, per_try, seq, acked)
        except TransportTimeout as error:
            self.tracker.failed(peer)
            raise TryAgain(f"{peer}: {error}") from None
        return interpret(self.tracker, peer, reply)

    async def _send(
        self, peer: str, op: str, payload: Any, timeout: float, seq: int, acked: int
    ) -> ClientReply:
        request = self._request(op, payload, seq, acked)
        try:  # per request: a plain try costs nothing, a context manager would
            return await self._channel.request(
                peer, request, timeout, connect_timeout=self.retry.connect_timeout
            )
        except ChannelClosed:
            raise SessionClosed("the session is closed") from None

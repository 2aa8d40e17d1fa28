"""The light session for asyncio applications, with many requests in flight at once.

    async with AsyncLightSession(peers) as s:
        await s.write(kv.put("k", 1))
        results = await asyncio.gather(*(s.write(kv.put(f"k{i}", i)) for i in range(1000)))

Concurrent writes each get their own sequence number; the cluster forgets a result once
every earlier write of this session has a known outcome too. ``await session.retry(error)``
sends a write whose outcome is unknown again, with the same seq (``LightSession.retry``).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import tenacity

from zraft.core import Configuration
from zraft.transport import (
    AsyncClientChannel,
    ChannelClosed,
    ClientReply,
    CurveSettings,
    NotSent,
    TransportError,
    TransportTimeout,
)

from .errors import (
    AllPeersFailed,
    ClientError,
    NotLeader,
    Overloaded,
    RequestTimeout,
    SessionClosed,
    TransportFailure,
    UnreachablePeer,
    WriteRequest,
    ZraftError,
)
from .founding import FOUNDING_ROUND
from .light import DEFAULT_ELECTION_TIMEOUT
from .requests import (
    DEFAULT_RESULTS_WINDOW,
    DEFAULT_RETRY_WINDOW,
    TRANSFER_ASK_AGAIN,
    CallState,
    RetryPolicy,
    SessionCore,
    TryAgain,
    change_payload,
    config_from_reply,
    finish_write_error,
    interpret,
    interpret_once,
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
        retry_window: float = DEFAULT_RETRY_WINDOW,
        cluster_uuid: str | None = None,
    ) -> None:
        self._configure(
            client_id, "a", election_timeout, fail_timeout, timeout, retry, retry_window,
            cluster_uuid,
        )  # fmt: skip
        self._channel = AsyncClientChannel(cluster_id, self.client_id, curve)
        self._channel.founding = self.cluster_uuid
        # Asking the peers their founding: one task that every call waits for (with its
        # own deadline), and what they answered so far.
        self._pinning: asyncio.Task[None] | None = None
        self._founding_answers: dict[str, Any] = {}
        self._is_closed = False
        # Writes held back on this side until they are within ``_window`` of ``acked``
        # (the leader would refuse them, and a flood of refusals is load of its own): a
        # heap of (seq, future), woken as answers come in, and by one timer meanwhile
        # (an unknown outcome's pin ends by time).
        self._window = DEFAULT_RESULTS_WINDOW
        # (a retry may hold the seq of a hold that ended: the count breaks ties)
        self._held: list[tuple[int, int, asyncio.Future[None]]] = []
        self._held_order = itertools.count()
        self._held_timer: asyncio.TimerHandle | None = None
        # When each peer last answered: a timeout from a peer that answered others since is
        # load, not failure.
        self._answered_at: dict[str, float] = {}
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
        """Every write up to this seq has a known outcome: the cluster may forget them."""
        return self._acks.acked()

    async def write(self, command: Any, timeout: float | None = None) -> Any:
        if self._is_closed:
            raise SessionClosed("the session is closed")
        request = WriteRequest("write", command, self.client_id, self._acks.issue())
        return await self._write_request(request, timeout, CallState())

    async def retry(self, error: ClientError, timeout: float | None = None) -> Any:
        """``LightSession.retry``: the write that raised ``error`` again, exactly once."""
        if self._is_closed:
            raise SessionClosed("the session is closed")
        request, maybe_applied = self._retry_request(error)
        return await self._write_request(request, timeout, CallState(maybe_applied))

    async def _write_request(
        self, request: WriteRequest, timeout: float | None, state: CallState
    ) -> Any:
        try:
            if request.seq - self._acks.acked() > self._window:
                timeout = await self._hold(request.seq, timeout)
            result = await self._call(request.op, request.payload, timeout, request.seq, state)
        except ClientError as error:
            finish_write_error(error, request, state, self._acks)
            self._release_held()
            raise
        except BaseException:  # cancelled: whether it went out is unknown
            self._acks.unknown(request.seq)
            self._release_held()
            raise
        self._acks.answered(request.seq)
        self._release_held()
        return result

    async def _hold(self, seq: int, timeout: float | None) -> float:
        """Wait until ``seq`` is within the window of ``acked``; the time left of the call
        (``Overloaded``, never sent, if none is)."""
        loop = asyncio.get_running_loop()
        budget = self.timeout if timeout is None else timeout
        started = loop.time()
        future: asyncio.Future[None] = loop.create_future()
        heapq.heappush(self._held, (seq, next(self._held_order), future))
        self._arm_held_timer()
        try:
            await asyncio.wait_for(future, budget)
        except TimeoutError:
            raise Overloaded(
                f"request {seq} waited {budget:.2f}s to be within {self._window} of its "
                f"session's acknowledged results ({self._acks.acked()}): not sent"
            ) from None
        finally:
            future.cancel()  # whichever way it ended, it is no longer held
        return max(0.0, budget - (loop.time() - started))

    def _release_held(self) -> None:
        held = self._held
        if not held:
            return
        limit = self._acks.acked() + self._window
        while held and (held[0][0] <= limit or held[0][2].done()):
            _, _, future = heapq.heappop(held)
            if not future.done():
                future.set_result(None)

    def _arm_held_timer(self) -> None:
        if self._held_timer is None:
            self._held_timer = asyncio.get_running_loop().call_later(0.1, self._held_tick)

    def _held_tick(self) -> None:
        self._held_timer = None
        self._release_held()
        if self._held:
            self._arm_held_timer()

    async def query(self, query: Any, timeout: float | None = None) -> Any:
        return await self._call("query", query, timeout)

    async def query_local(self, query: Any, peer: str | None = None, timeout: float = 2.0) -> Any:
        return await self._one_peer(peer, "query_local", query, timeout)

    async def status(self, peer: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        return await self._one_peer(peer, "status", None, timeout)  # type: ignore[no-any-return]

    async def _one_peer(self, peer: str | None, op: str, payload: Any, timeout: float) -> Any:
        """One request to one peer, no retries; ``RequestTimeout`` if it does not answer."""
        target = peer or self.tracker.leader
        if self._founding.needed(op):
            try:
                await self._await_founding(asyncio.get_running_loop().time() + timeout, timeout)
            except AllPeersFailed as error:  # this call's contract: it did not answer
                raise RequestTimeout(f"{target}: {error}") from None
        try:
            reply = await self._send(target, op, payload, timeout, 0, 0)
        except TransportTimeout as error:
            raise RequestTimeout(f"{target}: {error}") from None
        return interpret_once(self.tracker, target, reply, self._founding)

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
        """``LightSession.transfer_leadership``: returns once ``target`` leads (asking
        again every ``TRANSFER_ASK_AGAIN`` seconds while the target answers)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.timeout if timeout is None else timeout)
        asked_at, answering = -TRANSFER_ASK_AGAIN, True
        while (left := deadline - loop.time()) > 0:
            if answering and loop.time() - asked_at >= TRANSFER_ASK_AGAIN:
                await self._call("transfer", target, left)
                asked_at, answering = loop.time(), False
            try:
                status = await self.status(target, timeout=max(0.01, min(0.5, left)))
            except ZraftError:  # down, or busy campaigning
                status = {}
            else:
                answering = True
            if status.get("role") == "leader":
                self.tracker.succeeded(target)
                return target
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
        self._is_closed = True
        if self._pinning is not None:
            self._pinning.cancel()
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None
        await self._channel.close()

    async def __aenter__(self) -> AsyncLightSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _call(
        self,
        op: str,
        payload: Any,
        timeout: float | None,
        seq: int = 0,
        state: CallState | None = None,
    ) -> Any:
        budget = self.timeout if timeout is None else timeout
        deadline = asyncio.get_running_loop().time() + budget
        if self._founding.needed(op):
            await self._await_founding(deadline, budget)
        try:  # the common case, without the cost of setting up retries
            return await self._attempt(op, payload, deadline, seq, state)
        except TryAgain:
            pass
        left = deadline - asyncio.get_running_loop().time()
        retrying = tenacity.AsyncRetrying(**retrying_kwargs(self.retry_policy, budget, left))
        async for attempt in retrying:
            with attempt:
                return await self._attempt(op, payload, deadline, seq, state)
        raise AssertionError("unreachable: tenacity either returns or raises")

    async def _attempt(
        self, op: str, payload: Any, deadline: float, seq: int, state: CallState | None
    ) -> Any:
        peer = pick_peer(self.tracker, self._founding)
        loop = asyncio.get_running_loop()
        sent_at = loop.time()
        per_try = self._try_timeout(deadline - sent_at)
        # Every attempt carries the acknowledgements as they are now (they may have grown).
        acked = self._acks.acked() if seq else 0
        try:
            reply = await self._send(peer, op, payload, per_try, seq, acked)
        except TransportTimeout as error:  # NotSent included
            if not isinstance(error, NotSent) and self._answered_at.get(peer, -1.0) > sent_at:
                # It answered others since this went out: slow under load, not failed (with
                # thousands in flight, marking it failed sends them all elsewhere).
                if state is not None:
                    state.maybe_applied = True
                raise TryAgain(f"{peer}: {error}") from None
            raise self._send_failed(peer, error, state) from None
        except SessionClosed:
            if state is not None:
                state.maybe_applied = True  # closed while it was out
            raise
        self._answered_at[peer] = loop.time()
        limit = self._replied(reply, state)
        if limit is not None and limit < self._window:
            self._window = limit  # hold later writes back to the leader's limit
        return interpret(self.tracker, peer, reply, self._founding)

    async def _await_founding(self, deadline: float, budget: float) -> None:
        """Wait, until ``deadline``, for the founding to be pinned (by one task for all)."""
        loop = asyncio.get_running_loop()
        while not self._founding.uuid:
            if self._is_closed:
                raise SessionClosed("the session is closed")
            if self._pinning is None or self._pinning.done():
                self._pinning = loop.create_task(self._pin_founding(deadline))
            left = deadline - loop.time()
            if left <= 0:
                raise self._no_founding(self._founding_answers, budget)
            pinning = self._pinning
            try:
                await asyncio.wait_for(asyncio.shield(pinning), left)
            except (TimeoutError, RequestTimeout):
                continue  # another caller's wait ended; ours goes on while time is left
            except asyncio.CancelledError:
                if pinning.cancelled() and self._is_closed:  # by close(), not our caller
                    raise SessionClosed("the session is closed") from None
                raise

    async def _pin_founding(self, deadline: float) -> None:
        """``LightSession._pin_founding``, asking the peers concurrently."""
        loop = asyncio.get_running_loop()
        answers = self._founding_answers
        while (left := deadline - loop.time()) > 0:
            started = loop.time()
            connect = self.retry_policy.connect_timeout
            requests = self._identity_requests(answers)
            asking = {
                loop.create_task(
                    self._channel.request(peer, request, min(left, FOUNDING_ROUND), connect)
                ): peer
                for peer, request in requests.items()
            }
            pending = set(asking)
            unreachable = []
            try:
                while pending:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                    for task in done:
                        if task.exception() is None and task.result().ok:
                            answers[asking[task]] = task.result().result
                        elif isinstance(task.exception(), ChannelClosed):
                            raise SessionClosed("the session is closed")
                        elif isinstance(task.exception(), NotSent):
                            unreachable.append(asking[task])
                        elif isinstance(task.exception(), TransportError) and not isinstance(
                            task.exception(), TransportTimeout
                        ):  # no connection can be set up (a CURVE key)
                            raise TransportFailure(str(task.exception()))
                    if self._settles(answers, requests):
                        break  # settled, or members named that were not asked: ask them
            finally:
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            if self._pin_from(answers, self._channel):
                return
            self._unreachable(unreachable, answers)
            if not self._settles(answers, requests):  # nobody new to ask: not at once
                pause = FOUNDING_ROUND / 10 - (loop.time() - started)
                await asyncio.sleep(max(0.0, min(pause, left)))
        raise RequestTimeout("no founding agreed on in time")

    async def _send(
        self, peer: str, op: str, payload: Any, timeout: float, seq: int, acked: int
    ) -> ClientReply:
        request = self._request(op, payload, seq, acked)
        try:  # per request: a plain try costs nothing, a context manager would
            return await self._channel.request(
                peer, request, timeout, connect_timeout=self.retry_policy.connect_timeout
            )
        except ChannelClosed:
            raise SessionClosed("the session is closed") from None
        except TransportTimeout:
            raise
        except TransportError as error:  # not a timeout: no connection can be set up
            raise TransportFailure(f"{peer}: {error}") from None

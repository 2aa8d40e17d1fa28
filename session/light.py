"""The light session: a client that tracks the leader and the peers that failed lately.

    with LightSession(["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]) as s:
        s.write(kv.put("k", 1))
        s.query(kv.get("k"))           # linearizable (ReadIndex on the leader)
        s.query_local(kv.get("k"))     # whatever the asked peer has applied

Every write carries this session's client id and a sequence number; retries reuse them,
so a write is applied exactly once even when the leader fails mid-request. A write whose
outcome is unknown when its call gives up (the error's ``maybe_applied``) can be sent again
with the same seq: ``session.retry(error)``. One session serves one thread at a time (calls
are serialized by a lock); use ``AsyncLightSession`` for many requests in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import tenacity

from zraft.core import Configuration
from zraft.transport import (
    ChannelClosed,
    ClientChannel,
    ClientReply,
    CurveSettings,
    TransportError,
    TransportTimeout,
)

from .errors import (
    AllPeersFailed,
    ClientError,
    NotLeader,
    RequestTimeout,
    SessionClosed,
    TransportFailure,
    UnreachablePeer,
    WriteRequest,
    ZraftError,
)
from .founding import FOUNDING_ROUND
from .requests import (
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

DEFAULT_ELECTION_TIMEOUT = 0.5


class Written(NamedTuple):
    """A write's result and the log index of the entry that produced it. Indexes grow
    with every write, so the index of the write that took a lock is a fencing token."""

    result: Any
    index: int


class LightSession(SessionCore):
    def __init__(
        self,
        peers: str | Sequence[str],
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
        """``peers``: the cluster's peers, or one peer to read the configuration from.

        ``fail_timeout`` (default 2 × ``election_timeout``): how long a failed peer is
        skipped; ``timeout``: the default for each call; ``retry_window``: how long a write
        whose outcome is unknown can be retried exactly once (``retry``);
        ``cluster_uuid``: the founding to talk to (default: the one the peers settle on
        at the first call, ``founding.agreed_founding``; see ``cluster_uuid``).
        """
        self._configure(
            client_id, "s", election_timeout, fail_timeout, timeout, retry, retry_window,
            cluster_uuid,
        )  # fmt: skip
        self._channel = ClientChannel(cluster_id, self.client_id, curve)
        self._channel.founding = self.cluster_uuid
        self._lock = threading.RLock()
        self._is_closed = False
        self._last_index = 0  # of the last answered call (calls are serialized)
        if isinstance(peers, str):
            try:
                members = self._read_configuration(peers)
            except BaseException:  # unreachable, or a malformed answer: no session
                self._channel.close()
                raise
        else:
            members = list(peers)
        self.tracker = LeaderTracker(members, self.fail_timeout, election_timeout)

    # ------------------------------------------------------------------ data

    @property
    def peers(self) -> list[str]:
        return list(self.tracker.peers)

    def write(self, command: Any, timeout: float | None = None) -> Any:
        """Apply ``command`` through the leader; returns the backend's result."""
        return self._write("write", command, timeout)

    def retry(self, error: ClientError, timeout: float | None = None) -> Any:
        """Send the write that raised ``error`` again and return its result. While its
        outcome is unknown (``error.maybe_applied``) and within ``retry_window``, with the
        same client id and seq: applied at most once in all, and a first copy that was
        applied is answered with its own result. A write definitely not applied goes again
        as a new write. ``ResultForgotten`` if the window passed."""
        with self._lock:
            self._check_not_closed()
            request, maybe_applied = self._retry_request(error)
            return self._write_request(request, timeout, CallState(maybe_applied))

    @property
    def _acked(self) -> int:
        """The ``acked`` this session sends with its next write."""
        return self._acks.acked()

    def _write(self, op: str, payload: Any, timeout: float | None) -> Any:
        with self._lock:
            self._check_not_closed()
            request = WriteRequest(op, payload, self.client_id, self._acks.issue())
            return self._write_request(request, timeout, CallState())

    def _write_request(self, request: WriteRequest, timeout: float | None, state: CallState) -> Any:
        try:
            result = self._call(request.op, request.payload, timeout, request.seq, state)
        except ClientError as error:
            finish_write_error(error, request, state, self._acks)
            raise
        except BaseException:  # interrupted: whether it went out is unknown
            self._acks.unknown(request.seq)
            raise
        self._acks.answered(request.seq)
        return result

    def _check_not_closed(self) -> None:
        if self._is_closed:
            raise SessionClosed("the session is closed")

    def write_indexed(self, command: Any, timeout: float | None = None) -> Written:
        """``write``, also returning the log index of the entry that answered it."""
        with self._lock:
            return Written(self.write(command, timeout), self._last_index)

    def query(self, query: Any, timeout: float | None = None) -> Any:
        """A linearizable read: reflects every write acknowledged before it began."""
        return self._call("query", query, timeout)

    def query_local(self, query: Any, peer: str | None = None, timeout: float = 2.0) -> Any:
        """Read one peer's current state without any check (fast, possibly stale)."""
        with self._lock:
            return self._one_peer(peer, "query_local", query, timeout)

    def status(self, peer: str | None = None, timeout: float = 2.0) -> dict[str, Any]:
        with self._lock:
            return self._one_peer(peer, "status", None, timeout)  # type: ignore[no-any-return]

    def _one_peer(self, peer: str | None, op: str, payload: Any, timeout: float) -> Any:
        """One request to one peer, no retries; ``RequestTimeout`` if it does not answer."""
        target = peer or self.tracker.leader
        if self._founding.needed(op):
            try:
                self._pin_founding(time.monotonic() + timeout, timeout)
            except AllPeersFailed as error:  # this call's contract: it did not answer
                raise RequestTimeout(f"{target}: {error}") from None
        try:
            reply = self._send(target, op, payload, timeout, 0, 0)
        except TransportTimeout as error:
            raise RequestTimeout(f"{target}: {error}") from None
        return interpret_once(self.tracker, target, reply, self._founding)

    # ------------------------------------------------------------------ membership

    def set_new_conf(
        self,
        new_peers: Iterable[str],
        old_peers: Iterable[str] | None = None,
        learners: Iterable[str] = (),
        timeout: float | None = None,
    ) -> Configuration:
        """Change the voters by joint consensus; returns once the new configuration commits.

        ``old_peers``, if given, must be the current voters (else ``PeersChanged``); a
        change already under way gives ``NotStable``.
        """
        return self._set_members(membership_payload(new_peers, old_peers, learners), timeout)

    def members(self, timeout: float | None = None, *, settled: bool = False) -> Configuration:
        """The leader's configuration: the one in force, which applies from the moment it
        is appended, before it commits (a follower's copy may lag, so only the leader is
        asked).

        With ``settled``, waits until no change is under way (the configuration is
        committed and not joint) and raises ``NotStable`` if one still is at the timeout.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            left = deadline - time.monotonic()
            config, is_settled = members_from_reply(self._call("members", None, max(left, 0.0)))
            if is_settled or not settled:
                return config
            pause = settle_pause(self.election_timeout, config, deadline - time.monotonic())
            time.sleep(pause)

    def add_learner(self, peer: str, timeout: float | None = None) -> Configuration:
        """Add ``peer`` as a learner: it receives the log but does not vote."""
        return self._change("add_learner", peer, timeout)

    def promote(self, peer: str, timeout: float | None = None) -> Configuration:
        """Make learner (or new peer) ``peer`` a voter."""
        return self._change("promote", peer, timeout)

    def remove(self, peer: str, timeout: float | None = None) -> Configuration:
        """Take ``peer`` out of the configuration; it stops itself once that commits."""
        return self._change("remove", peer, timeout)

    def _change(self, kind: str, peer: str, timeout: float | None) -> Configuration:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        payload = change_payload(kind, self.members(timeout, settled=True), peer)
        return self._set_members(payload, max(deadline - time.monotonic(), 0.0))

    def _set_members(self, payload: dict[str, Any], timeout: float | None) -> Configuration:
        config = config_from_reply(self._call("set_members", payload, timeout))
        self.tracker.set_peers(sorted(config.voters))
        return config

    def transfer_leadership(self, target: str, timeout: float | None = None) -> str:
        """Ask the leader to hand over to ``target``; returns once ``target`` leads.

        A transfer lapses after an election timeout (its TimeoutNow lost, the target's
        campaign beaten), so it is asked for again every ``TRANSFER_ASK_AGAIN`` seconds,
        but only while the target answers: the leader takes no writes while a transfer is
        under way, and one to a peer that is down would only hold them up."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        asked_at, answering = -TRANSFER_ASK_AGAIN, True
        while (left := deadline - time.monotonic()) > 0:
            if answering and time.monotonic() - asked_at >= TRANSFER_ASK_AGAIN:
                self._call("transfer", target, left)
                asked_at, answering = time.monotonic(), False
            try:
                status = self.status(target, timeout=max(0.01, min(0.5, left)))
            except ZraftError:  # down, or busy campaigning
                status = {}
            else:
                answering = True
            if status.get("role") == "leader":
                self.tracker.succeeded(target)
                return target
            time.sleep(0.02)
        raise NotLeader(f"{target} did not take over in time", None)

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        self._is_closed = True
        self._channel.close()

    def __enter__(self) -> LightSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(
        self,
        op: str,
        payload: Any,
        timeout: float | None,
        seq: int = 0,
        state: CallState | None = None,
    ) -> Any:
        """``op`` with retries; a write (``seq``) records in ``state`` whether an attempt
        may have reached a leader unanswered."""
        budget = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        with self._lock:
            if self._founding.needed(op):
                self._pin_founding(deadline, budget)
            try:  # the common case, without the cost of setting up retries
                return self._attempt(op, payload, deadline, seq, state)
            except TryAgain:
                pass
            left = deadline - time.monotonic()
            for attempt in tenacity.Retrying(**retrying_kwargs(self.retry_policy, budget, left)):
                with attempt:
                    return self._attempt(op, payload, deadline, seq, state)
        raise AssertionError("unreachable: tenacity either returns or raises")

    def _attempt(
        self, op: str, payload: Any, deadline: float, seq: int, state: CallState | None
    ) -> Any:
        peer = pick_peer(self.tracker, self._founding)
        per_try = self._try_timeout(deadline - time.monotonic())
        # Every attempt carries the acknowledgements as they are now (they may have grown).
        acked = self._acks.acked() if seq else 0
        try:
            reply = self._send(peer, op, payload, per_try, seq, acked)
        except TransportTimeout as error:  # NotSent included
            raise self._send_failed(peer, error, state) from None
        except SessionClosed:
            if state is not None:
                state.maybe_applied = True  # closed while it was out
            raise
        self._replied(reply, state)
        result = interpret(self.tracker, peer, reply, self._founding)
        self._last_index = reply.index
        return result

    def _pin_founding(self, deadline: float, budget: float) -> None:
        """Ask the peers their founding until their answers settle on one, and pin it
        (see ``zraft.session.founding``)."""
        answers: dict[str, Any] = {}
        while (left := deadline - time.monotonic()) > 0:
            started = time.monotonic()
            requests = self._identity_requests(answers)

            def enough(replies: dict[str, ClientReply], asked: Any = requests) -> bool:
                got = {peer: reply.result for peer, reply in replies.items() if reply.ok}
                return self._settles({**answers, **got}, asked)

            try:
                replies, unreachable = self._channel.request_each(
                    requests,
                    min(left, FOUNDING_ROUND),
                    enough,
                    connect_timeout=self.retry_policy.connect_timeout,
                )
            except ChannelClosed:
                raise SessionClosed("the session is closed") from None
            except TransportError as error:  # no connection can be set up (a CURVE key)
                raise TransportFailure(str(error)) from None
            answers.update((peer, r.result) for peer, r in replies.items() if r.ok)
            if self._pin_from(answers, self._channel):
                return
            self._unreachable(unreachable, answers)
            if not self._settles(answers, requests):  # nobody new to ask: not at once
                pause = FOUNDING_ROUND / 10 - (time.monotonic() - started)
                time.sleep(max(0.0, min(pause, left)))
        raise self._no_founding(answers, budget)

    def _send(
        self, peer: str, op: str, payload: Any, timeout: float, seq: int, acked: int
    ) -> ClientReply:
        request = self._request(op, payload, seq, acked)
        try:  # per request: a plain try costs nothing, a context manager would
            return self._channel.request(
                peer, request, timeout, connect_timeout=self.retry_policy.connect_timeout
            )
        except ChannelClosed:
            raise SessionClosed("the session is closed") from None
        except TransportTimeout:
            raise
        except TransportError as error:  # not a timeout: no connection can be set up
            raise TransportFailure(f"{peer}: {error}") from None

    def _read_configuration(self, peer: str) -> list[str]:
        try:
            reply = self._send(peer, "status", None, max(1.0, 2 * self.election_timeout), 0, 0)
        except TransportTimeout:
            raise UnreachablePeer(peer) from None
        return peers_from_status(reply.result, peer)

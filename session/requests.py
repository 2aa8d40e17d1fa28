"""What the sync and asyncio sessions share: retry policy, peer choice, reply handling.

An attempt picks a peer with the ``LeaderTracker``, sends, and turns the reply into a
result, a terminal error, or ``TryAgain`` (tenacity retries those, within the caller's
timeout, with the back-off of ``RetryPolicy``).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import tenacity

from zraft.core import Configuration
from zraft.transport import (
    NOT_FOUNDED,
    OTHER_FOUNDING,
    ClientReply,
    ClientRequest,
    NotSent,
    TransportError,
)

from .acks import DEFAULT_RETRY_WINDOW, AckTracker, results_limit
from .errors import (
    AllPeersFailed,
    BackendError,
    ClientError,
    ClusterExists,
    MalformedReply,
    NotLeader,
    NotRetryable,
    NotStable,
    NotSupported,
    OtherFounding,
    Overloaded,
    PeersChanged,
    Rejected,
    RequestTimeout,
    ResultForgotten,
    SessionExpired,
    WriteRequest,
)
from .founding import FoundingPin, agreed_founding, describe_answers, peers_to_ask
from .tracker import LeaderTracker


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a session retries. Every retry of a write reuses its id: never applied twice."""

    attempt_timeout: float | None = None  # one try at one peer; default: election timeout
    connect_timeout: float = 0.2  # a peer that is down is given up on this fast
    initial_backoff: float = 0.005
    max_backoff: float = 0.25
    multiplier: float = 2.0


class TryAgain(Exception):
    """This attempt failed in a way another attempt may fix; ``final`` is the error to
    raise if no time is left for one (default: ``RequestTimeout``)."""

    def __init__(self, why: str, wait: float = 0.0, final: ClientError | None = None) -> None:
        super().__init__(why)
        self.wait = wait
        self.final = final


# Wait before sending a write again that was too far ahead of its session's acknowledged
# results: its earlier writes' answers must come first.
TOO_FAR_AHEAD_WAIT = 0.02
# How long a leadership transfer is waited for before it is asked for again (it lapses
# after an election timeout; asking while one is under way changes nothing).
TRANSFER_ASK_AGAIN = 1.0
# How far ahead of its acknowledged results a session sends writes, until a leader's
# refusal names its own limit: the server's default.
DEFAULT_RESULTS_WINDOW = 4_096


class CallState:
    """What one write call learned across its attempts."""

    __slots__ = ("maybe_applied",)

    def __init__(self, maybe_applied: bool = False) -> None:
        # True once an attempt may have reached a leader without its answer coming back.
        self.maybe_applied = maybe_applied


def finish_write_error(
    error: ClientError, request: WriteRequest, state: CallState, acks: AckTracker
) -> None:
    """Label a write's error with what it says about the write, and settle its seq."""
    error.request = request
    if isinstance(error, Rejected):
        error.maybe_applied = False  # the backend's own answer to this very seq
    else:
        error.maybe_applied = state.maybe_applied or isinstance(error, ResultForgotten)
    if error.maybe_applied:
        acks.unknown(request.seq)
    else:
        acks.answered(request.seq)


class SessionCore:
    """What the sync and asyncio sessions hold alike."""

    tracker: LeaderTracker

    def _configure(
        self,
        client_id: str | None,
        prefix: str,
        election_timeout: float,
        fail_timeout: float | None,
        timeout: float,
        retry: RetryPolicy | None,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        cluster_uuid: str | None = None,
    ) -> None:
        self._founding = FoundingPin(cluster_uuid)
        self.client_id = client_id or f"{prefix}-{uuid.uuid4().hex}"
        self.election_timeout = election_timeout
        self.fail_timeout = fail_timeout if fail_timeout is not None else 2 * election_timeout
        self.timeout = timeout
        self.retry_policy = retry or RetryPolicy()
        self._request_ids = itertools.count(1)
        self._acks = AckTracker(retry_window)

    @property
    def cluster_uuid(self) -> str:
        """The founding this session's requests are for ("" until its first request that
        needs one): given as ``cluster_uuid=``, or the one the peers settle on."""
        return self._founding.uuid

    def _identity_requests(self, answers: dict[str, Any]) -> dict[str, ClientRequest]:
        """An ``identity`` request for each peer to ask (``founding.peers_to_ask``)."""
        return {
            peer: self._request("identity", {}, 0, 0)
            for peer in peers_to_ask(answers, self.tracker.peers)
        }

    def _settles(self, answers: dict[str, Any], asked: Iterable[str]) -> bool:
        """Whether asking may stop for now: the answers settle, or they name members
        not asked yet (asked next, at once)."""
        listed = self.tracker.peers
        if agreed_founding(answers, listed) is not None:
            return True
        return bool(set(peers_to_ask(answers, listed)) - set(asked) - answers.keys())

    def _pin_from(self, answers: dict[str, Any], channel: Any) -> bool:
        """Pin the founding the answers settle on, if they do."""
        uuid = agreed_founding(answers, self.tracker.peers)
        if uuid is None:
            return False
        self._founding.uuid = channel.founding = uuid
        return True

    def _unreachable(self, peers: Iterable[str], answers: dict[str, Any]) -> None:
        """Asking the founding, ``peers`` had no connection: failed, as for any request;
        ``AllPeersFailed`` if every listed peer has, and none answered."""
        listed = set(self.tracker.peers)
        for peer in peers:
            if peer in listed:  # (a member an answer named is not the session's to track)
                self.tracker.failed(peer)
        if not answers and self.tracker.all_failed():
            raise AllPeersFailed(
                f"every peer failed in the last {self.tracker.fail_timeout:.2f}s "
                "(asking which founding they belong to)"
            )

    def _no_founding(self, answers: dict[str, Any], budget: float) -> RequestTimeout:
        listed = self.tracker.peers
        return RequestTimeout(
            f"the peers did not settle on one founding of the cluster within {budget:.2f}s "
            f"({describe_answers(answers, listed)}; see docs/api.md, 'Which founding a "
            "session talks to')"
        )

    @property
    def retry_window(self) -> float:
        """How long a write whose outcome is unknown can still be retried exactly once."""
        return self._acks.retry_window

    def abandon(self, error: ClientError) -> None:
        """Give up on a write whose outcome is unknown: the cluster may forget its result
        (until then it keeps every later write's result too, and slows this session down
        once they are ``max_results_per_client``)."""
        request = error.request
        if request is not None and request.client_id == self.client_id:
            self._acks.release(request.seq)

    def _retry_request(self, error: ClientError) -> tuple[WriteRequest, bool]:
        """The request a ``retry(error)`` sends, and whether it may have been applied:
        the same seq while that is pinned; a new one for a write definitely not applied."""
        request = error.request
        if request is None:
            raise NotRetryable(f"not a write's error, nothing to retry: {error!r}")
        if request.client_id != self.client_id:
            raise NotRetryable("a write is retried by the session that made it")
        if self._acks.reopen(request.seq):
            return request, error.maybe_applied
        if error.maybe_applied:
            forgotten = ResultForgotten(
                f"request {request.seq}'s outcome is unknown and its retry window passed "
                "(or it was abandoned): the cluster may have forgotten it"
            )
            forgotten.request = request
            raise forgotten
        # Definitely not applied: a new write of the same command is just as exact.
        return WriteRequest(request.op, request.payload, self.client_id, self._acks.issue()), False

    @property
    def leader(self) -> str:
        """The peer this session believes leads (confirmed by the last successful call)."""
        return self.tracker.leader

    def _send_failed(self, peer: str, error: TransportError, state: CallState | None) -> TryAgain:
        """What a failed send says, for the sync and asyncio attempts alike: one that never
        left tells nothing about the write (and a full send queue nothing about the peer);
        one sent and unanswered may be in the log."""
        if isinstance(error, NotSent):
            if not error.queue_full:
                self.tracker.failed(peer)
        else:
            if state is not None:
                state.maybe_applied = True
            self.tracker.failed(peer)
        return TryAgain(f"{peer}: {error}")

    def _replied(self, reply: ClientReply, state: CallState | None) -> int | None:
        """Note what a reply says about the write; the leader's results limit if it named
        one (a ``too_far_ahead`` refusal)."""
        if state is not None and reply.error == "retry":
            state.maybe_applied = True  # proposed, then overtaken: it may still commit
        elif reply.error == "too_far_ahead":
            limit = results_limit(reply)
            self._acks.learn_limit(limit)  # pins give way sooner
            return limit
        return None

    def _request(self, op: str, payload: Any, seq: int, acked: int) -> ClientRequest:
        """The next request of this session (a fresh request id)."""
        return ClientRequest(next(self._request_ids), op, payload, self.client_id, seq, acked)

    def _try_timeout(self, remaining: float) -> float:
        """How long one try at one peer may take."""
        if remaining <= 0:
            raise TryAgain("out of time")
        return min(remaining, self.retry_policy.attempt_timeout or max(self.election_timeout, 0.2))


def membership_payload(
    new_peers: Iterable[str], old_peers: Iterable[str] | None, learners: Iterable[str]
) -> dict[str, Any]:
    payload: dict[str, Any] = {"voters": sorted(set(new_peers)), "learners": sorted(learners)}
    if old_peers is not None:
        payload["old"] = sorted(set(old_peers))
    return payload


def change_payload(kind: str, config: Configuration, peer: str) -> dict[str, Any]:
    """The ``set_members`` payload that makes ``peer`` a learner (``add_learner``), a voter
    (``promote``) or neither (``remove``), starting from ``config``; it names the voters it
    started from, so the leader refuses it if they changed meanwhile."""
    voters, learners = config.voters, config.learners
    if kind == "add_learner":
        new, learners = voters, learners | {peer}
    elif kind == "promote":
        new, learners = voters | {peer}, learners - {peer}
    elif kind == "remove":
        new, learners = voters - {peer}, learners - {peer}
    else:
        raise ValueError(f"unknown membership change {kind!r}")
    return membership_payload(new, voters, learners)


def config_from_reply(raw: Any) -> Configuration:
    """A configuration a peer sent; ``MalformedReply`` if it is not one."""
    try:
        return Configuration.from_wire(raw)
    except ValueError as error:
        raise MalformedReply(f"not a configuration: {error}") from None


def peers_from_status(status: Any, asked: str) -> list[str]:
    """The voters a peer's status names, the leader it knows first."""
    if not isinstance(status, dict):
        raise MalformedReply(f"{asked}'s status is not a mapping")
    voters = sorted(config_from_reply(status.get("config")).voters) or [asked]
    leader = status.get("leader")
    return ([leader] if leader in voters else []) + [v for v in voters if v != leader]


def members_from_reply(result: Any) -> tuple[Configuration, bool]:
    """The configuration and its ``settled`` flag from a ``members`` reply."""
    if not isinstance(result, dict) or not isinstance(result.get("settled"), bool):
        raise MalformedReply(f"malformed members reply: {result!r:.200}")
    return config_from_reply(result.get("config")), result["settled"]


def settle_pause(election_timeout: float, config: Configuration, left: float) -> float:
    """How long to wait before asking again whether a configuration change has settled;
    ``NotStable`` if the time left would not cover it."""
    pause = min(0.05, election_timeout / 4)
    if left <= pause:
        raise NotStable(f"a configuration change is still under way: {config}")
    return pause


def pick_peer(tracker: LeaderTracker, founding: FoundingPin | None = None) -> str:
    peer = tracker.choose()
    if peer is not None:
        return peer
    if tracker.all_failed():
        if founding is not None and founding.others.keys() >= set(tracker.peers):
            raise founding.all_refused()
        raise AllPeersFailed(f"every peer failed in the last {tracker.fail_timeout:.2f}s")
    raise TryAgain("every peer said 'not leader' lately", tracker.wait_time())


def interpret(
    tracker: LeaderTracker, peer: str, reply: ClientReply, founding: FoundingPin | None = None
) -> Any:
    """The result of a reply, or the right exception."""
    if reply.ok:
        tracker.succeeded(peer)
        return reply.result
    code = reply.error or "error"
    reason = str(reply.result) if reply.result is not None else code
    if code == OTHER_FOUNDING:
        tracker.failed(peer)  # skipped, as a failed peer is: others may be of ours
        final = founding.refused_by(peer, reason) if founding else OtherFounding(reason)
        raise TryAgain(f"{peer} is of another founding", 0.0, final)
    if code == "not_leader" or code == NOT_FOUNDED:  # (a joiner may lead one day)
        tracker.not_leader(peer, reply.leader)
        raise TryAgain(f"{peer} is not the leader")
    if code == "retry":
        raise TryAgain(f"{peer} asked for a retry", 0.01)
    if code == "too_far_ahead":
        tracker.succeeded(peer)
        reason = str(reply.result[0]) if isinstance(reply.result, list) else reason
        raise TryAgain(reason, TOO_FAR_AHEAD_WAIT, Overloaded(reason))
    tracker.succeeded(peer)  # it answered as leader would: keep talking to it
    if code == "already_present":
        raise ClusterExists(peer)
    error = FINAL_ERRORS.get(code)
    if error is None:
        raise Rejected(reason, code)  # the backend's refusal, by whatever code it names
    raise error(reason, code) if issubclass(error, Rejected) else error(reason)


# A leader's final answers (no retry helps) by error code, and what each raises; anything
# else is the backend's refusal (``Rejected``).
FINAL_ERRORS: dict[str, type[ClientError]] = {
    "not_supported": NotSupported,
    "backend_error": BackendError,
    "peers_changed": PeersChanged,
    "not_stable": NotStable,
    "session_expired": SessionExpired,
    "overloaded": Overloaded,
    "forgotten": ResultForgotten,
}


def interpret_once(
    tracker: LeaderTracker, peer: str, reply: ClientReply, founding: FoundingPin | None = None
) -> Any:
    """``interpret`` for a request made once to one peer: an answer that asks for another
    attempt is that attempt's error."""
    try:
        return interpret(tracker, peer, reply, founding)
    except TryAgain as again:
        raise again.final or NotLeader(str(again), reply.leader) from None


def _wait(policy: RetryPolicy) -> Any:
    backoff = tenacity.wait_exponential(
        multiplier=policy.initial_backoff, max=policy.max_backoff, exp_base=policy.multiplier
    )

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        hint = error.wait if isinstance(error, TryAgain) else 0.0
        # Switching peers costs nothing; trying the same ones again backs off.
        return max(hint, backoff(state) if state.attempt_number > 3 else 0.0)

    return wait


def retrying_kwargs(policy: RetryPolicy, timeout: float, left: float) -> dict[str, Any]:
    """Retries for a call of ``timeout`` seconds with ``left`` of them still to spend (the
    first, unretried attempt has had the rest): tenacity's clock starts now."""
    return {
        "stop": tenacity.stop_after_delay(max(0.0, left)),
        "wait": _wait(policy),
        "retry": tenacity.retry_if_exception_type(TryAgain),
        "retry_error_callback": _timed_out(timeout),
    }


def _timed_out(timeout: float) -> Any:
    def fail(state: tenacity.RetryCallState) -> Any:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TryAgain) and error.final is not None:
            raise error.final
        raise RequestTimeout(f"no answer within {timeout:.2f}s (last: {error})")

    return fail

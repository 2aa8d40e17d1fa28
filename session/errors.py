"""Every error a zraft client raises: one hierarchy, never bare tuples.

What an error says about a write (docs/api.md, "Errors"): ``maybe_applied`` is True when
some attempt of it may have reached a leader without an answer coming back (its outcome is
unknown: ``session.retry(error)`` sends the same request again, applied at most once);
False when it was definitely not applied, or definitely answered by the backend
(``Rejected`` and its kind). ``request`` is the write itself, for ``retry``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """A write as sent: its op, payload and the (client id, seq) that make it
    exactly-once. Carried by the error a write raised, so it can be sent again."""

    op: str
    payload: Any
    client_id: str
    seq: int


class ZraftError(Exception):
    """Base of everything zraft raises on purpose."""


class ClientError(ZraftError):
    """A request did not succeed."""

    # Set on the errors of writes (see the module's docstring); class defaults otherwise.
    request: WriteRequest | None = None
    maybe_applied: bool = False


class RequestTimeout(ClientError, TimeoutError):
    """No answer in time. For a write: if ``maybe_applied``, its outcome is unknown and
    ``session.retry(error)`` sends the same request again (exactly once: same client id and
    seq); if not, no attempt reached a leader that took it, and it was not applied."""


class AllPeersFailed(ClientError):
    """Every peer failed recently (down, unreachable, or not answering). For a write, see
    ``maybe_applied``: an earlier attempt may have reached a peer that then failed."""


class NotRetryable(ZraftError, ValueError):
    """``retry`` was given an error it cannot retry: not a write's, or another session's
    (a caller's mistake; nothing was sent)."""


class ResultForgotten(ClientError):
    """The cluster no longer has this write's result, so a retry cannot tell whether it
    was applied: the session acknowledged it (its retry window passed, or it was
    abandoned). Not a backend refusal; the write may have been applied."""

    maybe_applied = True


class TransportFailure(ClientError):
    """The client could not set up a connection at all (e.g. no CURVE key for a peer)."""


class NotLeader(ClientError):
    """The peer asked is not the leader (only raised where no retry is possible)."""

    def __init__(self, message: str, leader: str | None = None) -> None:
        super().__init__(message)
        self.leader = leader


class Rejected(ClientError):
    """The backend refused the command; the same on every peer, so retrying won't help."""

    def __init__(self, reason: str, code: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code


class Overloaded(ClientError):
    """Shed without being proposed: the peer already serves as many client requests as it
    may (``max_client_requests``), or this session has too many results it has not
    acknowledged yet (``max_results_per_client``: its writes are too far ahead of its oldest
    unanswered one; the session waits for answers within the call's timeout before raising
    this). Not applied, unless ``maybe_applied`` (an earlier attempt of the same write may
    have been): back off and retry."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotSupported(Rejected):
    """The backend does not support this (e.g. watches, temporary data)."""


class BackendError(Rejected):
    """The backend raised an unexpected exception while applying the command."""


class SessionExpired(ClientError):
    """The long-lived session expired (its owner was silent for longer than its timeout):
    its temporary data is gone. Open a new session."""


class SessionClosed(ClientError):
    """The session was closed: a call made after ``close()``, or still waiting when it
    closed."""


class MalformedReply(ClientError):
    """A peer answered with something this client cannot read (a bug, or peers of another
    version)."""


class OtherFounding(ClientError):
    """The peer belongs to another founding of the cluster than the session's (wiped and
    founded again on its own, or another cluster under the same id), or no founding was
    agreed on by a majority of the listed peers: it did nothing with the request."""


class MembershipError(ClientError):
    """A configuration change was refused."""


class PeersChanged(MembershipError):
    """The committed configuration is not the one the change was based on."""


class NotStable(MembershipError):
    """Another configuration change is still in progress."""


class ClusterExists(ZraftError):
    """``create``: a peer already holds cluster state."""

    def __init__(self, peer: str) -> None:
        super().__init__(f"{peer} already holds a cluster's state")
        self.peer = peer


class UnreachablePeer(ZraftError):
    def __init__(self, peer: str) -> None:
        super().__init__(f"{peer} did not answer")
        self.peer = peer


class BadBackend(ZraftError):
    """``create``: the backend import path does not name a usable Backend class."""

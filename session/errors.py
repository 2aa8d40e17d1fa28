"""Every error a zraft client raises: one hierarchy, never bare tuples."""

from __future__ import annotations


class ZraftError(Exception):
    """Base of everything zraft raises on purpose."""


class ClientError(ZraftError):
    """A request did not succeed."""


class RequestTimeout(ClientError, TimeoutError):
    """No answer in time. A write may or may not have been applied; retrying it with the
    same session is safe (writes are exactly-once)."""


class AllPeersFailed(ClientError):
    """Every peer failed recently (down, unreachable, or not answering)."""


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
    """The peer already serves as many client requests as it may (``max_client_requests``)
    and shed this one at once, without applying it. Back off and retry; retrying a write
    with the same session is safe (writes are exactly-once)."""

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

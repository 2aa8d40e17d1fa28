"""Clients: create a cluster, talk to it through light sessions (sync and asyncio) and
long-lived sessions (temporary data, watches)."""

from .aio import AsyncLightSession
from .create import CreatedCluster, create
from .errors import (
    AllPeersFailed,
    BackendError,
    BadBackend,
    ClientError,
    ClusterExists,
    MalformedReply,
    MembershipError,
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
    SessionClosed,
    SessionExpired,
    TransportFailure,
    UnreachablePeer,
    WriteRequest,
    ZraftError,
)
from .light import LightSession, Written
from .long import Session
from .requests import RetryPolicy
from .tracker import LeaderTracker
from .watching import CHANGE, CHANGE_LEADER, SESSION_EXPIRED, WatchEvent

light_session = LightSession  # zraft_client:light_session

__all__ = [
    "CHANGE",
    "CHANGE_LEADER",
    "SESSION_EXPIRED",
    "AllPeersFailed",
    "AsyncLightSession",
    "BackendError",
    "BadBackend",
    "ClientError",
    "ClusterExists",
    "CreatedCluster",
    "LeaderTracker",
    "LightSession",
    "MalformedReply",
    "MembershipError",
    "NotLeader",
    "NotStable",
    "NotSupported",
    "OtherFounding",
    "Overloaded",
    "PeersChanged",
    "Rejected",
    "RequestTimeout",
    "NotRetryable",
    "ResultForgotten",
    "RetryPolicy",
    "Session",
    "SessionExpired",
    "SessionClosed",
    "TransportFailure",
    "UnreachablePeer",
    "WatchEvent",
    "WriteRequest",
    "Written",
    "ZraftError",
    "create",
    "light_session",
]

"""Clients: create a cluster, talk to it through light sessions (sync and asyncio)."""

from .aio import AsyncLightSession
from .create import CreatedCluster, create
from .errors import (
    AllPeersFailed,
    BackendError,
    BadBackend,
    ClientError,
    ClusterExists,
    MembershipError,
    NotLeader,
    NotStable,
    NotSupported,
    PeersChanged,
    Rejected,
    RequestTimeout,
    SessionExpired,
    UnreachablePeer,
    ZraftError,
)
from .light import LightSession
from .long import Session
from .requests import RetryPolicy
from .tracker import LeaderTracker

light_session = LightSession  # zraft_client:light_session

__all__ = [
    "AllPeersFailed",
    "AsyncLightSession",
    "BackendError",
    "BadBackend",
    "ClientError",
    "ClusterExists",
    "CreatedCluster",
    "LeaderTracker",
    "LightSession",
    "MembershipError",
    "NotLeader",
    "NotStable",
    "NotSupported",
    "PeersChanged",
    "Rejected",
    "RequestTimeout",
    "RetryPolicy",
    "Session",
    "SessionExpired",
    "UnreachablePeer",
    "ZraftError",
    "create",
    "light_session",
]

"""The Raft consensus core: pure, deterministic, no I/O (see node.py for the contract)."""

from .messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from .node import Node, NodeOptions, ProposalResult, RandomSource, Ready
from .progress import Progress, ReplicationState
from .types import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    ReadFailed,
    ReadState,
    Role,
    SnapshotMeta,
)

__all__ = [
    "MESSAGE_TYPES",
    "AppendEntries",
    "AppendResponse",
    "Configuration",
    "Entry",
    "EntryKind",
    "HardState",
    "Heartbeat",
    "HeartbeatResponse",
    "InstallSnapshot",
    "Message",
    "Node",
    "NodeOptions",
    "Progress",
    "ProposalResult",
    "RandomSource",
    "ReadFailed",
    "ReadIndexRequest",
    "ReadIndexResponse",
    "ReadState",
    "Ready",
    "ReplicationState",
    "RequestVote",
    "Role",
    "SnapshotMeta",
    "TimeoutNow",
    "VoteResponse",
]

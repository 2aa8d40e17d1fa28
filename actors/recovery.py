"""A peer's start from what is durable, shared by the process and the simulation: the
state machine from the latest snapshot, the log cut to it, and the core from the log and
the hard state. Everything a restart can get wrong about the configuration or the log is
decided here once."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zraft.core import Configuration, HardState, Node, NodeOptions, SnapshotMeta
from zraft.storage import LatestSnapshot, LogStorage

from .state_machine import ReplicatedState

NodeFactory = Callable[..., Node]


def recover(
    *,
    peer_id: str,
    rng: random.Random,
    options: NodeOptions,
    raft_log: LogStorage,
    hard_state: HardState,
    latest: LatestSnapshot | None,
    state: ReplicatedState,
    node_factory: NodeFactory = Node,
) -> Node:
    """Install ``latest`` (if any) into ``state``, keep only the log after it, and build the
    core; the configuration comes from the snapshot and the log alone."""
    if latest is None:
        meta = SnapshotMeta(0, 0, Configuration())
    else:
        meta, path, extra = latest
        state.install(meta, Path(path), extra)
        raft_log.restore_to_snapshot(meta.index, meta.term)
    entries = raft_log.entries(raft_log.first_index, raft_log.last_index + 1)
    node: Any = node_factory(
        peer_id, rng, options, hard_state=hard_state, snapshot=meta, entries=entries
    )
    return node

"""zraft.casbin: PyCasbin instances that agree on policy through Raft (see docs/casbin.md).

| module | contents |
|---|---|
| ``backend`` | ``CasbinBackend``, the replicated policy (needs no PyCasbin) |
| ``commands`` | command and query builders, validation |
| ``shape`` | does a rule fit the model? (refused before sending, skipped when applying) |
| ``cluster`` | ``connect`` (side-car) and ``embedded`` (a peer in this process) |
| ``dispatcher`` | ``Dispatcher`` and ``set_dispatcher`` (Go's ``SetDispatcher``) |
| ``sync``, ``local_model`` | keeping one enforcer current from the change feed |
| ``persist`` | writing the policy to the user's adapter |
| ``watcher`` | ``RaftWatcher``: the WatcherEx-compatible path |

The names below are imported on first use, so a peer that only runs the backend does not
import PyCasbin.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CasbinBackend": "backend",
    "CasbinNode": "cluster",
    "ModelMismatch": "cluster",
    "connect": "cluster",
    "embedded": "cluster",
    "Dispatcher": "dispatcher",
    "set_dispatcher": "dispatcher",
    "PolicySync": "sync",
    "PollingWaker": "sync",
    "WatchWaker": "sync",
    "AdapterPersister": "persist",
    "RaftWatcher": "watcher",
    "AsyncRaftWatcher": "watcher",
    "default_update_callback": "watcher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'zraft.casbin' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)

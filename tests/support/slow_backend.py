"""Key-value backends that are slow or fail: writes to ``slow/<seconds>`` take that long to
apply; one whose start-up is slow, two whose start-up fails."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from zraft.backends.base import ApplyResult
from zraft.backends.kv import KeyValueBackend


class SlowKeyValue(KeyValueBackend):
    def apply(self, command: Any) -> ApplyResult:
        key = command.get("key", "") if isinstance(command, dict) else ""
        if isinstance(key, str) and key.startswith("slow/"):
            time.sleep(float(key.split("/", 1)[1]))
        return super().apply(command)


class SlowStartKeyValue(KeyValueBackend):
    """A key-value backend whose ``init`` takes a minute: a peer being started stays in its
    start-up that long. It first creates the file named by ``ZRAFT_TEST_INIT_STARTED`` (if
    set), so a test knows when start-up has reached it."""

    def init(self, peer_id: str) -> None:
        marker = os.environ.get("ZRAFT_TEST_INIT_STARTED")
        if marker:
            Path(marker).touch()
        time.sleep(60)


class FailingStartKeyValue(KeyValueBackend):
    """A key-value backend whose ``init`` raises, as a misconfigured one would."""

    def init(self, peer_id: str) -> None:
        raise RuntimeError("cannot reach the policy database\n(second line of detail)")


class StuckThreadStartKeyValue(KeyValueBackend):
    """A key-value backend whose ``init`` leaves a non-daemon thread that never ends, then
    raises: the kind of leftover that would keep a failed process from exiting."""

    def init(self, peer_id: str) -> None:
        threading.Thread(target=threading.Event().wait, name="stuck-backend-thread").start()
        raise RuntimeError("gave up")

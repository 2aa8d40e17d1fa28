"""A key-value backend whose writes to ``slow/<seconds>`` take that long to apply."""

from __future__ import annotations

import time
from typing import Any

from zraft.backends.base import ApplyResult
from zraft.backends.kv import KeyValueBackend


class SlowKeyValue(KeyValueBackend):
    def apply(self, command: Any) -> ApplyResult:
        key = command.get("key", "") if isinstance(command, dict) else ""
        if isinstance(key, str) and key.startswith("slow/"):
            time.sleep(float(key.split("/", 1)[1]))
        return super().apply(command)

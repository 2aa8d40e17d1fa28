"""An append-only backend (applying a write twice is visible) whose writes may be slow:
``{"append": id, "sleep": seconds}`` takes that long to apply, so a client times out on a
write that is applied anyway."""

from __future__ import annotations

import time
from typing import Any

from zraft.backends.base import ApplyResult

from .append_backend import AppendLog


class SlowAppendLog(AppendLog):
    def apply(self, command: Any) -> ApplyResult:
        if isinstance(command, dict) and isinstance(command.get("sleep"), int | float):
            time.sleep(float(command["sleep"]))
        return super().apply(command)

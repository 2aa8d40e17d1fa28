"""A clock for recorded histories in tests."""

from __future__ import annotations

import threading


class TickClock:
    """Every reading is ``step`` later than the one before (thread-safe)."""

    def __init__(self, step: int = 1) -> None:
        self._lock = threading.Lock()
        self._step = step
        self._now = 0

    def __call__(self) -> int:
        with self._lock:
            self._now += self._step
            return self._now

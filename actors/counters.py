"""An actor's own metrics. Only the actor's thread changes them; the peer actor, which
answers status requests, gets a copy by message (``MetricsReport``): actors share no state.
"""

from __future__ import annotations

from .messages import MetricsReport


class Counters:
    """Named numbers owned by one actor, reported as ``<source>_<name>`` in the status."""

    def __init__(self, source: str, **initial: int | float) -> None:
        self.source = source
        self.values: dict[str, int | float] = dict(initial)
        self.changed = True  # the first report goes out whatever it holds

    def add(self, name: str, amount: int | float = 1) -> None:
        self.values[name] += amount
        self.changed = True

    def set(self, name: str, value: int | float) -> None:
        if self.values.get(name) != value:
            self.values[name] = value
            self.changed = True

    def __getitem__(self, name: str) -> int | float:
        return self.values[name]

    def report(self) -> MetricsReport | None:
        """A copy for the peer actor if anything changed since the last one, else None."""
        if not self.changed:
            return None
        self.changed = False
        return MetricsReport(self.source, tuple(self.values.items()))

"""Which of a session's writes still have an unknown outcome, and the ``acked`` it sends:
how far the cluster may forget its results."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from zraft.transport import ClientReply

# The peers' default max_results_per_client (zraft.actors.state_machine): a session learns
# the real one from the first refusal that names it.
SERVER_RESULTS_LIMIT = 4_096
DEFAULT_RETRY_WINDOW = 30.0


class AckTracker:
    """A session's writes by seq, and the ``acked`` it sends: the highest seq at or below
    which every write has a known outcome, so the cluster may forget those results.

    A write is open from ``issue`` until its outcome is known (``answered``: a result, a
    backend refusal, or definitely not applied). One whose outcome is unknown (``unknown``)
    stays open, pinning ``acked`` below it, so a retry with the same seq still finds its
    result, until it is retried and answered, ``release``d, ``retry_window`` seconds pass,
    or more than ``keep_behind`` later writes were issued (then the cluster may forget it,
    and a retry raises ``ResultForgotten``). The last bound keeps a session that never
    retries from being slowed down by its own pins: the cluster holds at most
    ``max_results_per_client`` results a client has not acknowledged, and half of that
    stays free for writes in flight. Answers come in any order; ``acked`` costs O(1)
    amortised per write.
    """

    def __init__(
        self,
        retry_window: float = DEFAULT_RETRY_WINDOW,
        clock: Callable[[], float] = time.monotonic,
        keep_behind: int = SERVER_RESULTS_LIMIT // 2,
    ) -> None:
        self.retry_window = retry_window
        self.clock = clock
        self.keep_behind = keep_behind
        self.issued = 0
        # seq -> None while in flight, or the clock time an unknown outcome's pin ends.
        # Seqs are issued in order, so the first key is the lowest open one.
        self._open: OrderedDict[int, float | None] = OrderedDict()

    def issue(self) -> int:
        self.issued += 1
        self._open[self.issued] = None
        return self.issued

    def answered(self, seq: int) -> None:
        self._open.pop(seq, None)

    def unknown(self, seq: int) -> None:
        if seq in self._open:
            self._open[seq] = self.clock() + self.retry_window

    def release(self, seq: int) -> None:
        """Give up on learning ``seq``'s outcome: the cluster may forget it."""
        self._open.pop(seq, None)

    def reopen(self, seq: int) -> bool:
        """A retry of ``seq`` is going out: True if its seq is still pinned (so the cluster
        still has its result, if it was applied), and then it is in flight again."""
        if seq not in self._open:
            return False
        self._open[seq] = None
        return True

    def pinned(self, seq: int) -> bool:
        return seq in self._open

    def acked(self) -> int:
        open_ = self._open
        if not open_:
            return self.issued
        now: float | None = None
        while open_:
            lowest, until = next(iter(open_.items()))
            if until is None:
                return lowest - 1
            if self.issued - lowest <= self.keep_behind:
                if now is None:
                    now = self.clock()
                if until > now:
                    return lowest - 1
            del open_[lowest]  # its retry window passed: let the cluster forget it
        return self.issued

    def learn_limit(self, limit: int | None) -> None:
        """The leader's ``max_results_per_client`` (from a refusal): keep pins within half."""
        if limit is not None:
            self.keep_behind = min(self.keep_behind, max(1, limit // 2))

    def __len__(self) -> int:
        return len(self._open)


def results_limit(reply: ClientReply) -> int | None:
    """The leader's ``max_results_per_client``, from a ``too_far_ahead`` refusal."""
    result = reply.result
    if isinstance(result, list) and len(result) == 2 and type(result[1]) is int:
        return result[1] if result[1] > 0 else None
    return None

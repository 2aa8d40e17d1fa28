"""The client's ``acked``: the highest seq at or below which every write has a known
outcome (a low-water mark), however answers are ordered; a write whose outcome is unknown
pins it until retried, released, or its retry window passes."""

from __future__ import annotations

import random

import pytest

from zraft.session.acks import AckTracker


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.timeout(30)
def test_acked_is_the_low_water_mark_of_answers_in_any_order() -> None:
    acks = AckTracker()
    assert acks.acked() == 0
    seqs = [acks.issue() for _ in range(5)]
    assert seqs == [1, 2, 3, 4, 5] and acks.acked() == 0
    for seq, expected in [(3, 0), (5, 0), (1, 1), (2, 3), (4, 5)]:
        acks.answered(seq)
        assert acks.acked() == expected, seq
    assert acks.issue() == 6 and acks.acked() == 5
    acks.answered(6)
    assert acks.acked() == 6 and len(acks) == 0


@pytest.mark.timeout(30)
def test_a_write_whose_outcome_is_unknown_pins_acked_until_settled() -> None:
    clock = Clock()
    acks = AckTracker(retry_window=10.0, clock=clock)
    for _ in range(3):
        acks.issue()
    acks.unknown(1)
    acks.answered(2)
    acks.answered(3)
    assert acks.acked() == 0  # 1 may still be retried: the cluster must keep its result
    assert acks.reopen(1)  # a retry goes out with the same seq
    clock.now = 100.0
    assert acks.acked() == 0  # in flight again: no window while it is out
    acks.answered(1)
    assert acks.acked() == 3


@pytest.mark.timeout(30)
def test_a_pin_ends_when_released_or_when_its_retry_window_passes() -> None:
    clock = Clock()
    acks = AckTracker(retry_window=10.0, clock=clock)
    for _ in range(4):
        acks.issue()
    acks.unknown(1)
    acks.unknown(2)
    acks.answered(3)
    acks.answered(4)
    acks.release(1)
    assert acks.acked() == 1
    clock.now = 9.9
    assert acks.acked() == 1 and acks.pinned(2)
    clock.now = 10.0
    assert acks.acked() == 4 and not acks.pinned(2)
    assert not acks.reopen(2)  # too late for an exactly-once retry


@pytest.mark.timeout(30)
def test_a_pin_gives_way_to_later_writes_so_a_session_that_never_retries_is_not_slowed() -> None:
    """A caller that lets timed-out writes go never retries them: its pins must not hold
    ``acked`` until the cluster's results limit refuses its new writes."""
    clock = Clock()
    acks = AckTracker(retry_window=1000.0, clock=clock)
    assert acks.keep_behind == 2048  # half the peers' default max_results_per_client
    acks.issue()
    acks.unknown(1)
    for _ in range(2048):
        acks.answered(acks.issue())
    assert acks.acked() == 0 and acks.pinned(1)  # still retryable exactly once
    acks.answered(acks.issue())
    assert acks.acked() == 2050 and not acks.reopen(1)  # a retry now: ResultForgotten
    acks.learn_limit(512)  # a leader with a lower limit said so in a refusal
    assert acks.keep_behind == 256
    acks.learn_limit(None)
    assert acks.keep_behind == 256
    acks.issue()
    acks.unknown(2051)
    for _ in range(257):
        acks.answered(acks.issue())
    assert acks.acked() == acks.issued


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", range(3))
def test_acked_matches_a_brute_force_low_water_mark_with_thousands_in_flight(seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock()
    acks = AckTracker(retry_window=5.0, clock=clock)
    open_: dict[int, float | None] = {}  # seq -> pin end, None while in flight
    for _ in range(15_000):
        clock.now += 0.001
        roll = rng.random()
        if roll < 0.5 or not open_:
            open_[acks.issue()] = None
        else:
            seq = rng.choice(list(open_)) if len(open_) < 64 else min(open_) + rng.randrange(64)
            if seq not in open_:
                continue
            if roll < 0.95:
                acks.answered(seq)
                del open_[seq]
            elif open_[seq] is None:
                acks.unknown(seq)
                open_[seq] = clock.now + 5.0
            else:
                assert acks.reopen(seq)
                open_[seq] = None
        # an expired pin counts as settled once it is the lowest open seq; so does one too
        # far behind the newest write
        while (
            open_
            and (until := open_[min(open_)]) is not None
            and (until <= clock.now or acks.issued - min(open_) > acks.keep_behind)
        ):
            del open_[min(open_)]
        expected = min(open_) - 1 if open_ else acks.issued
        assert acks.acked() == expected
        if len(open_) > 500:
            for seq in sorted(open_)[:250]:
                acks.answered(seq)
                del open_[seq]

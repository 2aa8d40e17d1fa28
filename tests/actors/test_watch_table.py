"""The leader's watch table, alone: arming, one-shot firing in commit order, long polls,
leadership loss and session end."""

from __future__ import annotations

from zraft.actors.watches import CHANGE, CHANGE_LEADER, WatchTable
from zraft.backends.base import WatchSpec


def _table() -> WatchTable:
    return WatchTable("p1", max_per_session=3)


def test_a_watch_fires_once_on_its_key_and_the_event_waits_for_a_poll() -> None:
    table = _table()
    assert table.arm("s", 1, WatchSpec(frozenset({"a"}))) is None
    assert table.fire(5, {"b"}) == set()
    assert table.fire(6, {"a", "b"}) == {"s"}
    assert table.fire(7, {"a"}) == set()  # fired already: gone
    (answer,) = table.poll("s", b"id", 9, table.epoch, 0, deadline=10.0)
    assert (answer.request_id, answer.events) == (9, [[1, 1, CHANGE, "a", 6]])
    assert len(table) == 0


def test_prefix_watches_and_the_reported_key_is_the_smallest() -> None:
    table = _table()
    table.arm("s", 1, WatchSpec(frozenset(), frozenset({"dir/"})))
    table.arm("s", 2, WatchSpec(frozenset(), frozenset({""})))  # everything
    table.fire(3, {"other"})
    table.fire(4, {"dir/z", "dir/b"})
    (answer,) = table.poll("s", b"id", 1, table.epoch, 0, deadline=10.0)
    assert answer.events == [[1, 2, CHANGE, "other", 3], [2, 1, CHANGE, "dir/b", 4]]


def test_a_poll_is_held_until_an_event_or_its_deadline() -> None:
    table = _table()
    table.arm("s", 1, WatchSpec(frozenset({"a"})))
    assert table.poll("s", b"id", 1, table.epoch, 0, deadline=10.0) == []
    assert table.expire_polls(now=5.0) == []
    sessions = table.fire(2, {"a"})
    (answer,) = table.deliver(sessions)
    assert (answer.request_id, answer.events) == (1, [[1, 1, CHANGE, "a", 2]])
    table.arm("s", 2, WatchSpec(frozenset({"a"})))
    # The client acknowledges event 1 by polling after it; nothing new: held, then expired.
    assert table.poll("s", b"id", 2, table.epoch, 1, deadline=10.0) == []
    (answer,) = table.expire_polls(now=10.0)
    assert (answer.request_id, answer.events) == (2, [])


def test_a_newer_poll_answers_the_one_it_replaces() -> None:
    table = _table()
    table.arm("s", 1, WatchSpec(frozenset({"a"})))
    table.poll("s", b"old", 1, table.epoch, 0, deadline=10.0)
    (answer,) = table.poll("s", b"new", 2, table.epoch, 0, deadline=10.0)
    assert (answer.identity, answer.events) == (b"old", [])


def test_events_of_another_epoch_are_not_acknowledged_by_its_seq() -> None:
    table = _table()
    table.arm("s", 1, WatchSpec(frozenset({"a"})))
    table.fire(2, {"a"})
    (answer,) = table.poll("s", b"id", 1, "someone-else/x/1", 99, deadline=10.0)
    assert answer.events == [[1, 1, CHANGE, "a", 2]]


def test_losing_leadership_fires_every_watch_and_starts_a_new_epoch() -> None:
    table = _table()
    table.arm("s", 1, WatchSpec(frozenset({"a"})))
    table.arm("t", 1, WatchSpec(frozenset({"a"})))
    table.poll("s", b"id", 7, table.epoch, 0, deadline=10.0)
    old = table.epoch
    (answer,) = table.lose_leadership()  # only s had a poll waiting
    assert (answer.epoch, answer.events) == (old, [[1, 1, CHANGE_LEADER, None, 0]])
    assert table.epoch != old and len(table) == 0 and table.idle
    assert WatchTable("p1").epoch != WatchTable("p1").epoch  # restarts never reuse one


def test_session_end_drops_its_watches_and_answers_its_poll() -> None:
    table = _table()
    table.arm("s", 1, WatchSpec(frozenset({"a"})))
    table.poll("s", b"id", 3, table.epoch, 0, deadline=10.0)
    (answer,) = table.end_session("s")
    assert answer.error == "session_expired"
    assert table.fire(4, {"a"}) == set() and table.idle


def test_a_session_has_a_limit() -> None:
    table = _table()
    for watch_id in range(3):
        assert table.arm("s", watch_id, WatchSpec(frozenset({"a"}))) is None
    assert "at most 3" in str(table.arm("s", 9, WatchSpec(frozenset({"b"}))))
    assert table.arm("t", 9, WatchSpec(frozenset({"b"}))) is None


def test_arming_an_armed_id_again_replaces_it() -> None:
    table = _table()
    table.arm("s", 1, WatchSpec(frozenset({"a"})))
    assert table.arm("s", 1, WatchSpec(frozenset({"b"}))) is None  # a retried arming
    assert len(table) == 1
    assert table.fire(2, {"a"}) == set()
    assert table.fire(3, {"b"}) == {"s"}

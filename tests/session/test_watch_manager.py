"""The client side of watches against a scripted leader: events racing the arming answer,
tables that are left or lost, refusals that must not fire anything, closing from a
callback, and cancelling the asyncio form."""

from __future__ import annotations

import asyncio
import queue
import threading
import types
from typing import Any

import pytest

from zraft.session import CHANGE, CHANGE_LEADER, LeaderTracker, Session, WatchEvent
from zraft.session.founding import FoundingPin
from zraft.session.watching import WatchManager
from zraft.transport import ClientReply, TransportTimeout

EPOCH_A = "p1:1/aa/1"
EPOCH_B = "p2:1/bb/1"


class ScriptedLeader:
    """Plays the poller's LightSession: each poll takes the next scripted answer."""

    def __init__(self) -> None:
        self.tracker = LeaderTracker(["p1:1", "p2:1"], 0.2, 0.1)
        self._founding = FoundingPin("f")  # as a LightSession's once pinned
        self.answers: queue.Queue[Any] = queue.Queue()
        self.polls: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.closed = False

    def _send(self, peer: str, op: str, payload: Any, timeout: float, *_: int) -> ClientReply:
        assert op == "watch_poll"
        self.polls.put((peer, payload))
        answer = self.answers.get(timeout=10)
        if isinstance(answer, Exception):
            raise answer
        return answer  # type: ignore[no-any-return]

    def close(self) -> None:
        self.closed = True


def _events(epoch: str, *events: list[Any]) -> ClientReply:
    return ClientReply(1, True, [epoch, list(events)])


class Seen:
    def __init__(self) -> None:
        self.events: queue.Queue[WatchEvent] = queue.Queue()

    def __call__(self, event: WatchEvent) -> None:
        self.events.put(event)

    def next(self) -> WatchEvent:
        return self.events.get(timeout=5)

    def none(self) -> bool:
        try:
            self.events.get(timeout=0.2)
        except queue.Empty:
            return True
        return False


@pytest.fixture
def leader() -> ScriptedLeader:
    return ScriptedLeader()


def _manager(leader: ScriptedLeader, **kw: Any) -> WatchManager:
    return WatchManager(leader, poll_wait=0.05, margin=0.05, **kw)


@pytest.mark.timeout(30)
def test_an_event_that_comes_before_the_arming_answer_is_delivered(leader: ScriptedLeader) -> None:
    manager, seen = _manager(leader), Seen()
    watch_id = manager.begin("q", seen)  # the query is still on its way
    leader.answers.put(_events(EPOCH_A, [1, watch_id, CHANGE, "k", 7]))
    assert seen.next() == WatchEvent(watch_id, CHANGE, "k", 7, "q")
    manager.armed(watch_id, EPOCH_A)  # the answer arrives after: nothing more happens
    assert seen.none() and len(manager) == 0
    manager.join()


@pytest.mark.timeout(30)
def test_the_next_poll_acknowledges_what_came(leader: ScriptedLeader) -> None:
    manager, seen = _manager(leader), Seen()
    first, second = manager.begin("q1", seen), manager.begin("q2", seen)
    manager.armed(first, EPOCH_A)
    manager.armed(second, EPOCH_A)
    leader.answers.put(_events(EPOCH_A, [4, first, CHANGE, "a", 9]))
    assert seen.next().watch_id == first
    assert leader.polls.get(timeout=5)[1]["after"] == 0
    assert leader.polls.get(timeout=5)[1] == {"epoch": EPOCH_A, "after": 4, "wait_ms": 50}
    leader.answers.put(_events(EPOCH_A, [5, second, CHANGE, "b", 10]))
    assert seen.next().watch_id == second
    manager.join()


@pytest.mark.timeout(30)
def test_a_table_left_behind_fires_change_leader_but_a_new_one_does_not(
    leader: ScriptedLeader,
) -> None:
    manager, seen = _manager(leader), Seen()
    old = manager.begin("old", seen)
    manager.armed(old, EPOCH_A)
    leader.answers.put(_events(EPOCH_A))  # the loop is on table A
    fresh = manager.begin("fresh", seen)
    manager.armed(fresh, EPOCH_B)  # armed at the new leader before the loop got there
    leader.answers.put(_events(EPOCH_B))  # the loop moves to B: A is left
    event = seen.next()
    assert (event.watch_id, event.reason) == (old, CHANGE_LEADER)
    assert seen.none() and len(manager) == 1  # the watch in B is alive
    manager.join()


@pytest.mark.timeout(30)
def test_a_leader_that_stops_answering_loses_its_watches(leader: ScriptedLeader) -> None:
    manager, seen = _manager(leader), Seen()
    watch_id = manager.begin("q", seen)
    manager.armed(watch_id, EPOCH_A)
    leader.answers.put(TransportTimeout("no answer"))
    leader.answers.put(TransportTimeout("still no answer"))  # the quick second try
    event = seen.next()
    assert (event.watch_id, event.reason, event.key, event.index) == (
        watch_id, CHANGE_LEADER, None, 0,
    )  # fmt: skip
    manager.join()


@pytest.mark.timeout(30)
def test_a_poll_that_timed_out_once_is_asked_again_before_giving_up(
    leader: ScriptedLeader,
) -> None:
    manager, seen = _manager(leader), Seen()  # e.g. this process was paused past it
    watch_id = manager.begin("q", seen)
    manager.armed(watch_id, EPOCH_A)
    leader.answers.put(TransportTimeout("no answer"))
    leader.answers.put(_events(EPOCH_A, [1, watch_id, CHANGE, "k", 3]))
    event = seen.next()
    assert (event.reason, event.index) == (CHANGE, 3)
    assert leader.polls.get(timeout=5)[1]["wait_ms"] == 50
    assert leader.polls.get(timeout=5)[1]["wait_ms"] == 0
    manager.join()


@pytest.mark.timeout(30)
def test_refusals_and_catching_up_fire_nothing(leader: ScriptedLeader) -> None:
    manager, seen = _manager(leader), Seen()
    watch_id = manager.begin("q", seen)
    manager.armed(watch_id, EPOCH_A)
    leader.answers.put(ClientReply(1, False, "busy", "overloaded"))
    leader.answers.put(ClientReply(1, False, "catching up", "retry"))
    leader.answers.put(_events(EPOCH_A, [1, watch_id, CHANGE, "k", 3]))
    event = seen.next()
    assert (event.reason, event.index) == (CHANGE, 3)
    manager.join()


@pytest.mark.timeout(30)
def test_closing_from_a_callback_works(leader: ScriptedLeader) -> None:
    manager = _manager(leader)
    done = threading.Event()

    def close_now(event: WatchEvent) -> None:
        manager.join()  # what Session.close does
        done.set()

    watch_id = manager.begin("q", close_now)
    leader.answers.put(_events(EPOCH_A, [1, watch_id, CHANGE, "k", 3]))
    assert done.wait(5)
    assert leader.closed


@pytest.mark.timeout(30)
def test_cancelling_the_asyncio_form_loses_no_event(leader: ScriptedLeader) -> None:
    manager = _manager(leader)
    fake = types.SimpleNamespace(
        _watches=manager,
        _closed=threading.Event(),
        expired=False,
        _watch_manager=lambda: manager,
    )
    watch_id = manager.begin("q", None)  # to the event queue

    async def cancelled_wait() -> None:
        stream = Session.watch_events_async(fake)  # type: ignore[arg-type]
        task = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_wait())  # returns at once: no thread is left waiting
    leader.answers.put(_events(EPOCH_A, [1, watch_id, CHANGE, "k", 3]))

    async def next_event() -> WatchEvent:
        async for event in Session.watch_events_async(fake, timeout=5):  # type: ignore[arg-type]
            return event
        raise AssertionError("no event")

    assert asyncio.run(next_event()).watch_id == watch_id
    manager.join()

"""ZmqTransport.start(hosted=True): the test thread runs the loop (open_loop, run_once,
close_loop) of one transport, talking to a threaded one over real sockets on 127.0.0.1."""

from __future__ import annotations

import select
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.transport.test_transport_support import Inbox, free_address, wait_until
from tests.transport.test_transport_zmq import batch_of, payload_of
from zraft.core.messages import Heartbeat, Message
from zraft.transport import TransportError, ZmqTransport

CLUSTER = "test-cluster"
QUICK = 2.0  # "returned quickly": far below the 5 s a blocked run_once would take


class ThreadInbox(Inbox):
    """An Inbox that also remembers on which thread each callback ran."""

    def __init__(self) -> None:
        super().__init__()
        self.idents: set[int] = set()

    def on_peer(self, msgs: list[Message]) -> None:
        with self.lock:
            self.idents.add(threading.get_ident())
        super().on_peer(msgs)


def make(peer_id: str, peers: list[str], inbox: Inbox) -> ZmqTransport:
    return ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=peer_id,
        peers=peers,
        on_peer_messages=inbox.on_peer,
        on_client_requests=inbox.on_client,
    )


@dataclass
class Pair:
    """``threaded`` runs its own I/O thread; ``hosted``'s loop is owned by the test thread."""

    a: str
    b: str
    threaded: ZmqTransport
    hosted: ZmqTransport
    inbox_a: ThreadInbox
    inbox_b: ThreadInbox
    seen_a: int = 0  # what inbox_a held when last looked at

    def turn_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            self.hosted.run_once(20)
        return predicate()

    def quiesce(self) -> None:
        """Turn the hosted loop until a whole turn passes with nothing arriving."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            before = self.inbox_b.count()
            self.hosted.run_once(150)
            if self.inbox_b.count() == before and self.inbox_a.count() == self.seen_a:
                return
            self.seen_a = self.inbox_a.count()
        pytest.fail("the hosted transport never went quiet")


def turn_ended_by(pair: Pair, action: Callable[[], object]) -> bool:
    """Run ``action`` on another thread 0.2 s into a 5 s turn of the hosted loop; the turn
    must end quickly (the action woke it). Returns what run_once returned."""
    timer = threading.Timer(0.2, action)
    timer.start()
    try:
        started = time.monotonic()
        running = pair.hosted.run_once(5000)
        assert time.monotonic() - started < QUICK
    finally:
        timer.join(10)
    assert not timer.is_alive()  # the action itself returned without waiting for us
    return running


def ping(src: str, dst: str) -> Heartbeat:
    return Heartbeat(0, src, dst, 0, 0)


def connect(pair: Pair) -> None:
    """ZMQ_IMMEDIATE drops until the TCP connection is up: ping both ways until one lands."""
    a, b = pair.a, pair.b

    def a_reached_b() -> bool:
        if pair.inbox_b.count():
            return True
        pair.threaded.send([ping(a, b)])
        return False

    def b_reached_a() -> bool:
        if pair.inbox_a.count():
            return True
        pair.hosted.send([ping(b, a)])  # queued; the next turn sends it
        return False

    assert pair.turn_until(a_reached_b), f"{a} never reached {b}"
    assert pair.turn_until(b_reached_a), f"{b} never reached {a}"
    pair.seen_a = pair.inbox_a.count()
    pair.quiesce()  # let stray pings land before the test counts


@pytest.fixture
def pair() -> Iterator[Pair]:
    a, b = free_address(), free_address()
    inbox_a, inbox_b = ThreadInbox(), ThreadInbox()
    threaded = make(a, [a, b], inbox_a)
    hosted = make(b, [a, b], inbox_b)
    try:
        threaded.start()
        hosted.start(hosted=True)
        hosted.open_loop()  # this thread owns the hosted transport's sockets from here
        yield Pair(a, b, threaded, hosted, inbox_a, inbox_b)
    finally:
        hosted.close()  # on the owning thread: closes the loop too
        threaded.close()


def wake_pipe_readable(transport: ZmqTransport) -> bool:
    readable, _, _ = select.select([transport._wake_r], [], [], 0)  # noqa: SLF001
    return bool(readable)


def received_by_a(pair: Pair) -> list[Message]:
    return payload_of(pair.inbox_a.snapshot())


def received_by_b(pair: Pair) -> list[Message]:
    return payload_of(pair.inbox_b.snapshot())


@pytest.mark.timeout(60)
def test_hosted_and_threaded_transports_exchange_messages_both_ways(pair: Pair) -> None:
    connect(pair)
    a, b = pair.a, pair.b
    sent_ab = [m for k in range(3) for m in batch_of(a, b, k * 100)]
    sent_ba = [m for k in range(3) for m in batch_of(b, a, 10_000 + k * 100)]
    for k in range(3):
        pair.threaded.send(sent_ab[k * 100 : (k + 1) * 100])
        pair.hosted.send(sent_ba[k * 100 : (k + 1) * 100])

    assert pair.turn_until(
        lambda: len(received_by_b(pair)) >= 300 and len(received_by_a(pair)) >= 300
    )
    assert received_by_b(pair) == sent_ab
    assert received_by_a(pair) == sent_ba
    # The hosted transport's callbacks ran on the thread that turns its loop: this one.
    assert pair.inbox_b.idents == {threading.get_ident()}
    assert threading.get_ident() not in pair.inbox_a.idents
    assert pair.hosted.stats()["sent"] >= 300
    assert pair.hosted.stats()["received"] >= 300
    assert pair.hosted.stats()["rejected"] == 0


@pytest.mark.timeout(60)
def test_send_on_the_owning_thread_only_queues_and_flush_sends_at_once(pair: Pair) -> None:
    connect(pair)
    a, b = pair.a, pair.b
    first = batch_of(b, a, 0)
    pair.hosted.send(first)
    assert pair.hosted.stats()["backlog"] == len(first)
    assert not wake_pipe_readable(pair.hosted)
    time.sleep(0.3)
    assert received_by_a(pair) == []  # queued, not sent: no turn of the loop yet

    pair.hosted.flush()  # sends now, without a turn of the loop
    assert pair.hosted.stats()["backlog"] == 0
    assert wait_until(lambda: len(received_by_a(pair)) >= len(first))
    assert received_by_a(pair) == first

    # The queueing wrote nothing to the wake pipe (the write the hosted mode saves; no
    # behaviour shows it, as a turn drains its own queue first): the next turn sends it.
    second = batch_of(b, a, 100)
    pair.hosted.send(second)
    assert not wake_pipe_readable(pair.hosted)
    assert pair.hosted.run_once(20)
    assert wait_until(lambda: len(received_by_a(pair)) >= 200)
    assert received_by_a(pair) == first + second

    # From another thread, send writes it.
    sender = threading.Thread(target=pair.hosted.send, args=([ping(b, a)],))
    sender.start()
    sender.join(10)
    assert wake_pipe_readable(pair.hosted)
    assert pair.hosted.run_once(20)
    assert not wake_pipe_readable(pair.hosted)

    # From another thread, send does wake the loop: a blocked wait ends at once.
    third = batch_of(b, a, 200)
    assert turn_ended_by(pair, lambda: pair.hosted.send(third)) is True
    assert wait_until(lambda: len(received_by_a(pair)) >= 300)
    assert received_by_a(pair) == first + second + third


@pytest.mark.timeout(60)
def test_wake_from_another_thread_ends_a_blocking_run_once(pair: Pair) -> None:
    connect(pair)  # no connection events left to end a wait early
    assert turn_ended_by(pair, pair.hosted.wake) is True

    # The wakeup was used up: the next turn waits its whole timeout.
    started = time.monotonic()
    assert pair.hosted.run_once(300)
    assert time.monotonic() - started >= 0.2

    # A wake before the turn is not lost: that turn does not wait.
    waker = threading.Thread(target=pair.hosted.wake)
    waker.start()
    waker.join(10)
    started = time.monotonic()
    assert pair.hosted.run_once(5000)
    assert time.monotonic() - started < QUICK


@pytest.mark.timeout(60)
def test_a_wake_is_not_lost_when_the_owning_thread_has_queued_sends(pair: Pair) -> None:
    connect(pair)
    # What LoopInbox does: the owning thread queued a send (no flush), then another thread
    # puts an envelope and calls wake(); the next turn must not wait.
    pair.hosted.send([ping(pair.b, pair.a)])
    waker = threading.Thread(target=pair.hosted.wake)
    waker.start()
    waker.join(10)
    started = time.monotonic()
    pair.hosted.run_once(3000)
    assert time.monotonic() - started < 1.5


@pytest.mark.timeout(60)
def test_close_from_another_thread_ends_the_loop_and_close_loop_releases_it(
    pair: Pair,
) -> None:
    connect(pair)
    b = pair.b
    assert turn_ended_by(pair, pair.hosted.close) is False  # close() did not wait for us
    assert pair.hosted.run_once(5000) is False  # and stays ended

    # The sockets are still the loop's to close: the port is still taken.
    other = ThreadInbox()
    squatter = make(b, [b], other)
    with pytest.raises(TransportError):
        squatter.start(hosted=True)
    squatter.close()

    pair.hosted.close_loop()
    assert pair.hosted._ctx.closed  # noqa: SLF001 - the context went with the last socket
    # Everything released: the port can be bound again at once.
    again = make(b, [b], other)
    try:
        again.start(hosted=True)
    finally:
        again.close()

    # Closed for good: later sends are dropped and counted, close again is a no-op.
    pair.hosted.send([ping(b, pair.a)])
    assert pair.hosted.stats()["dropped_closed"] == 1
    pair.hosted.close()


@pytest.mark.timeout(60)
def test_close_on_the_owning_thread_releases_everything_at_once(pair: Pair) -> None:
    connect(pair)
    pair.hosted.close()
    assert pair.hosted._ctx.closed  # noqa: SLF001
    again = make(pair.b, [pair.b], ThreadInbox())
    try:
        again.start(hosted=True)
    finally:
        again.close()
    pair.hosted.close_loop()  # what a host does last anyway: harmless now
    assert pair.hosted.run_once(5000) is False


@pytest.mark.timeout(60)
def test_close_from_a_callback_on_the_owning_thread_waits_for_the_turn_to_end() -> None:
    """A callback that closes its transport mid-turn: the turn ends normally (no socket
    closed under it), run_once says False, and close_loop then releases everything."""
    a, b = free_address(), free_address()
    inbox_a = ThreadInbox()
    closed_in_callback: list[bool] = []
    hosted: ZmqTransport | None = None

    def close_now(msgs: list[Message]) -> None:
        assert hosted is not None
        hosted.close()
        # Still open: the rest of this turn (the monitor, shed replies) uses the sockets.
        closed_in_callback.append(hosted._router is not None)

    threaded = make(a, [a, b], inbox_a)
    hosted = ZmqTransport(
        cluster_id=CLUSTER, peer_id=b, peers=[a, b], on_peer_messages=close_now,
        on_client_requests=lambda reqs: None,
    )
    try:
        threaded.start()
        hosted.start(hosted=True)
        hosted.open_loop()
        deadline = time.monotonic() + 10
        running = True
        while running and time.monotonic() < deadline:
            threaded.send([ping(a, b)])
            running = hosted.run_once(50)  # raises if a socket was closed under the turn
        assert closed_in_callback == [True] and not running
        assert not hosted.run_once(50)  # and stays done
        hosted.close_loop()
        rebound = make(b, [a, b], ThreadInbox())  # the port is free again
        try:
            rebound.start()
        finally:
            rebound.close()
    finally:
        hosted.close()
        threaded.close()

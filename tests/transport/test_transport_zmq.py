"""ZmqTransport and ClientChannel over real sockets on 127.0.0.1."""

from __future__ import annotations

import threading
import time

import pytest

from tests.transport.test_transport_support import Inbox, free_address, running, wait_until
from zraft.core.messages import AppendEntries, AppendResponse, Heartbeat, Message, RequestVote
from zraft.core.types import Entry, EntryKind
from zraft.transport import (
    NOT_FOUNDED,
    OTHER_FOUNDING,
    ClientChannel,
    ClientReply,
    ClientRequest,
    TransportError,
    TransportTimeout,
    ZmqTransport,
    encode,
)

CLUSTER = "test-cluster"


def connect(sender: ZmqTransport, inbox: Inbox, dst: str) -> None:
    """ZMQ_IMMEDIATE drops until the TCP connection is up: ping until one arrives."""
    before = inbox.count()

    def arrived() -> bool:
        if inbox.count() > before:
            return True
        sender.send([Heartbeat(0, sender.peer_id, dst, 0, 0)])
        return False

    assert wait_until(arrived, timeout=10, step=0.02), f"{sender.peer_id} never reached {dst}"
    time.sleep(0.05)  # let stray pings land before the caller counts


def batch_of(src: str, dst: str, start: int, n: int = 100) -> list[Message]:
    out: list[Message] = []
    for i in range(start, start + n):
        if i % 3 == 0:
            entry = Entry(i + 1, 2, EntryKind.NORMAL, b"v%d" % i)
            out.append(AppendEntries(2, src, dst, i, 2, (entry,), i))
        elif i % 3 == 1:
            out.append(AppendResponse(2, src, dst, True, i))
        else:
            out.append(Heartbeat(2, src, dst, i, i))
    return out


def payload_of(msgs: list[Message]) -> list[Message]:
    return [m for m in msgs if not (isinstance(m, Heartbeat) and m.term == 0)]


@pytest.mark.timeout(60)
def test_two_transports_exchange_batches_in_order() -> None:
    a, b = free_address(), free_address()
    inbox_a, inbox_b = Inbox(), Inbox()
    with running(a, [a, b], inbox_a) as ta, running(b, [a, b], inbox_b) as tb:
        connect(ta, inbox_b, b)
        connect(tb, inbox_a, a)
        sent_ab = [m for k in range(5) for m in batch_of(a, b, k * 100)]
        sent_ba = [m for k in range(5) for m in batch_of(b, a, 10_000 + k * 100)]
        for k in range(5):
            ta.send(sent_ab[k * 100 : (k + 1) * 100])
            tb.send(iter(sent_ba[k * 100 : (k + 1) * 100]))  # any iterable will do
        assert wait_until(lambda: len(payload_of(inbox_b.snapshot())) == 500)
        assert wait_until(lambda: len(payload_of(inbox_a.snapshot())) == 500)
        assert payload_of(inbox_b.snapshot()) == sent_ab
        assert payload_of(inbox_a.snapshot()) == sent_ba
        # Delivered in batches, not one callback per message.
        assert len(inbox_b.batches) < 100
        stats = ta.stats()
        assert stats["sent"] >= 500 and stats["sent_frames"] < stats["sent"]
        assert tb.stats()["received"] >= 500
        assert tb.stats()["rejected"] == 0


@pytest.mark.timeout(60)
def test_three_peers_and_membership_changes() -> None:
    a, b, c = free_address(), free_address(), free_address()
    inboxes = {p: Inbox() for p in (a, b, c)}
    with (
        running(a, [a, b, c], inboxes[a]) as ta,
        running(b, [a, b, c], inboxes[b]),
        running(c, [a, b, c], inboxes[c]),
    ):
        connect(ta, inboxes[b], b)
        connect(ta, inboxes[c], c)
        ta.send([RequestVote(5, a, b, 1, 1), RequestVote(5, a, c, 1, 1)])
        for p in (b, c):
            assert wait_until(lambda p=p: RequestVote(5, a, p, 1, 1) in inboxes[p].snapshot())

        ta.set_peers([a, b])  # c removed
        assert ta.peers == frozenset({b})
        ta.send([Heartbeat(6, a, c, 0, 1), Heartbeat(6, a, b, 0, 1)])
        assert wait_until(lambda: Heartbeat(6, a, b, 0, 1) in inboxes[b].snapshot())
        assert ta.stats()["dropped_unknown-peer"] == 1
        assert Heartbeat(6, a, c, 0, 1) not in inboxes[c].snapshot()

        ta.set_peers([a, b, c])  # c back
        connect(ta, inboxes[c], c)
        ta.send([Heartbeat(7, a, c, 0, 1)])
        assert wait_until(lambda: Heartbeat(7, a, c, 0, 1) in inboxes[c].snapshot())


@pytest.mark.timeout(60)
def test_dead_peer_costs_bounded_memory_and_never_blocks() -> None:
    a, dead = free_address(), free_address()
    inbox = Inbox()
    transport = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=a,
        peers=[a, dead],
        on_peer_messages=inbox.on_peer,
        on_client_requests=inbox.on_client,
        max_backlog=1000,
        send_hwm=10,
    )
    try:
        # Not started yet: nothing drains the hand-off list, so it fills up and the rest
        # is dropped at once instead of queuing without bound.
        for k in range(50):
            transport.send(batch_of(a, dead, k * 100))
        stats = transport.stats()
        assert stats["backlog"] == 1000
        assert stats["dropped_backlog"] == 4000
        transport.start()
        started = time.perf_counter()
        slowest = 0.0
        for k in range(500):  # 50,000 messages at a peer nobody listens on
            t0 = time.perf_counter()
            transport.send(batch_of(a, dead, k * 100))
            slowest = max(slowest, time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
        assert slowest < 0.5 and elapsed < 20, (slowest, elapsed)
        total = 55_000

        def settled() -> bool:
            s = transport.stats()
            return s["dropped"] + s["sent"] == total and s["backlog"] == 0

        assert wait_until(settled, timeout=20)
        stats = transport.stats()
        # IMMEDIATE=1: no connection, so no frame is queued for the dead peer at all.
        assert stats["sent"] == 0
        assert stats["dropped_unavailable"] + stats.get("dropped_backlog", 0) == total
    finally:
        transport.close()


@pytest.mark.timeout(60)
def test_concurrent_senders_lose_nothing() -> None:
    a, b = free_address(), free_address()
    inbox_b = Inbox()
    with running(a, [a, b], Inbox()) as ta, running(b, [a, b], inbox_b):
        connect(ta, inbox_b, b)
        base = inbox_b.count()

        def sender(t: int) -> None:
            for k in range(20):
                ta.send([Heartbeat(1, a, b, t, k * 100 + i) for i in range(100)])

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert wait_until(lambda: inbox_b.count() - base == 8000), inbox_b.count() - base
        got = [m for m in inbox_b.snapshot()[base:] if isinstance(m, Heartbeat)]
        for t in range(4):  # each thread's messages arrive in its order
            rounds = [m.round for m in got if m.commit == t]
            assert rounds == list(range(2000))


@pytest.mark.timeout(60)
def test_a_raising_callback_does_not_kill_the_thread() -> None:
    a, b = free_address(), free_address()
    inbox_b = Inbox()
    calls: list[int] = []

    def exploding(msgs: list[Message]) -> None:
        calls.append(len(msgs))
        if len(calls) == 1:
            raise RuntimeError("boom")
        inbox_b.on_peer(msgs)

    tb = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=b,
        peers=[a],
        on_peer_messages=exploding,
        on_client_requests=inbox_b.on_client,
    )
    tb.start()
    try:
        with running(a, [a, b], Inbox()) as ta:

            def first_call() -> bool:
                ta.send([Heartbeat(0, a, b, 0, 0)])
                return bool(calls)

            assert wait_until(first_call, step=0.02)
            assert tb.stats()["callback_errors"] == 1
            ta.send([Heartbeat(1, a, b, 1, 1)])
            assert wait_until(lambda: Heartbeat(1, a, b, 1, 1) in inbox_b.snapshot())
            assert tb._thread is not None and tb._thread.is_alive()
    finally:
        tb.close()


@pytest.mark.timeout(30)
def test_close_is_idempotent_and_later_sends_are_counted() -> None:
    a, b = free_address(), free_address()
    transport = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=a,
        peers=[b],
        on_peer_messages=lambda m: None,
        on_client_requests=lambda r: None,
    )
    transport.start()
    thread = transport._thread
    assert thread is not None and thread.is_alive()
    transport.close()
    transport.close()
    assert not thread.is_alive()
    transport.send([Heartbeat(1, a, b, 0, 0)])
    assert transport.stats()["dropped_closed"] == 1
    with pytest.raises(TransportError):
        transport.start()


@pytest.mark.timeout(30)
def test_close_from_a_callback_does_not_deadlock() -> None:
    a, b = free_address(), free_address()
    holder: list[ZmqTransport] = []
    closed = threading.Event()

    def on_peer(msgs: list[Message]) -> None:
        holder[0].close()
        closed.set()

    tb = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=b,
        peers=[a],
        on_peer_messages=on_peer,
        on_client_requests=lambda r: None,
    )
    holder.append(tb)
    tb.start()
    thread = tb._thread
    assert thread is not None
    try:
        with running(a, [a, b], Inbox()) as ta:

            def ping() -> bool:
                ta.send([Heartbeat(0, a, b, 0, 0)])
                return closed.is_set()

            assert wait_until(ping, timeout=10, step=0.02)
        thread.join(timeout=10)
        assert not thread.is_alive()
    finally:
        tb.close()


@pytest.mark.timeout(30)
def test_port_in_use_raises() -> None:
    a = free_address()
    with running(a, [a], Inbox()):
        second = ZmqTransport(
            cluster_id=CLUSTER,
            peer_id=a,
            peers=[],
            on_peer_messages=lambda m: None,
            on_client_requests=lambda r: None,
        )
        with pytest.raises(TransportError):
            second.start()
        second.close()


@pytest.mark.timeout(30)
def test_bad_peer_ids_are_refused() -> None:
    for bad in ["nohost", "h:", ":80", "h:0", "h:70000", "h:x"]:
        with pytest.raises(ValueError):
            ZmqTransport(
                cluster_id=CLUSTER,
                peer_id="127.0.0.1:1",
                peers=[bad],
                on_peer_messages=lambda m: None,
                on_client_requests=lambda r: None,
            ).close()


# --------------------------------------------------------------------------- clients


@pytest.mark.timeout(60)
def test_client_request_reply_echo() -> None:
    b = free_address()
    holder: list[ZmqTransport] = []

    def echo(reqs: list[tuple[bytes, ClientRequest]]) -> None:
        replies = []
        for routing_id, req in reqs:
            # A stale reply for another request first: the channel must skip it.
            replies.append((routing_id, ClientReply(req.request_id + 1000, False)))
            replies.append((routing_id, ClientReply(req.request_id, True, [req.op, req.payload])))
        holder[0].reply(replies)

    tb = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=b,
        peers=[],
        on_peer_messages=lambda m: None,
        on_client_requests=echo,
    )
    holder.append(tb)
    tb.start()
    try:
        with ClientChannel(CLUSTER, "client-1") as channel:
            for i in range(20):
                reply = channel.request(b, ClientRequest(i, "put", {"k": i}, "client-1", i), 5.0)
                assert reply == ClientReply(i, True, ["put", {"k": i}])
            assert channel.ignored >= 20
        with ClientChannel("other-cluster", "client-2") as channel, pytest.raises(TransportTimeout):
            channel.request(b, ClientRequest(1, "get"), 0.5)
        assert wait_until(lambda: tb.stats().get("rejected_wrong-cluster", 0) == 1)
        assert tb.stats()["replies_sent"] == 40
    finally:
        tb.close()


@pytest.mark.timeout(30)
def test_client_times_out_without_a_server_or_a_reply() -> None:
    nobody = free_address()
    b = free_address()
    inbox = Inbox()
    with running(b, [b], inbox), ClientChannel(CLUSTER, "client") as channel:
        started = time.monotonic()
        with pytest.raises(TransportTimeout):
            channel.request(nobody, ClientRequest(1, "get"), 0.3)
        assert time.monotonic() - started < 2
        with pytest.raises(TransportTimeout):  # the server never answers
            channel.request(b, ClientRequest(2, "get"), 0.3)
        assert wait_until(lambda: len(inbox.requests) == 1)
        routing_id, req = inbox.requests[0]
        assert req == ClientRequest(2, "get") and routing_id


class _Origins:
    """An origin check that admits one founding and one instance per sender."""

    def __init__(self, origin: tuple[str, str], known: dict[str, str]) -> None:
        self.origin = origin
        self.known = known

    def admit(self, sender: str, origin: tuple[str, str], messages: object = ()) -> str | None:
        if origin[0] != self.origin[0]:
            return "other-founding"
        return None if self.known.get(sender) == origin[1] else "replaced-peer"

    def describe(self, asker: str | None) -> dict[str, object]:
        return {"cluster_uuid": self.origin[0], "instance": self.origin[1], "asker": asker}


@pytest.mark.timeout(60)
def test_peer_frames_are_admitted_by_their_origin_and_hellos_flow() -> None:
    a, b, c = free_address(), free_address(), free_address()
    inbox_a, inbox_b, inbox_c = Inbox(), Inbox(), Inbox()
    check_a = _Origins(("u1", "a1"), {b: "b1", c: "c1"})
    with (
        running(a, [a, b, c], inbox_a, origin_check=check_a) as ta,
        running(b, [a, b], inbox_b, origin_check=_Origins(("u1", "b1"), {a: "a1"})) as tb,
        running(c, [a, c], inbox_c, origin_check=_Origins(("u1", "c2"), {a: "a1"})) as tc,
        running(free_address(), [a], Inbox()) as plain,
    ):
        connect(tb, inbox_a, a)  # b's frames carry its known origin: admitted
        assert wait_until(lambda: ta.stats().get("hellos", 0) >= 1, timeout=5)

        def refused(sender: ZmqTransport, reason: str) -> bool:
            # Resent until it counts: a frame sent before the connection is up is dropped.
            sender.send([Heartbeat(1, sender.peer_id, a, 0, 0)])
            return ta.stats().get(f"rejected_{reason}", 0) >= 1

        assert wait_until(lambda: refused(tc, "replaced-peer"), timeout=10, step=0.02)
        assert wait_until(lambda: refused(plain, "no-origin"), timeout=10, step=0.02)
        check_a.origin = ("u2", "a1")  # now b is of another founding
        assert wait_until(lambda: refused(tb, "other-founding"), timeout=10, step=0.02)
        assert not [m for m in inbox_a.snapshot() if m.src in (c, plain.peer_id)]


@pytest.mark.timeout(60)
def test_requests_pinned_to_another_founding_are_refused_before_the_peer_sees_them() -> None:
    """A client frame's origin with no instance names the founding its requests are for:
    a peer of another founding answers ``other_founding`` itself (the peer actor never sees
    them), except the ops that change nothing; and it carries no peer messages."""
    b = free_address()
    inbox = Inbox()
    with (
        running(b, [b], inbox, origin_check=_Origins(("u1", "b1"), {})) as tb,
        ClientChannel(CLUSTER, "client") as channel,
    ):
        channel.founding = "u2"
        refused = channel.request(b, ClientRequest(1, "write", "x"), 5)
        assert refused == ClientReply(1, False, f"{b} belongs to founding u1", OTHER_FOUNDING)
        assert tb.stats().get("client_other_founding") == 1
        with pytest.raises(TransportTimeout):  # reaches the peer (which never answers here)
            channel.request(b, ClientRequest(2, "status"), 0.3)
        channel.founding = "u1"
        with pytest.raises(TransportTimeout):
            channel.request(b, ClientRequest(3, "write", "y"), 0.3)
        assert wait_until(lambda: len(inbox.requests) == 2)
        assert [r.request_id for _, r in inbox.requests] == [2, 3]
        # A peer message under a client's origin is refused: a client cannot pose as a peer.
        frame = encode(Heartbeat(1, "client", b, 0, 0), cluster_id=CLUSTER, sender="client",
                       origin=("u1", ""))  # fmt: skip
        sock = channel._socket(b)
        sock.send(frame)
        assert wait_until(lambda: tb.stats().get("rejected_no-origin", 0) == 1)
        assert not inbox.snapshot()


@pytest.mark.timeout(60)
def test_request_each_gathers_answers_and_names_the_peers_it_could_not_reach() -> None:
    b, c, nobody = free_address(), free_address(), free_address()
    inbox_b, inbox_c = Inbox(), Inbox()
    with (
        running(b, [b], inbox_b) as tb,
        running(c, [c], inbox_c),
        ClientChannel(CLUSTER, "client") as channel,
    ):
        requests = {peer: ClientRequest(i, "status") for i, peer in enumerate([b, c, nobody])}

        def answer_b() -> None:  # only b answers (c hears, but stays silent)
            assert wait_until(lambda: len(inbox_b.requests) == 1)
            routing_id, request = inbox_b.requests[0]
            tb.reply([(routing_id, ClientReply(request.request_id, True, "b here"))])

        helper = threading.Thread(target=answer_b)
        helper.start()
        replies, unreachable = channel.request_each(requests, 1.0, connect_timeout=0.2)
        helper.join()
        assert replies == {b: ClientReply(0, True, "b here")}
        assert unreachable == {nobody}
        assert len(inbox_c.requests) == 1  # sent, unanswered: neither replied nor unreachable
        # Enough said: it returns as soon as the answers so far satisfy the caller.
        started = time.monotonic()
        again = {b: ClientRequest(10, "status"), c: ClientRequest(11, "status")}
        replies, _ = channel.request_each(again, 5.0, enough=lambda _replies: True)
        assert replies == {} and time.monotonic() - started < 1


@pytest.mark.timeout(60)
def test_identity_is_answered_by_the_transport_even_when_it_sheds() -> None:
    """Sessions ask every peer ``identity`` before their first request: the transport
    answers it itself, so it is never shed, never queued behind writes, and never left in
    flight to count against the asking connection's next request."""
    b = free_address()
    inbox = Inbox()
    with (
        running(b, [b], inbox, origin_check=_Origins(("u1", "b1"), {}), max_client_requests=1),
        ClientChannel(CLUSTER, "client") as channel,
    ):
        with pytest.raises(TransportTimeout):  # admitted, and never answered here
            channel.request(b, ClientRequest(1, "write", "x"), 0.3)
        shed = channel.request(b, ClientRequest(2, "write", "y"), 5)  # the bound is reached
        assert (shed.ok, shed.error) == (False, "overloaded")
        answer = channel.request(b, ClientRequest(3, "identity", {"peer": "a:1"}), 5)
        assert answer == ClientReply(3, True, {"cluster_uuid": "u1", "instance": "b1",
                                               "asker": "a:1"})  # fmt: skip
        bad = channel.request(b, ClientRequest(4, "identity", {"peer": 7}), 5)
        assert (bad.ok, bad.error) == (False, "bad_request")
        assert [r.request_id for _, r in inbox.requests] == [1]  # the peer saw the write only


@pytest.mark.timeout(60)
def test_a_peer_not_founded_refuses_requests_pinned_to_a_founding() -> None:
    b = free_address()
    with (
        running(b, [b], Inbox(), origin_check=_Origins(("", "b1"), {})),
        ClientChannel(CLUSTER, "client") as channel,
    ):
        channel.founding = "u1"
        refused = channel.request(b, ClientRequest(1, "query_local", "x"), 5)
        assert (refused.ok, refused.error) == (False, NOT_FOUNDED)  # sessions try others
        assert "not founded yet" in refused.result


@pytest.mark.timeout(60)
def test_a_flood_of_identity_requests_is_shed_per_connection() -> None:
    b = free_address()
    with (
        running(b, [b], Inbox(), origin_check=_Origins(("u1", "b1"), {})),
        ClientChannel(CLUSTER, "flooder") as flooder,
        ClientChannel(CLUSTER, "polite") as polite,
    ):
        requests = {b: ClientRequest(0, "identity")}
        answers = [flooder.request(b, ClientRequest(i, "identity"), 5) for i in range(1, 61)]
        errors = [a.error for a in answers]
        assert errors.count(None) >= 20 and "overloaded" in errors  # the budget: 20 a second
        replies, _ = polite.request_each(requests, 5)  # another connection is not held up
        assert replies[b].ok

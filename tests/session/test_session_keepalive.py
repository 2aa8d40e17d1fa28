"""The keep-alive's timing against a scripted leader that answers pings slowly: the leader
must hear from an idle session every half timeout, counted from when the last request was
sent, so a slow answer never pushes the next ping towards the expiry. And a call's timeout
is the whole call's: a first attempt that timed out leaves retries only what is left."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest

from zraft.backends import kv
from zraft.session import AsyncLightSession, LightSession, RequestTimeout, Session
from zraft.transport import ClientReply, TransportTimeout

TIMEOUT = 2.0
SLOW_ANSWER = 0.7  # each ping is answered this long after the leader heard it


class SlowLeader:
    """Stands in for LightSession._send: notes when each request arrives, answers late."""

    def __init__(self, lose_first_ping: bool = False) -> None:
        self.heard: list[tuple[str, float]] = []
        self.lock = threading.Lock()
        self.lose_first_ping = lose_first_ping
        self.request_ids = itertools.count(1)

    def send(
        self, _session: LightSession, peer: str, op: str, payload: Any, timeout: float, *_: int
    ) -> ClientReply:
        with self.lock:
            self.heard.append((op, time.monotonic()))
            pings = sum(1 for o, _t in self.heard if o == "ping")
        if op == "ping" and self.lose_first_ping and pings == 1:
            time.sleep(timeout)
            raise TransportTimeout("lost")  # as if it never arrived
        if op == "ping":
            time.sleep(SLOW_ANSWER)
        result = {"session": "s", "timeout_ms": 2000} if op == "session_open" else None
        return ClientReply(next(self.request_ids), True, result)

    def gaps(self) -> list[float]:
        """Seconds between consecutive requests the leader heard (lost ones excluded)."""
        with self.lock:
            times = [t for _op, t in self.heard]
        return [b - a for a, b in itertools.pairwise(times)]


def _session(monkeypatch: pytest.MonkeyPatch, leader: SlowLeader) -> Session:
    def send(session: LightSession, *args: Any) -> ClientReply:
        return leader.send(session, *args)

    monkeypatch.setattr(LightSession, "_send", send)
    # A retry after a lost ping goes to another peer, which (scripted) answers as leader.
    # (Scripted peers answer no ``identity``: the session is given its founding.)
    return Session(["p1:1", "p2:1", "p3:1"], session_timeout=TIMEOUT, cluster_uuid="f")


@pytest.mark.timeout(60)
def test_pings_come_every_half_timeout_from_the_last_send_however_slow_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    leader = SlowLeader()
    session = _session(monkeypatch, leader)
    try:
        time.sleep(4.2 * TIMEOUT / 2)
        gaps = leader.gaps()
    finally:
        session.close()
    assert len(gaps) >= 3, gaps
    # Counting from the answer would give SLOW_ANSWER + TIMEOUT / 2 = 1.7 s between pings;
    # from the send, TIMEOUT / 2 = 1.0 s plus a thread's wakeup.
    assert all(TIMEOUT / 2 - 0.05 <= gap < TIMEOUT / 2 + 0.35 for gap in gaps), gaps


@pytest.mark.timeout(60)
def test_a_lost_ping_is_sent_again_within_the_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    leader = SlowLeader(lose_first_ping=True)
    session = _session(monkeypatch, leader)
    try:
        time.sleep(2.2 * TIMEOUT)
        with leader.lock:
            heard = list(leader.heard)
    finally:
        session.close()
    (_, opened), (_, lost), (_, again), *_ = heard
    assert lost - opened == pytest.approx(TIMEOUT / 2, abs=0.3)
    # The lost ping waits out its own timeout (a quarter of the session's), then a short
    # pause: the retry reaches the leader well before the session would expire.
    assert again - opened < TIMEOUT * 0.9, heard


def _silent(timeout: float) -> ClientReply:
    time.sleep(timeout)
    raise TransportTimeout("no answer")


@pytest.mark.timeout(30)
def test_a_call_gives_up_at_its_timeout_not_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every peer is silent: each try waits out its own timeout. Before the fix the first
    # try used up the budget and the retries then got a whole new one (2x the timeout).
    monkeypatch.setattr(LightSession, "_send", lambda _s, _p, _o, _d, timeout, *_: _silent(timeout))
    with LightSession(["p1:1", "p2:1", "p3:1"], cluster_uuid="f") as session:
        started = time.monotonic()
        with pytest.raises(RequestTimeout):
            session.write(kv.put("k", 1), timeout=1.0)
        assert time.monotonic() - started < 1.3


@pytest.mark.timeout(30)
def test_an_async_call_gives_up_at_its_timeout_not_later(monkeypatch: pytest.MonkeyPatch) -> None:
    async def silent(_s: Any, _p: str, _o: str, _d: Any, timeout: float, *_: int) -> ClientReply:
        await asyncio.sleep(timeout)
        raise TransportTimeout("no answer")

    async def main() -> float:
        async with AsyncLightSession(["p1:1", "p2:1", "p3:1"], cluster_uuid="f") as session:
            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                await session.write(kv.put("k", 1), timeout=1.0)
            return time.monotonic() - started

    monkeypatch.setattr(AsyncLightSession, "_send", silent)
    assert asyncio.run(main()) < 1.3

"""Every error a session call raises is a ``ZraftError``, and a write's error says what it
means for the write: ``maybe_applied`` (outcome unknown: ``retry`` sends the same seq) or
not (definitely not applied: ``retry`` sends it as a new write). Peers here are ports
nobody listens on, or replies made up for ``interpret``."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from zraft.local import free_ports
from zraft.session import (
    AllPeersFailed,
    AsyncLightSession,
    LightSession,
    NotRetryable,
    Overloaded,
    Rejected,
    RequestTimeout,
    ResultForgotten,
    TransportFailure,
    ZraftError,
)
from zraft.session.requests import TryAgain, interpret
from zraft.session.tracker import LeaderTracker
from zraft.transport import ClientReply, TransportError


def nobody() -> str:
    (port,) = free_ports(1)
    return f"127.0.0.1:{port}"


@pytest.mark.timeout(30)
def test_one_peer_calls_to_a_dead_peer_raise_request_timeout() -> None:
    with LightSession([nobody()], election_timeout=0.1) as session:
        with pytest.raises(RequestTimeout):
            session.status(timeout=0.3)
        with pytest.raises(RequestTimeout):
            session.query_local({"op": "get", "key": "k"}, timeout=0.3)

    async def main() -> None:
        async with AsyncLightSession([nobody()], election_timeout=0.1) as session:
            with pytest.raises(RequestTimeout):
                await session.status(timeout=0.3)
            with pytest.raises(RequestTimeout):
                await session.query_local(None, timeout=0.3)

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_a_write_that_never_left_is_definitely_not_applied_and_retried_as_new() -> None:
    # Whether the peers are found dead within the call's time (AllPeersFailed) or not
    # (RequestTimeout) depends on the machine's load; either way nothing was ever sent.
    never_sent = (AllPeersFailed, RequestTimeout)
    with LightSession([nobody(), nobody()], election_timeout=0.1) as session:
        with pytest.raises(never_sent) as caught:
            session.write({"op": "put", "key": "k", "value": 1}, timeout=2)
        error = caught.value
        assert not error.maybe_applied and error.request is not None
        assert error.request.seq == 1 and session._acked == 1  # nothing to keep for it
        with pytest.raises(never_sent) as again:
            session.retry(error, timeout=2)
        assert again.value.request is not None and again.value.request.seq == 2
        assert again.value.request.payload == error.request.payload


@pytest.mark.timeout(30)
def test_retry_refuses_what_it_cannot_resend() -> None:
    with LightSession([nobody()]) as one, LightSession([nobody()]) as other:
        with pytest.raises(NotRetryable):  # a ZraftError, and a ValueError
            one.retry(RequestTimeout("a query's timeout: no request to send"))
        with pytest.raises(AllPeersFailed) as caught:
            other.write({"x": 1}, timeout=1)
        with pytest.raises(NotRetryable):
            one.retry(caught.value)  # another session's seq
        assert issubclass(NotRetryable, ZraftError) and issubclass(NotRetryable, ValueError)


@pytest.mark.timeout(30)
def test_a_transport_failure_is_a_zraft_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with LightSession([nobody()]) as session:

        def broken(*args: Any, **kwargs: Any) -> None:
            raise TransportError("no CURVE public key for that peer")

        monkeypatch.setattr(session._channel, "request", broken)
        monkeypatch.setattr(session._channel, "request_each", broken)  # asking the founding
        for call in (lambda: session.write({"x": 1}), lambda: session.status()):
            with pytest.raises(TransportFailure) as caught:
                call()
            assert isinstance(caught.value, ZraftError)


def reply(error: str, result: Any = "why") -> ClientReply:
    return ClientReply(1, False, result, error)


@pytest.mark.timeout(30)
def test_session_table_answers_are_not_rejections() -> None:
    tracker = LeaderTracker(["a", "b"], 1.0, 0.5)
    with pytest.raises(ResultForgotten) as forgotten:
        interpret(tracker, "a", reply("forgotten", "request 3 was already acknowledged"))
    assert not isinstance(forgotten.value, Rejected) and forgotten.value.maybe_applied
    # too far ahead of its acknowledged results: wait and send again; Overloaded at the end
    with pytest.raises(TryAgain) as again:
        interpret(tracker, "a", reply("too_far_ahead"))
    assert again.value.wait > 0 and isinstance(again.value.final, Overloaded)
    with pytest.raises(Rejected):
        interpret(tracker, "a", reply("rejected"))


@pytest.mark.timeout(30)
def test_async_writes_beyond_the_results_window_are_held_back_then_released() -> None:
    async def main() -> None:
        async with AsyncLightSession([nobody()], election_timeout=0.1) as session:
            session._window = 1
            # a write that ends (nobody listens: never sent) releases the one held behind it,
            # which is then sent with the time its call has left
            outcomes = await asyncio.gather(
                *(session.write({"x": i}, timeout=t) for i, t in enumerate([0.5, 1.5, 3.0])),
                return_exceptions=True,
            )
            for outcome in outcomes:
                assert isinstance(outcome, AllPeersFailed | RequestTimeout), outcomes
                assert not outcome.maybe_applied
            # an unknown outcome pins acked: the next write is held, and never sent
            pinned = session._acks.issue()
            session._acks.unknown(pinned)
            with pytest.raises(Overloaded) as caught:
                await session.write({"x": "held"}, timeout=0.3)
            assert not caught.value.maybe_applied
            assert caught.value.request is not None and caught.value.request.seq == pinned + 1
            session._acks.release(pinned)  # abandoned: the window opens again
            with pytest.raises((AllPeersFailed, RequestTimeout)):  # sent, to nobody
                await session.write({"x": "next"}, timeout=1)

    asyncio.run(main())

"""Retrying a write whose outcome is unknown applies it exactly once: ``session.retry(error)``
sends the same request (same client id and seq) again, sync, asyncio and long-lived, also
after a leader change. A backend whose writes can be slow makes the first attempt time out
although it is applied; an append-only log shows any second apply."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_support import local_cluster
from zraft.local import LocalCluster
from zraft.session import (
    AllPeersFailed,
    AsyncLightSession,
    LightSession,
    RequestTimeout,
    ResultForgotten,
    Session,
    ZraftError,
)

BACKEND = ("--backend", "tests.support.slow_append_backend:SlowAppendLog")
SLOW = 1.0  # seconds an apply takes: longer than the write's timeout


def slow(item: str) -> dict[str, Any]:
    return {"append": item, "sleep": SLOW}


def retry_until_answered(session: LightSession, error: ZraftError, within: float = 60) -> Any:
    """``session.retry`` until the write's outcome is known: a slow apply on the peers'
    loops, or an election, can make a retry's outcome unknown too (then retried again)."""
    deadline = time.monotonic() + within
    while True:
        try:
            return session.retry(error, timeout=20)
        except (RequestTimeout, AllPeersFailed) as again:
            assert again.maybe_applied, again  # a retry of an unknown outcome stays unknown
            assert time.monotonic() < deadline, again
            error = again
            time.sleep(0.1)


async def retry_until_answered_async(
    session: AsyncLightSession, error: ZraftError, within: float = 60
) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            return await session.retry(error, timeout=20)
        except (RequestTimeout, AllPeersFailed) as again:
            assert again.maybe_applied, again
            assert loop.time() < deadline, again
            error = again
            await asyncio.sleep(0.1)


def counts(cluster: LocalCluster) -> collections.Counter[str]:
    with LightSession(cluster.peers, timeout=30) as reader:
        return collections.Counter(reader.query(None))


@pytest.mark.timeout(120)
def test_a_timed_out_write_retried_with_the_same_seq_is_applied_once(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, *BACKEND) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with LightSession(cluster.peers, timeout=10) as session:
            session.write({"append": "warm-up"})
            for i in range(5):
                with pytest.raises((RequestTimeout, AllPeersFailed)) as caught:
                    session.write(slow(f"x{i}"), timeout=0.3)
                error = caught.value
                assert error.maybe_applied and error.request is not None
                assert session._acked < error.request.seq  # pinned while unknown
                first = retry_until_answered(session, error)
                assert session._acked == error.request.seq
                session.write({"append": f"after{i}"})  # the session goes on as usual
                assert first >= 2
        seen = counts(cluster)
        assert all(seen[f"x{i}"] == 1 for i in range(5)), seen


@pytest.mark.timeout(120)
def test_async_retry_is_applied_once(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, *BACKEND) as cluster:
        cluster.start()
        cluster.wait_for_leader()

        async def main() -> None:
            async with AsyncLightSession(cluster.peers, timeout=10) as session:
                await session.write({"append": "warm-up"})
                errors: list[ZraftError] = []

                async def one(i: int) -> None:
                    try:
                        await session.write(slow(f"a{i}"), timeout=0.3)
                    except (RequestTimeout, AllPeersFailed) as error:
                        errors.append(error)

                await asyncio.gather(*(one(i) for i in range(3)))
                assert len(errors) == 3 and all(e.maybe_applied for e in errors)
                await asyncio.gather(*(retry_until_answered_async(session, e) for e in errors))
                assert session._acked() == session._acks.issued

        asyncio.run(main())
        seen = counts(cluster)
        assert [seen[f"a{i}"] for i in range(3)] == [1, 1, 1], seen


@pytest.mark.timeout(120)
def test_long_lived_session_retry_is_applied_once(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, *BACKEND) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with Session(cluster.peers, session_timeout=30, timeout=10) as session:
            assert session.session_timeout == 30 and session.timeout == 10
            with pytest.raises((RequestTimeout, AllPeersFailed)) as caught:
                session.write(slow("s1"), timeout=0.3)
            assert caught.value.maybe_applied
            retry_until_answered(session, caught.value)
        # the old spelling still means the session's expiry, with a warning
        with pytest.warns(DeprecationWarning), Session(cluster.peers, timeout=7) as old:
            assert old.session_timeout == 7 and old.timeout == 5.0
        seen = counts(cluster)
        assert seen["s1"] == 1, seen


@pytest.mark.timeout(180)
def test_retry_after_a_leader_change_is_applied_once(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, *BACKEND) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        with LightSession(cluster.peers, timeout=10) as session:
            session.write({"append": "warm-up"})
            with pytest.raises((RequestTimeout, AllPeersFailed)) as caught:
                session.write(slow("moved"), timeout=0.3)  # committed; the leader applies it
            cluster.kill(leader)
            survivors = [p for p in cluster.peers if p != leader]
            cluster.wait_for_leader(timeout=20, among=survivors)
            retry_until_answered(session, caught.value)
            cluster.start_peer(leader)
        seen = counts(cluster)
        assert seen["moved"] == 1, seen


@pytest.mark.timeout(120)
def test_a_retry_past_the_retry_window_is_refused_as_forgotten(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, *BACKEND) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with LightSession(cluster.peers, timeout=10, retry_window=0.5) as session:
            with pytest.raises((RequestTimeout, AllPeersFailed)) as caught:
                session.write(slow("late"), timeout=0.3)
            time.sleep(SLOW + 0.5)
            session.write({"append": "next"})  # carries an acked past the expired pin
            with pytest.raises(ResultForgotten) as forgotten:
                session.retry(caught.value)
            assert forgotten.value.maybe_applied
        assert counts(cluster)["late"] == 1

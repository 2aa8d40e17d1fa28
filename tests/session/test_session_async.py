"""The asyncio session: many writes in flight, each exactly once, answered correctly."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.cluster_support import local_cluster, start_with_newcomers
from zraft.backends import kv
from zraft.session import AsyncLightSession, Rejected

APPEND_LOG = "tests.support.append_backend:AppendLog"


@pytest.mark.timeout(120)
def test_many_writes_in_flight_from_one_session(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, "--backend", APPEND_LOG) as cluster:
        cluster.start()
        cluster.wait_for_leader()

        async def main() -> tuple[list[int], list[str], int]:
            async with AsyncLightSession(cluster.peers) as session:
                first = await session.write({"append": "first"})
                results = await asyncio.gather(
                    *(session.write({"append": f"w{i}"}) for i in range(2000))
                )
                with pytest.raises(Rejected):
                    await session.write({"no": "append"})
                items = await session.query(None)
                acked = session._acked()
                return [first, *results], items, acked

        results, items, acked = asyncio.run(main())
        assert sorted(results) == list(range(1, 2002))  # each append applied once, in order
        assert items[0] == "first" and sorted(items[1:]) == sorted(f"w{i}" for i in range(2000))
        assert acked == 2002  # every write answered, the rejected one too


@pytest.mark.timeout(60)
def test_async_query_and_connect_from_one_peer(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        follower = next(p for p in cluster.peers if p != leader)

        async def main() -> object:
            session = await AsyncLightSession.connect(follower)
            try:
                await session.write(kv.put("k", "v"))
                assert sorted(session.tracker.peers) == sorted(cluster.peers)
                return await session.query(kv.get("k"))
            finally:
                await session.close()

        assert asyncio.run(main()) == {"found": True, "value": "v"}


@pytest.mark.timeout(120)
def test_async_membership_changes_and_transfer(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 4) as cluster:
        a, b, c, d = cluster.peers
        leader = start_with_newcomers(cluster, 3)
        target = next(p for p in (a, b, c) if p != leader)

        async def main() -> None:
            async with AsyncLightSession([a, b, c]) as session:
                await session.write(kv.put("k", 1))
                config = await session.add_learner(d, timeout=20)
                assert config.learners == {d} and config.voters == {a, b, c}
                config = await session.promote(d, timeout=20)
                assert config.voters == {a, b, c, d} and not config.learners
                settled = await session.members(timeout=10, settled=True)
                assert settled == config
                assert await session.transfer_leadership(target, timeout=10) == target
                config = await session.remove(leader, timeout=20)
                assert config.voters == {a, b, c, d} - {leader}
                assert (await session.status())["id"] == target
                assert await session.query(kv.get("k")) == {"found": True, "value": 1}

        asyncio.run(main())
        cluster.wait_for(lambda: not cluster.alive(leader), 20, "the removed peer to stop")

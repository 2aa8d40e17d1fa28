"""One-shot watches against real peer processes: once and only once per arming, in commit
order; change_leader when the leader dies; a thousand at once; expiry fires them; a slow
callback does not starve the keep-alive; backends that cannot name keys say so."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.cluster_support import ELECTION_TIMEOUT_MS, local_cluster
from zraft.backends import kv
from zraft.session import (
    CHANGE,
    CHANGE_LEADER,
    SESSION_EXPIRED,
    LightSession,
    NotSupported,
    Session,
    WatchEvent,
)

APPEND_LOG = "tests.support.append_backend:AppendLog"
TIMEOUT = 1.5  # the sessions', seconds
E = ELECTION_TIMEOUT_MS / 1000


class Recorder:
    """Collects events from the delivery thread."""

    def __init__(self) -> None:
        self.events: list[WatchEvent] = []
        self._cond = threading.Condition()

    def __call__(self, event: WatchEvent) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> list[WatchEvent]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.events) >= count, timeout)
            return list(self.events)


@pytest.mark.timeout(120)
def test_a_watch_fires_once_per_arming_in_commit_order(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with (
            Session(cluster.peers, session_timeout=TIMEOUT) as watcher,
            LightSession(cluster.peers) as w,
        ):
            seen = Recorder()
            assert watcher.query(kv.get("a"), watch=seen) == {"found": False, "value": None}
            listing = watcher.query(kv.list_prefix("dir/"), watch=seen)
            assert listing == {"items": [], "more": False}
            w.write(kv.put("unrelated", 0))
            w.write(kv.put("a", 1))
            w.write(kv.put("a", 2))  # the watch on "a" fired already: nothing more
            w.write(kv.put("dir/x", 3))
            w.write(kv.put("dir/y", 4))
            events = seen.wait_for(2, timeout=10)
            time.sleep(0.3)  # room for a wrong extra event to show up
            assert len(seen.events) == 2
            first, second = events
            assert (first.reason, first.key, first.query) == (CHANGE, "a", kv.get("a"))
            assert (second.reason, second.key) == (CHANGE, "dir/x")
            assert 0 < first.index < second.index  # commit order, with the log index
            assert watcher.watch_count == 0
            # Re-armed, it fires again, once.
            assert watcher.query(kv.get("a"), watch=seen) == {"found": True, "value": 2}
            w.write(kv.delete("a"))
            w.write(kv.put("a", 5))
            seen.wait_for(3, timeout=10)
            time.sleep(0.3)
            assert [e.reason for e in seen.events] == [CHANGE] * 3
            assert seen.events[2].index > second.index


@pytest.mark.timeout(120)
def test_change_leader_fires_when_the_leader_dies(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        leader = cluster.wait_for_leader()
        with Session(cluster.peers, session_timeout=TIMEOUT) as watcher:
            watcher.query(kv.get("k"), watch=True)
            watcher.query(kv.get("j"), watch=True)
            cluster.kill(leader)
            killed = time.monotonic()
            stream = watcher.watch_events(timeout=10 * E)
            events = [next(stream)]
            took = time.monotonic() - killed
            events.append(next(stream))
            assert sorted((e.reason, e.query["key"]) for e in events) == [
                (CHANGE_LEADER, "j"),
                (CHANGE_LEADER, "k"),
            ]
            print(f"change_leader {took:.2f}s after kill -9 of the leader")
            # Re-armed on the new leader, a write fires it with reason change.
            watcher.query(kv.get("k"), watch=True)
            watcher.write(kv.put("k", 1))
            (event,) = list(watcher.watch_events(timeout=3))
            assert (event.reason, event.key) == (CHANGE, "k")


@pytest.mark.timeout(180)
def test_a_thousand_watches_on_a_thousand_keys_all_fire_on_a_bulk_change(tmp_path: Path) -> None:
    keys = [f"bulk/{i:04d}" for i in range(1000)]
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with Session(cluster.peers, session_timeout=5) as watcher:
            owner = Session(cluster.peers, session_timeout=5)
            for key in keys:
                owner.write(kv.put(key, 1), temporary=True)
            seen = Recorder()
            for key in keys:
                watcher.query(kv.get(key), watch=seen)
            assert watcher.watch_count == 1000
            owner.close()  # one entry deletes the thousand temporary keys
            events = seen.wait_for(1000, timeout=30)
            time.sleep(0.3)
            assert len(seen.events) == 1000
            assert sorted(e.key for e in events) == keys
            assert {e.reason for e in events} == {CHANGE}
            assert len({e.index for e in events}) == 1  # all from the one expiry entry
            assert [e.watch_id for e in events] == sorted(e.watch_id for e in events)


@pytest.mark.timeout(120)
def test_an_owners_expiry_fires_watches_on_its_keys(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        owner = subprocess.Popen(
            [sys.executable, "-m", "tests.support.session_owner", ",".join(cluster.peers),
             str(TIMEOUT), "holder"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert owner.stdout is not None and owner.stdout.readline().strip() == "ready"
            with Session(cluster.peers, session_timeout=5) as watcher:
                assert watcher.query(kv.get("holder"), watch=True)["found"]
                owner.kill()
                (event,) = list(watcher.watch_events(timeout=TIMEOUT + 4 * E))
                assert (event.reason, event.key) == (CHANGE, "holder")
        finally:
            owner.kill()
            owner.wait(timeout=10)


@pytest.mark.timeout(120)
def test_a_paused_owner_finds_its_watches_fired_with_its_session_expired(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        owner = subprocess.Popen(
            [sys.executable, "-m", "tests.support.session_owner", ",".join(cluster.peers),
             str(TIMEOUT), "paused", "watch"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert owner.stdout is not None and owner.stdin is not None
            assert owner.stdout.readline().strip() == "ready"
            owner.send_signal(signal.SIGSTOP)
            time.sleep(TIMEOUT + 3 * E)
            owner.send_signal(signal.SIGCONT)
            owner.stdin.write("write\n")
            owner.stdin.flush()
            lines = {owner.stdout.readline().strip() for _ in range(2)}
            # Its own key went with the expiry: the watch fired, exactly once, either as a
            # change seen by the poller or as the session's end found by the next call.
            assert "expired" in lines
            assert lines - {"expired"} <= {f"fired {SESSION_EXPIRED}", f"fired {CHANGE}"}
            assert len(lines) == 2
        finally:
            owner.kill()
            owner.wait(timeout=10)


@pytest.mark.timeout(120)
def test_a_slow_callback_does_not_starve_the_keep_alive(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with Session(cluster.peers, session_timeout=TIMEOUT) as s, LightSession(cluster.peers) as w:
            slow_done = threading.Event()

            def slow(event: WatchEvent) -> None:
                time.sleep(3 * TIMEOUT)  # far longer than the session timeout
                slow_done.set()

            seen = Recorder()
            s.write(kv.put("mine", 1), temporary=True)
            s.query(kv.get("x"), watch=slow)
            s.query(kv.get("y"), watch=seen)
            w.write(kv.put("x", 1))
            w.write(kv.put("y", 1))
            assert slow_done.wait(timeout=6 * TIMEOUT)
            assert [e.key for e in seen.wait_for(1, timeout=5)] == ["y"]  # after the slow one
            assert w.query(kv.get("mine"))["found"]  # the session lived through it
            s.write(kv.put("still", 1))


@pytest.mark.timeout(120)
def test_watch_events_for_asyncio(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with Session(cluster.peers, session_timeout=TIMEOUT) as s, LightSession(cluster.peers) as w:
            s.query(kv.get("k"), watch=True)
            w.write(kv.put("k", 1))

            async def first() -> WatchEvent:
                async for event in s.watch_events_async(timeout=5):
                    return event
                raise AssertionError("no event")

            event = asyncio.run(first())
            assert (event.reason, event.key) == (CHANGE, "k")


@pytest.mark.timeout(120)
def test_a_backend_that_cannot_name_keys_refuses_watches(tmp_path: Path) -> None:
    with local_cluster(tmp_path, 3, "--backend", APPEND_LOG) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        with Session(cluster.peers, session_timeout=TIMEOUT) as s:
            assert s.query("anything") == []
            with pytest.raises(NotSupported):
                s.query("anything", watch=True)
            assert s.watch_count == 0

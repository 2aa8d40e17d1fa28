"""The WatcherEx-compatible path: every notification through the log, delivered to every
subscriber exactly once in log order as Go redis-watcher JSON; the default callback;
catching up; the async enforcer."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import casbin
import pytest
from casbin.persist.adapters.asyncio import AsyncFileAdapter
from casbin.persist.watcher import Watcher
from casbin.persist.watcher_ex import WatcherEx
from casbin.persist.watcher_update import WatcherUpdatable
from sqlalchemy_adapter import Adapter as SQLAdapter

from tests.casbin_plugin.test_casbin_sync import MemoryCluster, MemoryFeed
from zraft.casbin import commands as c
from zraft.casbin.cluster import BACKEND
from zraft.casbin.sync import PollingWaker
from zraft.casbin.watcher import AsyncRaftWatcher, RaftWatcher, default_update_callback
from zraft.local import LocalCluster

MODELS = Path(__file__).parent / "casbin_models"
RBAC = str(MODELS / "rbac_model.conf")
FIELDS = ["Method", "ID", "Sec", "Ptype", "OldRule", "OldRules", "NewRule", "NewRules",
          "FieldIndex", "FieldValues"]


def memory_watcher(cluster: MemoryCluster, name: str, waker: Any = None) -> RaftWatcher:
    return RaftWatcher(local_id=name, feed=MemoryFeed(cluster), write=cluster.write,
                       waker=waker or PollingWaker(0.002, 0.0005))


@pytest.mark.timeout(30)
def test_every_notification_becomes_one_message_in_go_format() -> None:
    cluster = MemoryCluster()
    w = memory_watcher(cluster, "me")
    inbox: list[str] = []
    listener = memory_watcher(cluster, "listener")
    listener.set_update_callback(inbox.append)
    try:
        assert isinstance(w, Watcher) and isinstance(w, WatcherEx)
        assert isinstance(w, WatcherUpdatable)
        # The way pycasbin calls each method (a single rule is one list argument).
        w.update()
        w.update_for_add_policy("p", "p", ["eve", "data3", "read"])
        w.update_for_remove_policy("p", "p", ["eve", "data3", "read"])
        w.update_for_remove_filtered_policy("p", "p", 1, "data1", "")
        w.update_for_save_policy(None)
        w.update_for_add_policies("g", "g", [["a", "admin"], ["b", "admin"]])
        w.update_for_remove_policies("g", "g", [["a", "admin"]])
        w.update_for_update_policy(["a", "d", "r"], ["a", "d", "w"])
        w.update_for_update_policies([["a", "d", "r"]], [["a", "d", "w"]])
        assert listener.wait_for(cluster.backend.seq, 5)
        messages = [json.loads(raw) for raw in inbox]
        assert all(list(m) == FIELDS for m in messages)
        assert [m["Method"] for m in messages] == [
            "Update", "UpdateForAddPolicy", "UpdateForRemovePolicy",
            "UpdateForRemoveFilteredPolicy", "UpdateForSavePolicy", "UpdateForAddPolicies",
            "UpdateForRemovePolicies", "UpdateForUpdatePolicy", "UpdateForUpdatePolicies"]
        assert messages[1]["NewRule"] == ["eve", "data3", "read"] and messages[1]["ID"] == "me"
        assert messages[3]["FieldIndex"] == 1 and messages[3]["FieldValues"] == ["data1", ""]
        assert messages[5]["NewRules"] == [["a", "admin"], ["b", "admin"]]
        assert messages[7]["OldRule"] == ["a", "d", "r"] and messages[7]["NewRule"] == [
            "a", "d", "w"]
        # The policy itself is untouched: the adapter is the source of truth here.
        assert cluster.query(c.policy())["policy"] == []
    finally:
        w.close()
        listener.close()


@pytest.mark.timeout(30)
def test_own_messages_are_skipped_and_a_cut_off_watcher_catches_up_in_order() -> None:
    cluster = MemoryCluster()
    cluster.backend.max_feed_changes = 50
    talker = memory_watcher(cluster, "talker")
    own: list[str] = []
    talker.set_update_callback(own.append)
    asleep = memory_watcher(cluster, "asleep", PollingWaker(3600, 3600))  # reads only on demand
    late: list[str] = []
    asleep.set_update_callback(late.append)
    try:
        for i in range(30):
            talker.update_for_add_policy("p", "p", [f"u{i}", "d", "r"])
        assert talker.wait_for(cluster.backend.seq, 5)
        assert own == []  # ignore_self
        assert asleep.wait_for(cluster.backend.seq, 5)  # wakes, reads the feed from where it was
        assert [json.loads(m)["NewRule"][0] for m in late] == [f"u{i}" for i in range(30)]
        # Further behind than the feed reaches: one Update (reload) instead.
        late.clear()
        asleep.wait_for(cluster.backend.seq, 1)
        for i in range(80):
            talker.update_for_add_policy("p", "p", [f"v{i}", "d", "r"])
        assert asleep.wait_for(cluster.backend.seq, 5)
        assert [json.loads(m)["Method"] for m in late] == ["Update"]
    finally:
        talker.close()
        asleep.close()


@pytest.mark.timeout(60)
def test_enforcers_with_a_shared_database_agree_through_raft_watchers(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'policy.db'}"
    casbin.Enforcer(RBAC, SQLAdapter(url)).add_policy("admin", "data1", "read")
    with LocalCluster(3, tmp_path / "peers", extra_args=["--backend", BACKEND]) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        enforcers = [casbin.Enforcer(RBAC, SQLAdapter(url)),
                     casbin.SyncedEnforcer(RBAC, SQLAdapter(url)),
                     casbin.Enforcer(RBAC, SQLAdapter(url))]
        watchers = []
        for e in enforcers:
            w = RaftWatcher(cluster.peers)
            w.set_update_callback(default_update_callback(e, w))
            e.set_watcher(w)
            watchers.append(w)
        requests = [(s, o, a) for s in ("alice", "bob", "admin") for o in ("data1", "data2")
                    for a in ("read", "write")]
        try:
            a, b, c_ = enforcers
            calls = [
                lambda: a.add_grouping_policy("alice", "admin"),
                lambda: b.add_policies([["bob", "data2", "write"], ["bob", "data2", "read"]]),
                lambda: c_.remove_policy("admin", "data1", "read"),
                lambda: a.remove_filtered_policy(0, "bob", "data2", "read"),
                lambda: b.add_policy("admin", "data2", "write"),
                lambda: c_.remove_grouping_policy("alice", "admin"),
            ]
            for call in calls:
                assert call()
                last = max(w.last_published for w in watchers)
                for w in watchers:
                    assert w.wait_for(last, 5)
                answers = [[e.enforce(*r) for r in requests] for e in enforcers]
                assert answers[0] == answers[1] == answers[2]
            reference = casbin.Enforcer(RBAC, SQLAdapter(url))
            assert answers[0] == [reference.enforce(*r) for r in requests]
        finally:
            for w in watchers:
                w.close()


@pytest.mark.timeout(30)
def test_the_async_enforcer_notifies_and_applies(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    shutil.copy(MODELS / "rbac_policy.csv", path)
    cluster = MemoryCluster()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sender = casbin.AsyncEnforcer(RBAC, AsyncFileAdapter(str(path)))
        receiver = casbin.AsyncEnforcer(RBAC, AsyncFileAdapter(str(path)))
        await sender.load_policy()
        await receiver.load_policy()
        out = AsyncRaftWatcher(local_id="sender", feed=MemoryFeed(cluster), write=cluster.write)
        into = RaftWatcher(local_id="receiver", feed=MemoryFeed(cluster), write=cluster.write,
                           waker=PollingWaker(0.002, 0.0005))
        into.set_update_callback(default_update_callback(receiver, into, loop))
        sender.set_watcher(out)
        try:
            assert await sender.add_policy("carol", "data1", "read")
            assert await sender.add_grouping_policy("carol", "data2_admin")
            await asyncio.to_thread(into.wait_for, cluster.backend.seq, 5)
            assert receiver.enforce("carol", "data1", "read")
            assert receiver.enforce("carol", "data2", "write")
            await out.update()  # a plain update: the receiver reloads from its adapter
            await asyncio.to_thread(into.wait_for, cluster.backend.seq, 5)
            assert not receiver.enforce("carol", "data1", "read")  # the file never had it
        finally:
            out.close()
            into.close()

    asyncio.run(scenario())

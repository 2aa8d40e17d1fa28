"""Persistence to the user's adapter: a SQL database (sqlalchemy-adapter on SQLite) and
casbin's file adapter; seeding a new cluster; reconciling on activation; idempotence."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import casbin
import pytest
from sqlalchemy_adapter import Adapter as SQLAdapter

from tests.casbin_plugin.test_casbin_sync import MemoryCluster, MemoryFeed
from zraft.casbin import commands as c
from zraft.casbin.cluster import BACKEND, connect
from zraft.casbin.dispatcher import Dispatcher, set_dispatcher
from zraft.casbin.local_model import LocalModel
from zraft.casbin.persist import AdapterPersister, load_adapter_policy
from zraft.casbin.sync import PolicySync, PollingWaker
from zraft.local import LocalCluster

MODELS = Path(__file__).parent / "casbin_models"
RBAC = str(MODELS / "rbac_model.conf")


def stored(adapter: Any) -> set[tuple[str, ...]]:
    """Everything the adapter holds, as (ptype, *rule)."""
    policy = load_adapter_policy(adapter, casbin.Enforcer(RBAC).get_model())
    return {(ptype, *rule) for _, ptype, rules in policy for rule in rules}


def rows(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return int(db.execute("SELECT count(*) FROM casbin_rule").fetchone()[0])


class Instance:
    def __init__(self, cluster: MemoryCluster, adapter: Any, active: bool,
                 synced: bool = False) -> None:
        self.enforcer = casbin.SyncedEnforcer(RBAC) if synced else casbin.Enforcer(RBAC)
        self.sync = PolicySync(LocalModel(self.enforcer), MemoryFeed(cluster),
                               PollingWaker(0.002, 0.0005)).start()
        set_dispatcher(self.enforcer, Dispatcher(cluster.write, self.sync))
        self.active = active
        self.persister = AdapterPersister(self.sync, adapter, lambda: self.active,
                                          check_interval=0.02).start()

    def close(self) -> None:
        self.persister.stop()
        self.sync.stop()


@pytest.mark.timeout(60)
def test_sql_adapter_gets_each_change_once_and_a_new_writer_reconciles(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'policy.db'}"
    seeded = SQLAdapter(url)
    seeded_enforcer = casbin.Enforcer(RBAC, seeded)
    seeded_enforcer.add_policy("alice", "data1", "read")
    seeded_enforcer.add_grouping_policy("bob", "admin")
    cluster = MemoryCluster()
    # A new cluster starts from the adapter's policy; a second seed changes nothing.
    initial = load_adapter_policy(SQLAdapter(url), seeded_enforcer.get_model())
    assert cluster.write(c.seed(initial))["changed"] is True
    assert cluster.write(c.seed(initial))["changed"] is False
    leader = Instance(cluster, SQLAdapter(url), active=True)
    follower = Instance(cluster, SQLAdapter(url), active=False, synced=True)
    try:
        assert leader.persister.flush()
        e = follower.enforcer
        e.add_policy("admin", "data2", "write")
        e.remove_policy("alice", "data1", "read")
        e.update_policy(["admin", "data2", "write"], ["admin", "data3", "write"])
        assert leader.sync.wait_for(cluster.backend.seq, 5)
        assert leader.persister.flush()
        want = {("p", "admin", "data3", "write"), ("g", "bob", "admin")}
        assert stored(SQLAdapter(url)) == want
        assert follower.persister.writes == 0  # only the active instance writes
        # The writer changes while the database drifted (someone wrote to it directly).
        SQLAdapter(url).add_policy("p", "p", ["mallory", "data1", "read"])
        SQLAdapter(url).remove_policy("g", "g", ["bob", "admin"])
        leader.active, follower.active = False, True
        e.add_grouping_policy("carol", "admin")
        assert follower.sync.wait_for(cluster.backend.seq, 5)
        assert follower.persister.flush() and leader.persister.flush()
        assert follower.persister.reconciles == 1
        assert stored(SQLAdapter(url)) == want | {("g", "carol", "admin")}
        # Written twice (an old and a new writer both active for a moment): one row.
        e.add_policy("dave", "data1", "read")
        assert follower.sync.wait_for(cluster.backend.seq, 5) and follower.persister.flush()
        change = cluster.query(c.changes_since(cluster.backend.seq - 1))["changes"][0]
        leader.persister._held = {}  # the old writer does not know the new one wrote it
        leader.persister._write(change)
        assert rows(tmp_path / "policy.db") == 4
        # A rule the database holds twice is stored once after the next reconcile.
        SQLAdapter(url).add_policy("p", "p", ["dave", "data1", "read"])
        assert rows(tmp_path / "policy.db") == 5
        follower.active = False
        e.add_policy("erin", "data1", "read")
        assert follower.sync.wait_for(cluster.backend.seq, 5) and follower.persister.flush()
        follower.active = True
        assert follower.persister.flush()
        assert follower.persister.reconciles == 2
        assert rows(tmp_path / "policy.db") == 5
        assert stored(SQLAdapter(url)) == want | {("g", "carol", "admin"),
                                                  ("p", "dave", "data1", "read"),
                                                  ("p", "erin", "data1", "read")}
        e.clear_policy()
        assert follower.sync.wait_for(cluster.backend.seq, 5) and follower.persister.flush()
        assert leader.sync.wait_for(cluster.backend.seq, 5) and leader.persister.flush()
        assert stored(SQLAdapter(url)) == set()
    finally:
        leader.close()
        follower.close()


@pytest.mark.timeout(60)
def test_file_adapter_gets_the_whole_policy_saved(tmp_path: Path) -> None:
    path = tmp_path / "policy.csv"
    shutil.copy(MODELS / "rbac_policy.csv", path)
    adapter = casbin.FileAdapter(str(path))
    cluster = MemoryCluster()
    cluster.write(c.seed(load_adapter_policy(adapter, casbin.Enforcer(RBAC).get_model())))
    writer = Instance(cluster, adapter, active=True)
    try:
        writer.enforcer.add_grouping_policy("bob", "data2_admin")
        writer.enforcer.remove_policy("alice", "data1", "read")
        assert writer.persister.flush()
        reloaded = casbin.Enforcer(RBAC, str(path))
        assert sorted(reloaded.get_policy()) == sorted(writer.enforcer.get_policy())
        assert sorted(reloaded.get_grouping_policy()) == [["alice", "data2_admin"],
                                                          ["bob", "data2_admin"]]
    finally:
        writer.close()


@pytest.mark.timeout(60)
def test_a_cluster_starts_from_the_adapter_and_persists_through_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'policy.db'}"
    setup = casbin.Enforcer(RBAC, SQLAdapter(url))
    setup.add_policy("alice", "data1", "read")
    with LocalCluster(3, tmp_path / "peers", extra_args=["--backend", BACKEND]) as cluster:
        cluster.start()
        cluster.wait_for_leader()
        a = casbin.Enforcer(RBAC)
        b = casbin.Enforcer(RBAC)
        writer = connect(a, cluster.peers, adapter=SQLAdapter(url), persist=True)
        reader = connect(b, cluster.peers, adapter=SQLAdapter(url))
        try:
            assert b.enforce("alice", "data1", "read")  # from the database, via the cluster
            assert b.add_policy("bob", "data2", "write")
            assert writer.sync.wait_for(reader.sync.applied_seq, 5)
            assert writer.persister is not None and writer.persister.flush()
            assert stored(SQLAdapter(url)) == {("p", "alice", "data1", "read"),
                                               ("p", "bob", "data2", "write")}
        finally:
            writer.close()
            reader.close()

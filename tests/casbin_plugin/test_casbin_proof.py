"""The proofs of issue 7 on real peer processes: instances agree after every change on
casbin's example models; casbin #421 (add here, remove there, concurrently); a leader
killed during a stream of policy writes loses nothing acknowledged."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import casbin
import pytest

from zraft.casbin import commands as c
from zraft.casbin.cluster import BACKEND, CasbinNode, connect
from zraft.casbin.local_model import LocalModel
from zraft.casbin.shape import model_shape
from zraft.local import LocalCluster
from zraft.session import LightSession

MODELS = Path(__file__).parent / "casbin_models"
CASES = {
    "basic": ("basic_model.conf", "basic_policy.csv"),
    "rbac": ("rbac_model.conf", "rbac_policy.csv"),
    "domains": ("rbac_with_domains_model.conf", "rbac_with_domains_policy.csv"),
    "priority": ("priority_model.conf", "priority_policy.csv"),
}


def rules_of(e: Any) -> dict[tuple[str, str], set[tuple[str, ...]]]:
    out = {}
    for sec in ("p", "g"):
        for ptype, assertion in (e.get_model()[sec] or {}).items():
            if assertion.policy:
                out[(sec, ptype)] = {tuple(rule) for rule in assertion.policy}
    return out


def settle(nodes: list[CasbinNode], timeout: float = 10.0) -> None:
    """Every node has applied everything any node has."""
    target = max(node.sync.applied_seq for node in nodes)
    for node in nodes:
        assert node.sync.wait_for(target, timeout)


@pytest.fixture
def cluster(tmp_path: Path) -> Any:
    with LocalCluster(3, tmp_path, extra_args=["--backend", BACKEND]) as local:
        local.start()
        local.wait_for_leader()
        yield local


@pytest.mark.timeout(90)
def test_three_instances_answer_identically_after_every_change(cluster: LocalCluster) -> None:
    from tests.casbin_plugin.test_casbin_sync import grid, random_call

    for case, (model_file, policy_file) in CASES.items():
        model = str(MODELS / model_file)
        reference = casbin.Enforcer(model, str(MODELS / policy_file))
        reference.enable_auto_save(False)
        with LightSession(cluster.peers) as session:  # the previous model's rules go
            session.write(c.clear())
            # and its shape: rules of the next model are written before its instances
            # connect (which declare it too)
            session.write(c.define(model_shape(reference.get_model())))
            for sec in ("p", "g"):  # in the file's order: the priority effect needs it
                for ptype, assertion in (reference.get_model()[sec] or {}).items():
                    if assertion.policy:
                        session.write(c.add(sec, ptype, assertion.policy))
        enforcers = [casbin.SyncedEnforcer(model), casbin.Enforcer(model),
                     casbin.DistributedEnforcer(model)]
        nodes = [connect(e, cluster.peers) for e in enforcers]
        try:
            settle(nodes)
            requests = grid(case)
            rng = random.Random(case)
            for step in range(25):
                name, args = random_call(rng, case)
                if name == "update_policy" and args[0] != args[1] and \
                        reference.has_policy(args[1]):
                    continue
                assert getattr(enforcers[step % 3], name)(*args) == \
                    getattr(reference, name)(*args), (case, step, name)
                settle(nodes)
                want = [reference.enforce(*r) for r in requests]
                for e in enforcers:
                    assert [e.enforce(*r) for r in requests] == want, (case, step, name, args)
            assert rules_of(enforcers[0]) == rules_of(enforcers[1]) == rules_of(enforcers[2])
        finally:
            for node in nodes:
                node.close()


@pytest.mark.timeout(120)
def test_casbin_421_add_on_one_remove_on_another_concurrently(cluster: LocalCluster) -> None:
    model = str(MODELS / "rbac_model.conf")
    enforcers = [casbin.SyncedEnforcer(model) for _ in range(3)]
    nodes = [connect(e, cluster.peers) for e in enforcers]
    failures: list[str] = []
    kept: list[tuple[str, ...]] = []
    pairs, threads = 1000, 4

    def worker(index: int) -> None:
        rng = random.Random(index)
        for i in range(index, pairs, threads):
            a, b = rng.sample(range(3), 2)
            rule = [f"user{i}", f"data{i % 7}", "read"]
            if not enforcers[a].add_policy(*rule):
                failures.append(f"add {i} on {a}")
            if not enforcers[b].remove_policy(*rule):  # casbin #421: this used to fail
                failures.append(f"remove {i} on {b}")
            if i % 50 == 0:  # some rules stay, so the end state is not trivially empty
                keep = [f"keeper{i}", "data0", "write"]
                enforcers[b].add_policy(*keep)
                kept.append(tuple(keep))

    try:
        workers = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=100)
        assert failures == []
        settle(nodes)
        states = [rules_of(e) for e in enforcers]
        assert states[0] == states[1] == states[2]
        assert states[0] == {("p", "p"): set(kept)}
        # A serial replay of the log gives the same policy.
        with LightSession(cluster.peers) as session:
            feed = session.query(c.changes_since(0, limit=100_000))
        assert "changes" in feed and not feed["more"]
        assert len(feed["changes"]) == 2 * pairs + len(kept)
        replay = casbin.Enforcer(model)
        local = LocalModel(replay)
        local.load([])
        for change in feed["changes"]:
            local.apply(change)
        assert rules_of(replay) == states[0]
    finally:
        for node in nodes:
            node.close()


@pytest.mark.timeout(120)
def test_leader_kill_during_a_stream_of_writes_loses_nothing_acknowledged(
    cluster: LocalCluster,
) -> None:
    model = str(MODELS / "rbac_model.conf")
    writer_e, reader_e = casbin.SyncedEnforcer(model), casbin.Enforcer(model)
    writer = connect(writer_e, cluster.peers, apply_timeout=20.0)
    reader = connect(reader_e, cluster.peers)
    acknowledged: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            try:
                if writer_e.add_policy(f"u{i}", "data", "read"):
                    acknowledged.append(i)
            except Exception:  # in doubt during the failover: not counted as acknowledged
                pass
            i += 1

    thread = threading.Thread(target=stream)
    try:
        thread.start()
        cluster.wait_for(lambda: len(acknowledged) >= 50, 30, "writes before the kill")
        leader = cluster.wait_for_leader()
        cluster.kill(leader)
        killed_at = len(acknowledged)
        cluster.wait_for(lambda: len(acknowledged) >= killed_at + 50, 60,
                         "writes after the failover")
        cluster.start_peer(leader)
        cluster.wait_for(lambda: len(acknowledged) >= killed_at + 100, 60, "more writes")
        stop.set()
        thread.join(timeout=30)
        settle([writer, reader], timeout=20)
        want = {("u" + str(i), "data", "read") for i in acknowledged}
        for e in (writer_e, reader_e):
            assert want <= rules_of(e)[("p", "p")]
        assert rules_of(writer_e) == rules_of(reader_e)
        # The restarted peer caught up: its own state holds every acknowledged rule.
        deadline = time.monotonic() + 30
        while True:
            policy = cluster.query(leader, c.policy(), local=True)
            if policy["seq"] >= writer.sync.applied_seq or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert policy["policy"][0][:2] == ["p", "p"]
        held = {tuple(r) for r in policy["policy"][0][2]}
        assert want <= held
    finally:
        stop.set()
        thread.join(timeout=30)
        writer.close()
        reader.close()

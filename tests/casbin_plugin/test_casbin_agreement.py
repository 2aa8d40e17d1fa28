"""Every instance answers alike, whatever legal pycasbin calls made the policy: two
grouping rules may share one role link (casbin links a rule by its first fields), and an
instance on another model than the cluster's declared one is refused, not let in to make
writes the others skip."""

from __future__ import annotations

from pathlib import Path

import casbin
import pytest

from tests.casbin_plugin.test_casbin_sync import MemoryCluster, attach
from zraft.backends.base import CommandRejected
from zraft.casbin import commands as c
from zraft.casbin.backend import CasbinBackend
from zraft.casbin.shape import model_shape
from zraft.casbin.sync import PolicySync

MODELS = Path(__file__).parent / "casbin_models"
RBAC = str(MODELS / "rbac_model.conf")
DOMAINS = str(MODELS / "rbac_with_domains_model.conf")


def wait_applied(syncs: list[PolicySync], seq: int) -> None:
    for sync in syncs:
        assert sync.wait_for(seq, timeout=10)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("model", "short", "long", "grant", "asked"),
    [
        (RBAC, ["alice", "data2_admin"], ["alice", "data2_admin", "extra"],
         ["data2_admin", "data2", "read"], ("alice", "data2", "read")),
        (DOMAINS, ["alice", "admin", "domain1"], ["alice", "admin", "domain1", "extra"],
         ["admin", "domain1", "data1", "read"], ("alice", "domain1", "data1", "read")),
    ],
    ids=["rbac", "domains"],
)
def test_removing_one_of_two_grouping_rules_sharing_a_link_keeps_the_link_everywhere(
    model: str, short: list[str], long: list[str], grant: list[str], asked: tuple[str, ...]
) -> None:
    cluster = MemoryCluster()
    enforcers = [casbin.Enforcer(model) for _ in range(3)]
    syncs = [attach(e, cluster) for e in enforcers]
    try:
        first = enforcers[0]
        assert first.add_grouping_policy(*short) is True
        assert first.add_grouping_policy(*long) is True
        assert enforcers[1].add_policy(*grant) is True
        assert enforcers[2].remove_grouping_policy(*long) is True
        wait_applied(syncs, syncs[2].applied_seq)
        # The policy holds the short rule: its link stands, as a reload from it shows.
        reloaded = casbin.Enforcer(model)
        for sec, ptype, rules in cluster.query(c.policy())["policy"]:
            for r in rules:
                reloaded.get_model().add_policy(sec, ptype, list(r))
        reloaded.build_role_links()
        late = casbin.Enforcer(model)
        syncs.append(attach(late, cluster))
        answers = {e.enforce(*asked) for e in [*enforcers, late, reloaded]}
        assert answers == {True}
        assert all(s.metrics()["failed_changes"] == 0 for s in syncs)
    finally:
        for sync in syncs:
            sync.stop()


def test_a_model_other_than_the_declared_one_is_refused_unless_it_replaces_it() -> None:
    backend = CasbinBackend()
    rbac = model_shape(casbin.Enforcer(RBAC).get_model())
    domains = model_shape(casbin.Enforcer(DOMAINS).get_model())
    assert backend.apply(c.define(rbac, replace=False)).result["changed"] is True
    assert backend.apply(c.define(rbac, replace=False)).result["changed"] is False
    with pytest.raises(CommandRejected, match="model mismatch: the cluster's policy model is"):
        backend.apply(c.define(domains, replace=False))
    assert backend.apply(c.define(domains)).result["changed"] is True  # replace: explicit
    with pytest.raises(CommandRejected, match="replace must be a bool"):
        c.parse_command({"op": "define", "shape": [], "replace": "no"})

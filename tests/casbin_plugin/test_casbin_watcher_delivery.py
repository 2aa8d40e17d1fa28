"""Issue 17, parts 3 and 4 on the WatcherEx path: a malformed or failing notification never
holds up the ones after it, and update notifications carry their own section.

Every message is checked per Method when it is published (and by the backend, for a
direct write); a callback that raises is reported once (log, error handler) and delivery
moves on, so each message is delivered once, in log order; a malformed message already in
a log (an older publisher) is reported the same way.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import casbin
import pytest

from tests.casbin_plugin.test_casbin_sync import MemoryCluster
from tests.casbin_plugin.test_casbin_watcher import memory_watcher
from zraft.backends.base import CommandRejected
from zraft.casbin import commands as c
from zraft.casbin.backend import SNAPSHOT_FILE
from zraft.casbin.snapshot_file import write_objects
from zraft.casbin.watcher import default_update_callback, message
from zraft.session import Rejected

MODELS = Path(__file__).parent / "casbin_models"
RBAC = str(MODELS / "rbac_model.conf")

# Each Method with a well-formed message, and the fields it cannot do without.
WELL_FORMED: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "Update": ({}, ()),
    "UpdateForSavePolicy": ({}, ()),
    "UpdateForAddPolicy": ({"Sec": "p", "Ptype": "p", "NewRule": ["a", "d", "r"]},
                           ("Sec", "Ptype", "NewRule")),
    "UpdateForRemovePolicy": ({"Sec": "p", "Ptype": "p", "NewRule": ["a", "d", "r"]},
                              ("Sec", "Ptype", "NewRule")),
    "UpdateForAddPolicies": ({"Sec": "g", "Ptype": "g", "NewRules": [["a", "admin"]]},
                             ("Sec", "Ptype", "NewRules")),
    "UpdateForRemovePolicies": ({"Sec": "g", "Ptype": "g", "NewRules": [["a", "admin"]]},
                                ("Sec", "Ptype", "NewRules")),
    "UpdateForRemoveFilteredPolicy": ({"Sec": "p", "Ptype": "p", "FieldIndex": 1,
                                       "FieldValues": ["d"]},
                                      ("Sec", "Ptype", "FieldIndex", "FieldValues")),
    "UpdateForUpdatePolicy": ({"Sec": "p", "Ptype": "p", "OldRule": ["a", "d", "r"],
                               "NewRule": ["a", "d", "w"]},
                              ("Sec", "Ptype", "OldRule", "NewRule")),
    "UpdateForUpdatePolicies": ({"Sec": "p", "Ptype": "p", "OldRules": [["a", "d", "r"]],
                                 "NewRules": [["a", "d", "w"]]},
                                ("Sec", "Ptype", "OldRules", "NewRules")),
}


@pytest.mark.timeout(30)
def test_every_method_refuses_a_message_lacking_what_it_needs() -> None:
    cluster = MemoryCluster()
    for method, (fields, needed) in WELL_FORMED.items():
        good = message(method, "w1", **fields)
        c.notify(good)  # accepted as it is
        for name in needed:
            bad = dict(good, **{name: None})
            with pytest.raises(CommandRejected, match=f"needs {name}"):
                c.notify(bad)  # what RaftWatcher does before it publishes
            with pytest.raises(Rejected):  # a direct write: the backend refuses it too
                cluster.write({"op": "notify", "message": bad})
    others = [
        message("UpdateForAddPolicy", "w1", "p", "p", NewRule=[]),
        message("UpdateForAddPolicy", "w1", "x", "p", NewRule=["a"]),
        message("UpdateForAddPolicies", "w1", "p", "p", NewRules=[["a"], []]),
        message("UpdateForRemoveFilteredPolicy", "w1", "p", "p", FieldIndex=-1,
                FieldValues=[]),
        message("UpdateForUpdatePolicies", "w1", "p", "p", OldRules=[["a"]], NewRules=[]),
        message("UpdateForEverything", "w1"),
    ]
    for bad in others:
        with pytest.raises(Rejected):
            cluster.write({"op": "notify", "message": bad})
    assert cluster.backend.seq == 0  # nothing reached the log
    w = memory_watcher(cluster, "w1")
    try:
        with pytest.raises(CommandRejected, match="NewRule"):
            w.update_for_add_policy("p", "p")  # no rule
        with pytest.raises(CommandRejected, match="differ in length"):
            w.update_for_update_policies("p", "p", [["a", "d", "r"]], [])
        # A value that is not a string is refused, never turned into one: peers would
        # then hold "1" or "None" where the caller holds 1 or None.
        for rule in (["alice", "data1", 1], ["bob", None, "read"]):
            with pytest.raises(CommandRejected):
                w.update_for_add_policy("p", "p", rule)
            with pytest.raises(CommandRejected):
                w.update_for_add_policies("p", "p", [rule])
        assert cluster.backend.seq == 0
    finally:
        w.close()


@pytest.mark.timeout(30)
def test_a_raising_callback_is_reported_once_and_delivery_moves_on() -> None:
    cluster = MemoryCluster()
    talker = memory_watcher(cluster, "talker")
    listener = memory_watcher(cluster, "listener")
    attempts: dict[str, int] = {}
    reported: list[tuple[str, str, int]] = []

    def callback(raw: str) -> None:
        user = json.loads(raw)["NewRule"][0]
        attempts[user] = attempts.get(user, 0) + 1
        if user == "u2":
            raise RuntimeError("this callback fails on u2")

    listener.set_update_callback(callback)
    listener.set_error_handler(lambda error, raw, seq: reported.append(
        (str(error), json.loads(raw)["NewRule"][0], seq)))
    try:
        for i in range(6):
            talker.update_for_add_policy("p", "p", [f"u{i}", "d", "r"])
        assert listener.wait_for(cluster.backend.seq, 10)
        # One more message after a pause: the failed one must not have come round again.
        threading.Event().wait(0.2)
        talker.update_for_add_policy("p", "p", ["u6", "d", "r"])
        assert listener.wait_for(cluster.backend.seq, 10)
        assert attempts == {f"u{i}": 1 for i in range(7)}  # each once, the failed one too
        assert list(attempts) == [f"u{i}" for i in range(7)]  # in log order
        assert reported == [("this callback fails on u2", "u2", 3)]
        assert listener.failed_callbacks == 1 and listener.delivered == 7
    finally:
        talker.close()
        listener.close()


def _append_to_log(cluster: MemoryCluster, tmp: Path, messages: list[dict[str, Any]]) -> None:
    """Put ``messages`` after the feed as a log of an older publisher would hold them (one
    that did not check messages): through a snapshot, as a restarted peer takes it in."""
    seq = cluster.backend.seq
    feed = cluster.query(c.changes_since(0))["changes"]
    feed += [{"seq": seq + n + 1, "op": "message", "message": m} for n, m in enumerate(messages)]
    tmp.mkdir()
    write_objects(tmp / SNAPSHOT_FILE, b"ZRCB", 1, [[len(feed), 0, len(feed)], *feed])
    with cluster.lock:
        cluster.backend.install(tmp)


@pytest.mark.timeout(30)
def test_a_malformed_message_already_in_a_log_is_reported_not_redelivered(
    tmp_path: Path,
) -> None:
    cluster = MemoryCluster()
    e = casbin.Enforcer(RBAC)
    receiver = memory_watcher(cluster, "receiver")
    receiver.set_update_callback(default_update_callback(e, receiver))
    reported: list[tuple[type, int]] = []
    receiver.set_error_handler(lambda error, raw, seq: reported.append((type(error), seq)))
    try:
        _append_to_log(cluster, tmp_path / "older", [
            message("UpdateForAddPolicy", "old", "p", "p", NewRule=None),  # the one
            message("UpdateForAddPolicy", "old", "p", "p", NewRule=["alice", "data1", "read"]),
        ])
        assert receiver.wait_for(2, 10)
        assert reported == [(ValueError, 1)]
        assert e.enforce("alice", "data1", "read")  # the message after it was applied
        sender = memory_watcher(cluster, "sender")
        try:
            sender.update_for_add_policy("p", "p", ["bob", "data2", "write"])
            assert receiver.wait_for(cluster.backend.seq, 10)
        finally:
            sender.close()
        assert e.enforce("bob", "data2", "write")
        assert reported == [(ValueError, 1)] and receiver.failed_callbacks == 1
    finally:
        receiver.close()


@pytest.mark.timeout(30)
def test_update_notifications_take_section_and_ptype_from_the_call() -> None:
    cluster = MemoryCluster()
    e = casbin.Enforcer(RBAC)
    e.add_policy("admin", "data1", "read")
    e.add_policy("reader", "data1", "write")
    e.add_grouping_policy("alice", "admin")
    sender = memory_watcher(cluster, "sender")
    receiver = memory_watcher(cluster, "receiver")
    receiver.set_update_callback(default_update_callback(e))
    try:
        sender.update_for_update_policy("g", "g", ["alice", "admin"], ["alice", "reader"])
        sender.update_for_update_policies("p", "p", [["reader", "data1", "write"]],
                                          [["reader", "data2", "write"]])
        sender.update_for_update_policy(["admin", "data1", "read"], ["admin", "data3", "read"])
        assert receiver.wait_for(cluster.backend.seq, 10)
        assert e.get_grouping_policy() == [["alice", "reader"]]
        assert sorted(e.get_policy()) == [["admin", "data3", "read"],
                                          ["reader", "data2", "write"]]
        assert e.enforce("alice", "data2", "write") and not e.enforce("alice", "data1", "read")
        messages = [ch["message"] for ch in cluster.query(c.changes_since(0))["changes"]]
        assert [(m["Sec"], m["Ptype"]) for m in messages] == [("g", "g"), ("p", "p"),
                                                              ("p", "p")]
        with pytest.raises(TypeError):
            sender.update_for_update_policy("g", ["a"], ["b"])
    finally:
        sender.close()
        receiver.close()

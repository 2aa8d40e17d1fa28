"""A new leader that has not yet applied everything committed before it led must not
answer for sessions: a session opened in the part it has not applied would look gone, and
the leader would report a live session as expired. It asks the client to retry instead."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_support import ask_leader, single_peer_settings
from zraft.actors.runtime import PeerRuntime
from zraft.backends import kv
from zraft.backends.base import ApplyResult
from zraft.backends.kv import KeyValueBackend
from zraft.transport import ClientChannel, ClientRequest


class GatedBackend(KeyValueBackend):
    """Applies only while the gate is open: a slow replay after a restart, made to order."""

    gate = threading.Event()

    def apply(self, command: Any) -> ApplyResult:
        if not GatedBackend.gate.wait(30):
            raise RuntimeError("the test never opened the gate")
        return super().apply(command)




@pytest.mark.timeout(90)
def test_a_new_leader_asks_pings_to_retry_until_it_has_caught_up(tmp_path: Path) -> None:
    settings = single_peer_settings(tmp_path, f"{__name__}:GatedBackend")
    peer = settings.require_peer_id()
    GatedBackend.gate.set()
    runtime = PeerRuntime(settings).start()
    try:
        with ClientChannel("zraft", "t") as channel:
            # A plain write first, then a session: on replay the write holds up the session.
            assert ask_leader(channel, peer, ClientRequest(1, "write", kv.put("k", 1), "c", 1)).ok
            opened = ask_leader(channel, peer, ClientRequest(2, "session_open", 60_000, "s1", 1))
            assert opened.ok, opened
            assert ask_leader(channel, peer, ClientRequest(3, "ping", None, "s1")).ok
    finally:
        runtime.stop()

    GatedBackend.gate.clear()  # the restarted peer leads again but cannot apply the write
    runtime = PeerRuntime(settings).start()
    try:
        with ClientChannel("zraft", "t2") as channel:
            held = ask_leader(channel, peer, ClientRequest(4, "ping", None, "s1"))
            # Not "session_expired": s1 is in the part of the log not applied yet.
            assert (held.ok, held.error) == (False, "retry"), held
            poll = ClientRequest(5, "watch_poll", {"epoch": "", "after": 0, "wait_ms": 0}, "s1")
            held = ask_leader(channel, peer, poll)
            assert held.error != "session_expired", held
            GatedBackend.gate.set()
            deadline = time.monotonic() + 20
            while not (reply := ask_leader(channel, peer, ClientRequest(6, "ping", None, "s1"))).ok:
                assert reply.error == "retry", reply
                assert time.monotonic() < deadline, "the leader never caught up"
                time.sleep(0.05)
    finally:
        GatedBackend.gate.set()
        runtime.stop()

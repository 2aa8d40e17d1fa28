"""A peer whose actor fails stops as a whole, promptly, instead of limping on."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_support import single_peer_settings
from zraft.actors.runtime import PeerRuntime
from zraft.backends import kv
from zraft.backends.base import ApplyResult
from zraft.backends.kv import KeyValueBackend
from zraft.transport import ClientChannel, ClientRequest


class DiskFailingBackend(KeyValueBackend):
    """Fails like a broken disk on the third write: an error that may differ between peers,
    so the peer must stop rather than record a result."""

    writes = 0

    def apply(self, command: Any) -> ApplyResult:
        DiskFailingBackend.writes += 1
        if DiskFailingBackend.writes == 3:
            raise OSError(5, "Input/output error")
        return super().apply(command)


@pytest.mark.timeout(60)
def test_an_actor_failure_stops_the_whole_peer(tmp_path: Path) -> None:
    settings = single_peer_settings(tmp_path, f"{__name__}:DiskFailingBackend")
    peer = settings.require_peer_id()
    runtime = PeerRuntime(settings).start()
    try:
        with ClientChannel("zraft", "c") as channel:
            deadline = time.monotonic() + 10
            seq = 0
            while time.monotonic() < deadline and not runtime.failed.is_set():
                seq += 1
                request = ClientRequest(seq, "write", kv.put("k", seq), "c", seq)
                # no leader yet, or the peer is going down
                with contextlib.suppress(Exception):
                    channel.request(peer, request, 0.3)
        assert runtime.failed.wait(10), "the failure was not reported"
        assert runtime.failure is not None and "state machine actor failed" in runtime.failure
    finally:
        started = time.monotonic()
        runtime.stop()
        assert time.monotonic() - started < 15, "stopping a failed peer hung"

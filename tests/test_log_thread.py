"""Both places the log can be written: on the peer actor's thread (the default) and, with
``log_thread``, on a thread of its own. Either way a write is durable before it is answered
and survives a restart."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.cluster_support import single_peer_settings
from zraft.actors.runtime import PeerRuntime
from zraft.backends import kv
from zraft.transport import ClientChannel, ClientReply, ClientRequest


def _ask(channel: ClientChannel, peer: str, request: ClientRequest) -> ClientReply:
    deadline = time.monotonic() + 20
    while True:
        try:
            reply = channel.request(peer, request, 0.5)
        except Exception:  # noqa: BLE001 - starting up: no leader, no answer yet
            reply = None
        if reply is not None and reply.error != "not_leader":
            return reply
        assert time.monotonic() < deadline, f"no answer to {request.op}: {reply}"
        time.sleep(0.05)


def _log_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("OwnThread")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_thread", [False, True])
def test_writes_are_durable_whichever_thread_writes_the_log(
    tmp_path: Path, log_thread: bool
) -> None:
    settings = single_peer_settings(tmp_path, "zraft.backends.kv:KeyValueBackend")
    settings = settings.replace(log_thread=log_thread)
    peer = settings.require_peer_id()
    before = _log_threads()
    runtime = PeerRuntime(settings).start()
    try:
        assert bool(_log_threads() - before) == log_thread
        with ClientChannel("zraft", "w") as channel:
            for seq in range(1, 51):
                request = ClientRequest(seq, "write", kv.put(f"k{seq}", seq), "c", seq)
                assert _ask(channel, peer, request).ok
        assert runtime.metrics["log"]["fsyncs"] > 0
    finally:
        runtime.stop()
    assert not _log_threads() - before  # stopped with the peer

    runtime = PeerRuntime(settings).start()  # the same data, read back from disk
    try:
        with ClientChannel("zraft", "r") as channel:
            for seq in (1, 25, 50):
                reply = _ask(channel, peer, ClientRequest(seq, "query", kv.get(f"k{seq}")))
                assert reply.ok and reply.result == {"found": True, "value": seq}, reply
    finally:
        runtime.stop()

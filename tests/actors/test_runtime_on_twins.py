"""A whole peer (PeerRuntime, its actors, a real backend) on the in-memory storage twins,
through the runtime's storage opener: writes are answered, snapshots are taken into the
snapshot twin, and after a crash a new runtime over the same volume recovers them, as it
would from disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.cluster_support import ask_leader, single_peer_settings
from zraft.actors.runtime import PeerRuntime, PeerStorage, StorageOpener
from zraft.backends import kv
from zraft.settings import Settings
from zraft.storage import MemoryHardState, MemoryLog, MemorySnapshotStore, MemoryVolume
from zraft.transport import ClientChannel, ClientRequest


def twins(volume: MemoryVolume, scratch: Path) -> StorageOpener:
    def open_storage(settings: Settings) -> PeerStorage:
        return PeerStorage(
            MemoryLog(volume), MemoryHardState(volume), MemorySnapshotStore(volume, scratch)
        )

    return open_storage


@pytest.mark.timeout(90)
def test_a_peer_runs_and_recovers_on_the_storage_twins(tmp_path: Path) -> None:
    settings = single_peer_settings(tmp_path / "data", "zraft.backends.kv:KeyValueBackend")
    settings = settings.replace(max_log_count=20)  # a snapshot every 20 entries or so
    peer = settings.require_peer_id()
    volume = MemoryVolume()
    runtime = PeerRuntime(settings, twins(volume, tmp_path / "scratch")).start()
    try:
        with ClientChannel("zraft", "w") as channel:
            for seq in range(1, 61):
                request = ClientRequest(seq, "write", kv.put(f"k{seq}", seq), "c", seq)
                assert ask_leader(channel, peer, request).ok
    finally:
        runtime.stop()
    assert volume.snapshot is not None and volume.snapshot.meta.index > 20
    assert volume.log_base[0] > 0  # the log was compacted behind a snapshot
    assert volume.hard_state.term >= 1
    # Nothing of the log, the hard state or the snapshots went to the data directory.
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["identity.json"]

    volume.crash()
    runtime = PeerRuntime(settings, twins(volume, tmp_path / "scratch")).start()
    try:
        with ClientChannel("zraft", "r") as channel:
            for seq in (1, 30, 60):
                reply = ask_leader(channel, peer, ClientRequest(seq, "query", kv.get(f"k{seq}")))
                assert reply.ok and reply.result == {"found": True, "value": seq}, reply
    finally:
        runtime.stop()

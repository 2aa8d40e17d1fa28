"""The failing-disk wrappers (zraft.chaos.storage_faults), over the real stores and the
twins alike, and a peer process on a failing disk (zraft.chaos.faulty_peer): it stops
rather than acknowledge a write that is not durable."""

from __future__ import annotations

import errno
import random
import time
from pathlib import Path

import pytest

from tests.support.cluster_support import local_cluster
from tests.support.storage_worlds import KINDS, StorageWorld
from zraft.backends import kv
from zraft.chaos.nemesis import _mentions
from zraft.chaos.storage_faults import (
    INJECTED_FSYNC_FAILURE,
    DiskFaults,
    FaultKind,
    FaultyHardState,
    FaultyLog,
    FaultySnapshots,
)
from zraft.core.types import Configuration, Entry, HardState, SnapshotMeta
from zraft.local import ClusterError
from zraft.storage import SegmentedLog, StorageError, StorageFullError

CONFIG = Configuration.of(["a"])


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> StorageWorld:
    return StorageWorld(request.param, tmp_path)


def entries(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [Entry(i, term, data=f"e{i}".encode()) for i in range(lo, hi)]


def write_file(dirpath: str) -> None:
    Path(dirpath, "state").write_bytes(b"state")


@pytest.mark.timeout(30)
def test_a_failing_sync_acknowledges_nothing_and_the_disk_keeps_failing(
    world: StorageWorld,
) -> None:
    faults = DiskFaults(FaultKind.FAILING_SYNC, after=3)
    raft_log = FaultyLog(world.open_log(), faults)
    hard_state = FaultyHardState(world.open_hard_state(), faults)
    raft_log.append(entries(1, 4))
    hard_state.save(HardState(1, "a", 0))
    raft_log.append(entries(4, 6))  # the third durable write: the last that succeeds
    with pytest.raises(StorageError, match=INJECTED_FSYNC_FAILURE) as failed:
        raft_log.append(entries(6, 9))
    assert isinstance(failed.value.__cause__, OSError)
    assert failed.value.__cause__.errno == errno.EIO
    assert raft_log.last_index == 5  # the failed batch is not there
    with pytest.raises(StorageError, match=INJECTED_FSYNC_FAILURE):
        hard_state.save(HardState(2, "a", 3))  # one disk: the hard state fails too
    assert faults.fired == 2
    world.crash(raft_log.inner)
    reopened = world.open_log()
    assert reopened.entries(0, 100) == entries(1, 6)
    assert world.open_hard_state().load() == (HardState(1, "a", 0), None)
    reopened.close()


@pytest.mark.timeout(30)
def test_a_full_disk_refuses_writes_with_storage_full_and_changes_nothing(
    world: StorageWorld,
) -> None:
    faults = DiskFaults(FaultKind.NO_SPACE, after=1)
    raft_log = FaultyLog(world.open_log(), faults)
    snapshots = FaultySnapshots(world.open_snapshots(), faults)
    raft_log.append(entries(1, 3))
    with pytest.raises(StorageFullError):
        raft_log.append(entries(3, 5))
    with pytest.raises(StorageFullError):
        snapshots.create(SnapshotMeta(2, 1, CONFIG), write_file)
    with pytest.raises(StorageFullError):
        raft_log.compact(2, 1)
    assert (raft_log.base_index, raft_log.last_index) == (0, 2)
    assert snapshots.latest() is None
    raft_log.close()


@pytest.mark.timeout(30)
def test_a_torn_append_leaves_a_prefix_of_its_batch_and_kills_the_stores(
    world: StorageWorld,
) -> None:
    faults = DiskFaults(FaultKind.TORN_WRITE, after=2)
    raft_log = FaultyLog(world.open_log(), faults)
    hard_state = FaultyHardState(world.open_hard_state(), faults)
    raft_log.append(entries(1, 4))
    hard_state.save(HardState(1, "a", 0))
    with pytest.raises(StorageError, match="torn write"):
        raft_log.append(entries(4, 14))
    # The process is dead: nothing more is written, or acknowledged, until a restart.
    for write in (
        lambda: raft_log.append(entries(9, 10)),
        lambda: hard_state.save(HardState(2, "b", 0)),
        lambda: raft_log.reset(20, 2),
    ):
        with pytest.raises(StorageError, match="died in a torn write"):
            write()
    world.crash(raft_log.inner)
    reopened = world.open_log()
    assert reopened.entries(0, 100) == entries(1, 9)  # acknowledged, then half the batch
    assert world.open_hard_state().load() == (HardState(1, "a", 0), None)
    reopened.close()


@pytest.mark.timeout(30)
def test_a_torn_save_or_snapshot_leaves_the_previous_one(world: StorageWorld) -> None:
    for torn in ("save", "create"):
        faults = DiskFaults(FaultKind.TORN_WRITE, after=2)
        hard_state = FaultyHardState(world.open_hard_state(), faults)
        snapshots = FaultySnapshots(world.open_snapshots(), faults)
        hard_state.save(HardState(1, "a", 0))
        snapshots.create(SnapshotMeta(5, 1, CONFIG), write_file)
        with pytest.raises(StorageError, match="torn write"):
            if torn == "save":
                hard_state.save(HardState(2, "b", 0))
            else:
                snapshots.create(SnapshotMeta(9, 1, CONFIG), write_file)
        assert world.open_hard_state().load() == (HardState(1, "a", 0), None)
        assert world.open_snapshots().latest()[0].index == 5  # type: ignore[index]


@pytest.mark.timeout(30)
def test_a_failed_install_discards_what_was_received(world: StorageWorld, tmp_path: Path) -> None:
    leader = StorageWorld(world.kind, tmp_path / "leader").open_snapshots()
    path = leader.create(SnapshotMeta(9, 2, CONFIG), write_file)
    faults = DiskFaults(FaultKind.FAILING_SYNC, after=0)
    follower = FaultySnapshots(world.open_snapshots(), faults)
    staging = follower.begin_install()
    for rel, _ in leader.list_files(path):
        Path(staging, rel).write_bytes(Path(path, rel).read_bytes())
    with pytest.raises(StorageError, match=INJECTED_FSYNC_FAILURE):
        follower.finish_install(staging)
    assert not Path(staging).exists() and follower.latest() is None


@pytest.mark.timeout(30)
def test_a_torn_append_keeps_a_seeded_prefix_shorter_than_the_batch() -> None:
    kept = {DiskFaults(FaultKind.TORN_WRITE, 0, random.Random(s)).torn_prefix(10) for s in range(9)}
    assert kept <= set(range(10)) and len(kept) > 3
    with pytest.raises(ValueError, match="negative"):
        DiskFaults(FaultKind.NO_SPACE, after=-1)


@pytest.mark.timeout(120)
def test_a_peer_whose_sync_fails_stops_rather_than_acknowledge(tmp_path: Path) -> None:
    """``python -m zraft.chaos.faulty_peer``, as the fsync nemesis starts it: the write
    whose sync fails is never acknowledged, the peer exits with an error, and every write
    it did acknowledge is in its log."""
    with local_cluster(tmp_path, 1) as cluster:
        (peer,) = cluster.peers
        cluster.peer_launch[peer] = ["zraft.chaos.faulty_peer", "--fail-sync-after", "12"]
        cluster.start()
        cluster.wait_for_leader(timeout=30)
        acknowledged: list[int] = []
        refused = None
        for n in range(40):
            try:
                cluster.write(kv.put(f"k{n}", n), timeout=3.0)
            except ClusterError as error:
                refused = error
                break
            acknowledged.append(n)
        assert refused is not None, "the disk never failed"
        assert acknowledged, "the disk failed before the first write"
        process = cluster.processes[peer]
        deadline = time.monotonic() + 20
        while process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() == 1  # it stopped itself, with an error
        assert _mentions(cluster.data_dir(peer) / "peer.log") == 1
        with SegmentedLog(cluster.data_dir(peer) / "log") as raft_log:
            logged = [e.data for e in raft_log.entries(0, raft_log.last_index + 1)]
        for n in acknowledged:
            assert any(f"k{n}".encode() in data for data in logged if isinstance(data, bytes))
        assert not any(
            f"k{len(acknowledged)}".encode() in data for data in logged if isinstance(data, bytes)
        )

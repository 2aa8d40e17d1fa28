"""One contract for each storage protocol, held by the real store and its in-memory twin.

Every test runs twice, on disk and in a ``MemoryVolume`` (tests/support/storage_worlds.py), and
checks what callers rely on: answers, the errors of misuse, and what a crash between calls
keeps (everything a call that returned made durable). A twin that drifts from the real
store fails here.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import random
import shutil
from pathlib import Path

import pytest

from tests.support.storage_worlds import KINDS, StorageWorld
from zraft.chaos.storage_faults import FaultyHardState, FaultyLog, FaultySnapshots
from zraft.core.types import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from zraft.storage import (
    CorruptSnapshotError,
    HardStateFile,
    HardStateStorage,
    LogLockedError,
    LogStorage,
    MemoryHardState,
    MemoryLog,
    MemorySnapshotStore,
    SegmentedLog,
    SnapshotStorage,
    SnapshotStore,
    StorageError,
)
from zraft.storage.snapshots import META_NAME

CONFIG = Configuration.of(["a", "b", "c"])


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> StorageWorld:
    return StorageWorld(request.param, tmp_path)


def make_entry(index: int, term: int = 1) -> Entry:
    """Every kind and a spread of sizes appear."""
    if index % 37 == 0:
        return Entry(index, term, EntryKind.CONFIG, Configuration.of(["a", f"p{index % 5}"]))
    if index % 53 == 0:
        return Entry(index, term, EntryKind.NOOP, b"")
    digest = hashlib.sha256(index.to_bytes(8, "little")).digest()
    return Entry(index, term, EntryKind.NORMAL, digest * (index % 7))


def batch(lo: int, hi: int, term: int = 1) -> list[Entry]:
    return [make_entry(i, term) for i in range(lo, hi)]


def reopen(world: StorageWorld, raft_log: LogStorage) -> LogStorage:
    world.crash(raft_log)
    return world.open_log()


def contents(raft_log: LogStorage) -> tuple[int, int, int, list[Entry]]:
    everything = raft_log.entries(0, raft_log.last_index + 1)
    return raft_log.base_index, raft_log.base_term, raft_log.last_index, everything


# --------------------------------------------------------------------------- the log


@pytest.mark.timeout(30)
def test_a_new_log_is_empty(world: StorageWorld) -> None:
    raft_log = world.open_log()
    assert (raft_log.base_index, raft_log.base_term) == (0, 0)
    assert (raft_log.first_index, raft_log.last_index, raft_log.last_term) == (1, 0, 0)
    assert raft_log.term(0) == 0 and raft_log.term(1) is None and raft_log.entry(1) is None
    assert raft_log.entries(0, 10) == []
    raft_log.close()


@pytest.mark.timeout(30)
def test_appended_entries_read_back_and_survive_a_crash(world: StorageWorld) -> None:
    raft_log = world.open_log()
    raft_log.append(batch(1, 40))
    raft_log.append(batch(40, 90, term=2))
    assert raft_log.entries(1, 90) == batch(1, 40) + batch(40, 90, term=2)
    assert raft_log.entry(39) == make_entry(39) and raft_log.term(40) == 2
    assert (raft_log.last_index, raft_log.last_term) == (89, 2)
    raft_log = reopen(world, raft_log)
    assert contents(raft_log) == (0, 0, 89, batch(1, 40) + batch(40, 90, term=2))
    assert raft_log.last_term == 2
    raft_log.close()


@pytest.mark.timeout(30)
def test_a_conflicting_append_replaces_the_suffix_durably(world: StorageWorld) -> None:
    raft_log = world.open_log()
    raft_log.append(batch(1, 60))
    raft_log.append(batch(30, 35, term=3))
    assert raft_log.last_index == 34 and raft_log.entries(28, 40) == [
        *batch(28, 30),
        *batch(30, 35, term=3),
    ]
    raft_log = reopen(world, raft_log)
    assert contents(raft_log) == (0, 0, 34, batch(1, 30) + batch(30, 35, term=3))
    raft_log.close()


@pytest.mark.timeout(30)
def test_a_misplaced_or_broken_batch_is_refused_and_loses_nothing(world: StorageWorld) -> None:
    raft_log = world.open_log()
    raft_log.append(batch(1, 11))
    raft_log.compact(3, 1)
    with pytest.raises(ValueError, match="compacted"):
        raft_log.append(batch(3, 5))
    with pytest.raises(ValueError, match="gap"):
        raft_log.append(batch(12, 14))
    with pytest.raises(ValueError, match="contiguous"):
        raft_log.append([make_entry(5, 2), make_entry(7, 2)])  # would replace 5.. if accepted
    raft_log.append([])
    raft_log = reopen(world, raft_log)
    assert contents(raft_log) == (3, 1, 10, batch(4, 11))
    raft_log.close()


@pytest.mark.timeout(30)
def test_compaction_moves_the_base_durably(world: StorageWorld) -> None:
    raft_log = world.open_log()
    raft_log.append(batch(1, 100))
    raft_log.append(batch(100, 120, term=2))
    assert raft_log.frees_segment(110) and not raft_log.frees_segment(0)
    with pytest.raises(ValueError, match="term"):
        raft_log.compact(105, 1)
    raft_log.compact(105, 2)
    assert (raft_log.base_index, raft_log.base_term, raft_log.first_index) == (105, 2, 106)
    assert raft_log.term(105) == 2 and raft_log.term(104) is None
    assert raft_log.entry(105) is None and raft_log.entries(1, 108) == batch(106, 108, term=2)
    assert not raft_log.frees_segment(105)  # nothing at or below the base is left
    raft_log.compact(50, 1)  # behind the base: nothing happens
    raft_log.wait_for_removals()
    raft_log = reopen(world, raft_log)
    assert contents(raft_log) == (105, 2, 119, batch(106, 120, term=2))
    raft_log.compact(200, 5)  # past the end: a reset
    assert contents(raft_log) == (200, 5, 200, [])
    raft_log.append(batch(201, 203, term=5))
    raft_log = reopen(world, raft_log)
    assert contents(raft_log) == (200, 5, 202, batch(201, 203, term=5))
    raft_log.close()


@pytest.mark.timeout(30)
def test_reset_and_restore_to_snapshot(world: StorageWorld) -> None:
    raft_log = world.open_log()
    raft_log.append(batch(1, 50))
    raft_log.restore_to_snapshot(20, 1)  # the log holds (20, 1): the suffix stays
    assert contents(raft_log) == (20, 1, 49, batch(21, 50))
    raft_log.restore_to_snapshot(30, 4)  # a conflicting snapshot: everything goes
    assert contents(raft_log) == (30, 4, 30, [])
    with pytest.raises(ValueError, match="older"):
        raft_log.restore_to_snapshot(10, 1)
    with pytest.raises(ValueError, match="negative"):
        raft_log.reset(-1, 0)
    raft_log.reset(40, 6)
    raft_log = reopen(world, raft_log)
    assert contents(raft_log) == (40, 6, 40, [])
    assert raft_log.last_term == 6
    raft_log.restore_to_snapshot(40, 6)  # again, as after a crash: no change
    assert contents(raft_log) == (40, 6, 40, [])
    raft_log.close()


@pytest.mark.timeout(30)
def test_max_bytes_limits_a_read_but_returns_at_least_one_entry(world: StorageWorld) -> None:
    raft_log = world.open_log()
    entries = [Entry(i, 1, EntryKind.NORMAL, bytes([i % 256]) * 100) for i in range(1, 101)]
    for i in range(0, 100, 10):
        raft_log.append(entries[i : i + 10])
    # 116 bytes per entry by Entry.size(): 1000 bytes hold 8 of them
    assert raft_log.entries(1, 101, max_bytes=1000) == entries[:8]
    assert raft_log.entries(95, 101, max_bytes=1000) == entries[94:]
    assert raft_log.entries(5, 101, max_bytes=1) == entries[4:5]
    assert raft_log.entries(-5, 500, max_bytes=10**9) == entries
    raft_log.close()


@pytest.mark.timeout(30)
def test_one_owner_at_a_time_and_a_closed_log_refuses_work(world: StorageWorld) -> None:
    raft_log = world.open_log()
    raft_log.append(batch(1, 3))
    with pytest.raises(LogLockedError):
        world.open_log()
    raft_log.close()
    raft_log.close()  # idempotent
    with pytest.raises(StorageError, match="closed"):
        raft_log.append(batch(3, 4))
    with pytest.raises(StorageError, match="closed"):
        raft_log.entries(1, 3)
    again = world.open_log()  # closed: free again
    again = reopen(world, again)  # crashed: free again
    assert contents(again) == (0, 0, 2, batch(1, 3))
    again.close()


@pytest.mark.timeout(120)
def test_random_operations_and_crashes_match_a_model(world: StorageWorld) -> None:
    rng = random.Random(1234)
    model: dict[int, Entry] = {}
    base = (0, 0)
    raft_log = world.open_log()
    term = 1
    for _ in range(400):
        op = rng.random()
        last = raft_log.last_index
        if op < 0.55:
            lo = rng.randint(max(base[0] + 1, last - 10), last + 1)
            if rng.random() < 0.3:
                term += 1
            new = batch(lo, lo + rng.randint(1, 20), term)
            raft_log.append(new)
            for i in [i for i in model if i >= lo]:
                del model[i]
            model.update({e.index: e for e in new})
        elif op < 0.65 and last > base[0]:
            upto = rng.randint(base[0] + 1, last)
            base = (upto, model[upto].term)
            raft_log.compact(*base)
            for i in [i for i in model if i <= upto]:
                del model[i]
        elif op < 0.7:
            index, snap_term = rng.randint(base[0], last + 3), rng.randint(1, term + 1)
            raft_log.restore_to_snapshot(index, snap_term)
            kept = index in model and model[index].term == snap_term
            model = {i: e for i, e in model.items() if kept and i > index}
            base = (index, snap_term)
        elif op < 0.8:
            raft_log = reopen(world, raft_log)
        else:
            lo = rng.randint(0, last + 2)
            hi = rng.randint(lo, last + 3)
            expect = [model[i] for i in range(max(lo, base[0] + 1), min(hi, last + 1))]
            assert raft_log.entries(lo, hi) == expect
            probe = rng.randint(0, last + 2)
            assert raft_log.term(probe) == (
                base[1] if probe == base[0] else model[probe].term if probe in model else None
            )
        assert raft_log.last_index == (max(model) if model else base[0])
        assert raft_log.base_index == base[0] and raft_log.term(base[0]) == base[1]
    assert raft_log.entries(0, raft_log.last_index + 1) == [model[i] for i in sorted(model)]
    raft_log.close()


# --------------------------------------------------------------------------- the hard state


@pytest.mark.timeout(30)
def test_hard_state_starts_empty_and_the_last_save_survives_a_crash(
    world: StorageWorld,
) -> None:
    store = world.open_hard_state()
    assert store.load() == (HardState(), None)
    store.save(HardState(3, "b", 7), CONFIG)
    store.save(HardState(4, None, 9))
    assert store.load() == (HardState(4, None, 9), None)
    store.save(HardState(5, "c", 12), CONFIG)
    again = world.open_hard_state()  # a restart
    assert again.load() == (HardState(5, "c", 12), CONFIG)


@pytest.mark.timeout(30)
def test_hard_state_can_be_saved_before_it_is_loaded(world: StorageWorld) -> None:
    world.open_hard_state().save(HardState(2, "a", 1))
    assert world.open_hard_state().load() == (HardState(2, "a", 1), None)


# --------------------------------------------------------------------------- snapshots


def writer_for(index: int):  # type: ignore[no-untyped-def]
    def write(dirpath: str) -> None:
        Path(dirpath, "data.bin").write_bytes(bytes([index % 256]) * (1000 + index))
        os.makedirs(os.path.join(dirpath, "sessions"))
        Path(dirpath, "sessions", "table").write_text(f"sessions at {index}")

    return write


def transfer(source: SnapshotStorage, path: str, target: str, skip: str = "") -> None:
    """What the snapshot stream does: copy every listed file, under its relative path."""
    for rel, _size in source.list_files(path):
        if rel != skip:
            os.makedirs(os.path.dirname(os.path.join(target, rel)), exist_ok=True)
            shutil.copyfile(os.path.join(path, rel), os.path.join(target, rel))


@pytest.mark.timeout(30)
def test_a_created_snapshot_is_the_latest_and_survives_a_crash(world: StorageWorld) -> None:
    store = world.open_snapshots()
    assert store.latest() is None
    path = store.create(SnapshotMeta(10, 2, CONFIG), writer_for(10), {"sessions": {"s1": 5}})
    meta, latest_path, extra = store.latest()  # type: ignore[misc]
    assert meta == SnapshotMeta(10, 2, CONFIG) and latest_path == path
    assert extra == {"sessions": {"s1": 5}}
    assert Path(path, "data.bin").read_bytes() == bytes([10]) * 1010
    names = [rel for rel, _ in store.list_files(path)]
    assert names == ["data.bin", "sessions/table", META_NAME]
    store.verify(path)
    again = world.open_snapshots()
    meta2, path2, extra2 = again.latest()  # type: ignore[misc]
    assert (meta2, extra2) == (meta, extra)
    assert Path(path2, "sessions", "table").read_text() == "sessions at 10"
    Path(path2, "data.bin").write_bytes(b"\x00" + bytes([10]) * 1009)  # a rotting disk
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        again.verify(path2)


@pytest.mark.timeout(30)
def test_each_new_snapshot_retires_the_others(world: StorageWorld) -> None:
    store = world.open_snapshots()
    first = store.create(SnapshotMeta(20, 1, CONFIG), writer_for(20))
    store.create(SnapshotMeta(20, 1, CONFIG), writer_for(99))  # same index and term: kept
    assert Path(first, "data.bin").read_bytes() == bytes([20]) * 1020
    store.create(SnapshotMeta(30, 1, CONFIG), writer_for(30))
    assert store.latest()[0].index == 30  # type: ignore[index]
    assert world.open_snapshots().latest()[0].index == 30  # type: ignore[index]


@pytest.mark.timeout(30)
def test_a_snapshot_older_than_the_latest_is_refused_and_retires_nothing(
    world: StorageWorld, tmp_path: Path
) -> None:
    """A snapshot written on a worker can finish after a newer one arrived from the leader
    (and the log was cut to it): publishing the older one would retire the only snapshot
    the log can restart from."""
    leader = StorageWorld(world.kind, tmp_path / "leader").open_snapshots()
    source = leader.create(SnapshotMeta(40, 3, CONFIG), writer_for(40))
    store = world.open_snapshots()
    store.create(SnapshotMeta(20, 1, CONFIG), writer_for(20))
    target = store.begin_install()
    transfer(leader, source, target)
    store.finish_install(target)
    with pytest.raises(ValueError, match="older than the latest"):
        store.create(SnapshotMeta(30, 2, CONFIG), writer_for(30))
    for view in (store, world.open_snapshots()):
        meta, path, _ = view.latest()  # type: ignore[misc]
        assert meta.index == 40
        assert Path(path, "data.bin").read_bytes() == bytes([40]) * 1040


@pytest.mark.timeout(30)
def test_a_failed_snapshot_leaves_the_previous_one(world: StorageWorld) -> None:
    store = world.open_snapshots()
    store.create(SnapshotMeta(10, 1, CONFIG), writer_for(10))

    def broken(dirpath: str) -> None:
        Path(dirpath, "half").write_bytes(b"written")
        raise RuntimeError("the backend failed")

    with pytest.raises(RuntimeError, match="backend failed"):
        store.create(SnapshotMeta(20, 1, CONFIG), broken)
    assert store.latest()[0].index == 10  # type: ignore[index]
    assert world.open_snapshots().latest()[0].index == 10  # type: ignore[index]


@pytest.mark.timeout(30)
def test_install_from_a_leader_and_survive_a_crash(world: StorageWorld, tmp_path: Path) -> None:
    leader = StorageWorld(world.kind, tmp_path / "leader").open_snapshots()
    path = leader.create(SnapshotMeta(40, 3, CONFIG), writer_for(40), {"k": [1, 2]})
    follower = world.open_snapshots()
    follower.create(SnapshotMeta(7, 1, CONFIG), writer_for(7))
    tmp = follower.begin_install()
    assert follower.latest()[0].index == 7  # type: ignore[index]
    assert os.path.isdir(tmp)  # latest() must not clean up an install in progress
    transfer(leader, path, tmp)
    meta, installed, extra = follower.finish_install(tmp)
    assert (meta, extra) == (SnapshotMeta(40, 3, CONFIG), {"k": [1, 2]})
    assert follower.latest() == (meta, installed, extra)
    assert Path(installed, "data.bin").read_bytes() == Path(path, "data.bin").read_bytes()
    again = world.open_snapshots()
    assert again.latest()[0] == meta  # type: ignore[index]


@pytest.mark.timeout(30)
def test_a_bad_transfer_is_refused_and_the_old_snapshot_stays(
    world: StorageWorld, tmp_path: Path
) -> None:
    leader = StorageWorld(world.kind, tmp_path / "leader").open_snapshots()
    path = leader.create(SnapshotMeta(40, 3, CONFIG), writer_for(40))
    stale_leader = StorageWorld(world.kind, tmp_path / "stale").open_snapshots()
    stale = stale_leader.create(SnapshotMeta(4, 1, CONFIG), writer_for(4))
    follower = world.open_snapshots()
    follower.create(SnapshotMeta(7, 1, CONFIG), writer_for(7))
    for skip, damage, match in (
        ("sessions/table", "", "lacks data file"),
        (META_NAME, "", "no meta"),
        ("", "data.bin", "checksum"),
        ("", "stray", "unlisted"),
    ):
        tmp = follower.begin_install()
        transfer(leader, path, tmp, skip=skip)
        if damage == "data.bin":
            target = Path(tmp, "data.bin")
            target.write_bytes(b"\x00" + target.read_bytes()[1:])
        elif damage == "stray":
            Path(tmp, "stray").write_bytes(b"?")
        with pytest.raises(CorruptSnapshotError, match=match):
            follower.finish_install(tmp)
        assert not os.path.exists(tmp)
    tmp = follower.begin_install()
    transfer(stale_leader, stale, tmp)
    with pytest.raises(ValueError, match="older"):
        follower.finish_install(tmp)
    tmp = follower.begin_install()
    transfer(leader, path, tmp)
    follower.abort_install(tmp)
    assert not os.path.exists(tmp)
    with pytest.raises(ValueError, match="begin_install"):
        follower.finish_install(str(tmp_path / "elsewhere"))
    assert follower.latest()[0].index == 7  # type: ignore[index]
    assert world.open_snapshots().latest()[0].index == 7  # type: ignore[index]


@pytest.mark.timeout(30)
def test_an_install_a_crash_cut_short_leaves_the_old_snapshot(
    world: StorageWorld, tmp_path: Path
) -> None:
    leader = StorageWorld(world.kind, tmp_path / "leader").open_snapshots()
    path = leader.create(SnapshotMeta(40, 3, CONFIG), writer_for(40))
    follower = world.open_snapshots()
    follower.create(SnapshotMeta(7, 1, CONFIG), writer_for(7))
    tmp = follower.begin_install()
    transfer(leader, path, tmp, skip=META_NAME)  # the crash came mid-transfer
    again = world.open_snapshots()
    assert again.latest()[0].index == 7  # type: ignore[index]
    assert not os.path.exists(tmp)  # a restart cleans up what the crash left


# --------------------------------------------------------------------------- the shapes


def _members(protocol: type) -> dict[str, object]:
    """Each member the protocol declares: a property, or a method's signature."""
    found: dict[str, object] = {}
    for name, value in vars(protocol).items():
        if isinstance(value, property):
            found[name] = "property"
        elif callable(value) and not name.startswith("_"):
            found[name] = inspect.signature(value)
    return found


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("protocol", "implementations"),
    [
        (LogStorage, [SegmentedLog, MemoryLog, FaultyLog]),
        (HardStateStorage, [HardStateFile, MemoryHardState, FaultyHardState]),
        (SnapshotStorage, [SnapshotStore, MemorySnapshotStore, FaultySnapshots]),
    ],
    ids=["log", "hard-state", "snapshots"],
)
def test_every_implementation_has_the_protocols_shape(
    protocol: type, implementations: list[type]
) -> None:
    """What a type checker would say, checked here because CI runs no type checker: the
    same members, properties as properties, the same parameters and defaults."""
    wanted = _members(protocol)
    assert len(wanted) >= 2  # load and save are the fewest
    for cls in implementations:
        for name, shape in wanted.items():
            member = inspect.getattr_static(cls, name, None)
            assert member is not None, f"{cls.__name__} lacks {name}"
            if shape == "property":
                assert isinstance(member, property), f"{cls.__name__}.{name} is no property"
                continue
            assert isinstance(shape, inspect.Signature)
            have = inspect.signature(member)
            assert [(p.name, p.default) for p in have.parameters.values()] == [
                (p.name, p.default) for p in shape.parameters.values()
            ], f"{cls.__name__}.{name}{have} differs from {protocol.__name__}.{name}{shape}"

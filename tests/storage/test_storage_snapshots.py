"""SnapshotStore: create/latest, retention and backups, half-written dirs, installation."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from zraft.core.types import Configuration, SnapshotMeta
from zraft.storage import CorruptSnapshotError, SnapshotStore
from zraft.storage.snapshots import META_NAME

CONFIG = Configuration.of(["a", "b", "c"])


def writer_for(index: int):  # type: ignore[no-untyped-def]
    def write(dirpath: str) -> None:
        Path(dirpath, "data.bin").write_bytes(bytes([index % 256]) * (1000 + index))
        os.makedirs(os.path.join(dirpath, "sessions"))
        Path(dirpath, "sessions", "table").write_text(f"sessions at {index}")

    return write


def snapshot_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith("snap-"))


@pytest.mark.timeout(30)
def test_create_and_latest(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    assert store.latest() is None
    path = store.create(SnapshotMeta(10, 2, CONFIG), writer_for(10), {"sessions": {"s1": 5}})
    meta, latest_path, extra = store.latest()  # type: ignore[misc]
    assert meta == SnapshotMeta(10, 2, CONFIG) and latest_path == path
    assert extra == {"sessions": {"s1": 5}}
    assert Path(path, "data.bin").read_bytes() == bytes([10]) * 1010
    store.verify(path)
    # a second store on the same directory (a restart) sees the same
    assert SnapshotStore(tmp_path).latest() == (meta, path, extra)


@pytest.mark.timeout(30)
def test_new_snapshot_replaces_previous(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    for index in (10, 20, 30):
        store.create(SnapshotMeta(index, 1, CONFIG), writer_for(index))
    assert snapshot_dirs(tmp_path) == [f"snap-{30:020d}-{1:020d}"]
    assert not (tmp_path / "backups").exists()
    assert store.latest()[0].index == 30  # type: ignore[index]


@pytest.mark.timeout(30)
def test_backup_retention(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path, backup=True, keep_backups=2)
    for index in (10, 20, 30, 40, 50):
        store.create(SnapshotMeta(index, 1, CONFIG), writer_for(index))
    assert snapshot_dirs(tmp_path) == [f"snap-{50:020d}-{1:020d}"]
    backups = sorted(os.listdir(tmp_path / "backups"))
    assert backups == [f"snap-{i:020d}-{1:020d}" for i in (30, 40)]
    # backups are complete snapshots in their own right
    for name in backups:
        store.verify(str(tmp_path / "backups" / name))


@pytest.mark.timeout(30)
def test_half_written_snapshot_is_ignored_and_cleaned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SnapshotStore(tmp_path)
    store.create(SnapshotMeta(5, 1, CONFIG), writer_for(5))
    # a crash while writing: a temp dir with data but no meta, and one with a meta
    half = tmp_path / "tmp-create-crashed"
    half.mkdir()
    (half / "data.bin").write_bytes(b"partial")
    (tmp_path / "tmp-install-xyz").mkdir()

    def failing_writer(dirpath: str) -> None:
        Path(dirpath, "data.bin").write_bytes(b"x")
        raise RuntimeError("backend failed")

    with pytest.raises(RuntimeError):
        store.create(SnapshotMeta(9, 1, CONFIG), failing_writer)
    with caplog.at_level(logging.WARNING, logger="zraft.storage.snapshots"):
        restarted = SnapshotStore(tmp_path)
        assert restarted.latest()[0].index == 5  # type: ignore[index]
    assert not half.exists() and not (tmp_path / "tmp-install-xyz").exists()
    assert any("half-written" in r.getMessage() for r in caplog.records)
    assert [p.name for p in tmp_path.iterdir()] == [f"snap-{5:020d}-{1:020d}"]


@pytest.mark.timeout(30)
def test_crash_between_rename_and_retire(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    old = store.create(SnapshotMeta(5, 1, CONFIG), writer_for(5))
    kept = tmp_path / "kept"
    shutil.copytree(old, kept)
    store.create(SnapshotMeta(8, 1, CONFIG), writer_for(8))
    os.rename(kept, old)  # as if the old one had not been removed yet
    assert SnapshotStore(tmp_path).latest()[0].index == 8  # type: ignore[index]


@pytest.mark.timeout(30)
def test_damaged_meta_is_an_error(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = store.create(SnapshotMeta(5, 1, CONFIG), writer_for(5))
    meta_path = Path(path, META_NAME)
    data = bytearray(meta_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    meta_path.write_bytes(data)
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        store.latest()
    meta_path.write_bytes(b"")
    with pytest.raises(CorruptSnapshotError, match="truncated"):
        store.latest()


@pytest.mark.timeout(30)
def test_damaged_data_file_fails_verification(tmp_path: Path) -> None:
    store = SnapshotStore(tmp_path)
    path = store.create(SnapshotMeta(5, 1, CONFIG), writer_for(5))
    data_path = Path(path, "data.bin")
    data = bytearray(data_path.read_bytes())
    data[3] ^= 0x40
    data_path.write_bytes(data)
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        store.verify(path)
    data_path.write_bytes(data[:-1])
    with pytest.raises(CorruptSnapshotError, match="bytes"):
        store.latest()


def transfer(source: SnapshotStore, path: str, target_dir: str, skip: str = "") -> None:
    """What the snapshot transfer does: copy list_files() into the install directory."""
    for rel, size in source.list_files(path):
        if rel == skip:
            continue
        dest = Path(target_dir, *rel.split("/"))
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(Path(path, *rel.split("/")), dest)
        assert dest.stat().st_size == size


@pytest.mark.timeout(30)
def test_install_from_leader(tmp_path: Path) -> None:
    leader = SnapshotStore(tmp_path / "leader")
    path = leader.create(SnapshotMeta(40, 3, CONFIG), writer_for(40), {"k": [1, 2]})
    files = leader.list_files(path)
    assert [rel for rel, _ in files] == ["data.bin", "sessions/table", META_NAME]

    follower = SnapshotStore(tmp_path / "follower")
    follower.create(SnapshotMeta(7, 1, CONFIG), writer_for(7))
    tmp = follower.begin_install()
    assert follower.latest()[0].index == 7  # type: ignore[index]
    assert os.path.isdir(tmp)  # latest() must not clean up an install in progress
    transfer(leader, path, tmp)
    meta, installed, extra = follower.finish_install(tmp)
    assert (meta, extra) == (SnapshotMeta(40, 3, CONFIG), {"k": [1, 2]})
    assert follower.latest() == (meta, installed, extra)
    assert snapshot_dirs(tmp_path / "follower") == [f"snap-{40:020d}-{3:020d}"]
    assert Path(installed, "data.bin").read_bytes() == Path(path, "data.bin").read_bytes()


@pytest.mark.timeout(30)
def test_install_rejects_incomplete_or_damaged_transfer(tmp_path: Path) -> None:
    leader = SnapshotStore(tmp_path / "leader")
    path = leader.create(SnapshotMeta(40, 3, CONFIG), writer_for(40))
    follower = SnapshotStore(tmp_path / "follower")
    follower.create(SnapshotMeta(7, 1, CONFIG), writer_for(7))

    tmp = follower.begin_install()
    transfer(leader, path, tmp, skip="sessions/table")
    with pytest.raises(CorruptSnapshotError, match="lacks data file"):
        follower.finish_install(tmp)
    assert not os.path.exists(tmp)

    tmp = follower.begin_install()
    transfer(leader, path, tmp, skip=META_NAME)
    with pytest.raises(CorruptSnapshotError, match="no meta"):
        follower.finish_install(tmp)

    tmp = follower.begin_install()
    transfer(leader, path, tmp)
    target = Path(tmp, "data.bin")
    target.write_bytes(b"\x00" + target.read_bytes()[1:])
    with pytest.raises(CorruptSnapshotError, match="checksum"):
        follower.finish_install(tmp)

    tmp = follower.begin_install()
    transfer(leader, path, tmp)
    Path(tmp, "stray").write_bytes(b"?")
    with pytest.raises(CorruptSnapshotError, match="unlisted"):
        follower.finish_install(tmp)

    tmp = follower.begin_install()
    transfer(leader, path, tmp)
    follower.abort_install(tmp)
    assert not os.path.exists(tmp)

    # the old snapshot survived every failed attempt
    assert follower.latest()[0].index == 7  # type: ignore[index]
    with pytest.raises(ValueError, match="begin_install"):
        follower.finish_install(str(tmp_path / "elsewhere"))


@pytest.mark.timeout(30)
def test_install_older_than_current_is_refused(tmp_path: Path) -> None:
    leader = SnapshotStore(tmp_path / "leader")
    path = leader.create(SnapshotMeta(4, 1, CONFIG), writer_for(4))
    follower = SnapshotStore(tmp_path / "follower")
    follower.create(SnapshotMeta(9, 1, CONFIG), writer_for(9))
    tmp = follower.begin_install()
    transfer(leader, path, tmp)
    with pytest.raises(ValueError, match="older"):
        follower.finish_install(tmp)
    assert follower.latest()[0].index == 9  # type: ignore[index]

"""HardStateFile: save/load, one damaged copy, torn writes, both copies damaged."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest

from zraft.core.types import Configuration, HardState
from zraft.storage import CorruptHardStateError, HardStateFile, StorageFullError
from zraft.storage import hard_state as hard_state_module

CONFIG = Configuration.of(["a", "b", "c"], learners=["d"])


@pytest.mark.timeout(30)
def test_fresh_directory_gives_defaults(tmp_path: Path) -> None:
    store = HardStateFile(tmp_path / "hs")
    assert store.load() == (HardState(), None)
    assert all(Path(p).exists() for p in store.paths)  # both copies exist from the start
    assert HardStateFile(tmp_path / "hs").load() == (HardState(), None)


@pytest.mark.timeout(30)
def test_save_load_round_trip(tmp_path: Path) -> None:
    store = HardStateFile(tmp_path)
    store.save(HardState(3, "b", 10), CONFIG)
    assert HardStateFile(tmp_path).load() == (HardState(3, "b", 10), CONFIG)
    store.save(HardState(4, None, 12))
    assert HardStateFile(tmp_path).load() == (HardState(4, None, 12), None)
    for term in range(5, 30):  # many saves alternate between the two copies
        store.save(HardState(term, f"p{term}", term * 2), CONFIG)
        assert HardStateFile(tmp_path).load() == (HardState(term, f"p{term}", term * 2), CONFIG)


@pytest.mark.timeout(30)
def test_one_damaged_copy_falls_back_to_the_other(tmp_path: Path) -> None:
    rng = random.Random(2)
    store = HardStateFile(tmp_path)
    store.save(HardState(1, "a", 1), CONFIG)
    store.save(HardState(2, "b", 2), CONFIG)  # the copies now hold terms 1 and 2
    older, newer = HardState(1, "a", 1), HardState(2, "b", 2)
    states = {}
    for path in store.paths:
        states[path] = Path(path).read_bytes()
    for path, data in states.items():
        damaged = bytearray(data)
        damaged[rng.randrange(len(damaged))] ^= 0x04
        Path(path).write_bytes(damaged)
        loaded, config = HardStateFile(tmp_path).load()
        assert config == CONFIG
        # damaging the older copy changes nothing; damaging the newer falls back one save
        assert loaded in (older, newer)
        Path(path).write_bytes(data)
    assert HardStateFile(tmp_path).load() == (newer, CONFIG)


@pytest.mark.timeout(30)
def test_torn_save_keeps_the_last_saved_state(tmp_path: Path) -> None:
    """A save torn by a crash damages only the copy it writes, never the newest state."""
    rng = random.Random(4)
    store = HardStateFile(tmp_path)
    store.save(HardState(7, "x", 70), CONFIG)
    for _ in range(40):
        saved = HardStateFile(tmp_path).load()
        # which copy would the next save write? the one not holding the newest state
        probe = HardStateFile(tmp_path)
        probe.load()
        target = Path(probe.paths[1 - probe._newest])  # white-box: the copy being written
        before = target.read_bytes()
        new_state = HardState(saved[0].term + 1, "y", saved[0].commit + 1)
        probe.save(new_state, CONFIG)
        written = target.read_bytes()
        # simulate the crash: only a prefix (or a mix) of the new bytes reached the disk
        cut = rng.randrange(len(written))
        torn = written[:cut] + before[cut:] if rng.random() < 0.5 else written[:cut]
        target.write_bytes(torn)
        # a "torn" mix equal to the full new bytes is simply a completed save
        expected = (new_state, CONFIG) if torn == written else saved
        assert HardStateFile(tmp_path).load() == expected
        target.write_bytes(written)
        assert HardStateFile(tmp_path).load() == (new_state, CONFIG)


@pytest.mark.timeout(30)
def test_both_copies_damaged_is_an_error(tmp_path: Path) -> None:
    store = HardStateFile(tmp_path)
    store.save(HardState(5, "z", 9))
    for path in store.paths:
        data = bytearray(Path(path).read_bytes())
        data[-1] ^= 0xFF
        Path(path).write_bytes(data)
    with pytest.raises(CorruptHardStateError, match="no intact copy"):
        HardStateFile(tmp_path).load()
    Path(store.paths[0]).write_bytes(b"")
    Path(store.paths[1]).unlink()
    with pytest.raises(CorruptHardStateError):
        HardStateFile(tmp_path).load()


@pytest.mark.timeout(30)
def test_missing_second_copy_is_recreated(tmp_path: Path) -> None:
    store = HardStateFile(tmp_path)
    store.save(HardState(3, "q", 1))
    store.save(HardState(4, "q", 2))
    # remove the copy holding the older state, as if a crash interrupted first creation
    probe = HardStateFile(tmp_path)
    probe.load()
    Path(probe.paths[1 - probe._newest]).unlink()
    again = HardStateFile(tmp_path)
    assert again.load() == (HardState(4, "q", 2), None)
    again.save(HardState(5, None, 3))
    assert HardStateFile(tmp_path).load() == (HardState(5, None, 3), None)


@pytest.mark.timeout(30)
def test_enospc_on_save_keeps_previous_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = HardStateFile(tmp_path)
    store.save(HardState(2, "a", 1))

    def no_space(*_: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hard_state_module.os, "fdatasync", no_space)
    with pytest.raises(StorageFullError):
        store.save(HardState(3, "b", 2))
    monkeypatch.undo()
    assert HardStateFile(tmp_path).load()[0] in (HardState(2, "a", 1), HardState(3, "b", 2))
    store.save(HardState(4, "c", 3))
    assert HardStateFile(tmp_path).load() == (HardState(4, "c", 3), None)

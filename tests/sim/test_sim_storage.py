"""The simulation again, with every peer's disk the real storage layer: crashes lose what
was not handed to the stores, and a restarted peer sees only what the files recover."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import SOAK
from tests.support.file_disk import FileDisk
from zraft.sim import ScheduleOptions, run_schedule

SCHEDULES = int(os.environ.get("ZRAFT_SIM_STORAGE_SCHEDULES", 2_000 if SOAK else 300))


@pytest.mark.timeout(3600 if SOAK else 600)
def test_schedules_on_real_storage(tmp_path: Path) -> None:
    disks: list[FileDisk] = []
    compactions = 0
    for seed in range(SCHEDULES):
        root = tmp_path / f"s{seed}"

        def factory(peer: str, scratch: str, root: Path = root) -> FileDisk:
            disk = FileDisk(root / peer)
            disks.append(disk)
            return disk

        try:
            result = run_schedule(seed, ScheduleOptions(steps=200), disk_factory=factory)
        except AssertionError as failure:
            pytest.fail(f"{failure}\n(on real storage; files kept in {root})")
        finally:
            for disk in disks:
                compactions += disk.store is not None and disk.store.latest() is not None
            disks.clear()
        assert result.elections > 0
    assert compactions > SCHEDULES  # snapshots were taken and survived restarts

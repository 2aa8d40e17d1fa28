"""Random schedules over whole simulated clusters, with Raft's safety checked every step.

CI runs 2,000 schedules of 300 steps; ``ZRAFT_SOAK=1`` runs 100,000 (or set
``ZRAFT_SIM_SCHEDULES``). A failure names its seed; ``zraft sim --seed N`` replays it.
"""

from __future__ import annotations

import os
import time

import pytest

from tests.conftest import SOAK
from zraft.sim import MemoryDisk, PeerDisk, ScheduleOptions, memory_disk, run_schedule

SCHEDULES = int(os.environ.get("ZRAFT_SIM_SCHEDULES", 100_000 if SOAK else 2_000))
STEPS = 300
CHUNKS = 8


@pytest.mark.timeout(3600 if SOAK else 600)
@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_random_schedules_are_safe_and_live(chunk: int) -> None:
    options = ScheduleOptions(steps=STEPS)
    started = time.perf_counter()
    totals = {"proposals": 0, "reads": 0, "elections": 0, "crashes": 0, "changes": 0}
    for seed in range(chunk, SCHEDULES, CHUNKS):
        try:
            result = run_schedule(seed, options)
        except AssertionError as failure:
            pytest.fail(f"{failure}\nreplay: zraft sim --seed {seed} --steps {STEPS}")
        totals["proposals"] += result.proposals
        totals["reads"] += result.reads
        totals["elections"] += result.elections
        totals["crashes"] += result.crashes
        totals["changes"] += result.membership_changes
    elapsed = time.perf_counter() - started
    count = len(range(chunk, SCHEDULES, CHUNKS))
    print(f"chunk {chunk}: {count} schedules in {elapsed:.1f}s {totals}")
    # The schedules must actually exercise the protocol, or passing means nothing.
    assert totals["elections"] >= count and totals["proposals"] >= count * 10
    assert totals["reads"] > 0 and totals["crashes"] > 0 and totals["changes"] > 0


@pytest.mark.timeout(120)
def test_a_seed_replays_exactly() -> None:
    first = run_schedule(4242, ScheduleOptions(steps=STEPS))
    second = run_schedule(4242, ScheduleOptions(steps=STEPS))
    assert first == second
    assert first.messages > 0


@pytest.mark.timeout(120)
def test_fault_free_cluster_commits_every_proposal() -> None:
    result = run_schedule(7, ScheduleOptions(steps=STEPS, faults=False, membership=False))
    assert result.proposals > 50
    # Every proposal went to a stable leader, so all commit: proposals + no-op(s).
    assert result.committed >= result.proposals


@pytest.mark.timeout(120)
def test_the_simulated_disks_are_the_storage_twins() -> None:
    """The simulation's default disk keeps each peer's log, hard state and snapshots in the
    storage layer's in-memory twins (storage.memory), which a crash leaves as the real ones
    would."""
    disks: list[MemoryDisk] = []

    def factory(peer: str, scratch: str) -> PeerDisk:
        disk = memory_disk(peer, scratch)
        assert isinstance(disk, MemoryDisk)
        disks.append(disk)
        return disk

    result = run_schedule(7, ScheduleOptions(steps=200), disk_factory=factory)
    assert result.crashes > 0 and result.committed > 0
    assert disks and any(disk.volume.snapshot is not None for disk in disks)
    durable = [disk.volume.log_base[0] + len(disk.volume.log_entries) for disk in disks]
    assert max(durable) >= result.committed  # the committed entries live in the volumes

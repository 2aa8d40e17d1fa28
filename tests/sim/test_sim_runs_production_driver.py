"""The simulation proves the code users run: its peers are driven by the very classes the
process's actors wrap (PeerDriver in PeerActor, ApplyDriver in StateMachineActor), write
through the same LogWriter and start through the same recovery."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.mutants import DRIVER_MUTANTS
from zraft.actors import recovery, runtime
from zraft.actors.log_actor import LogWriter
from zraft.actors.messages import AppliedUpTo
from zraft.actors.peer_actor import PeerActor
from zraft.actors.state_machine import ReplicatedState
from zraft.actors.state_machine_actor import StateMachineActor
from zraft.backends.kv import KeyValueBackend
from zraft.core import Configuration, Node, NodeOptions
from zraft.sim import Cluster, DrivenPeer, ScheduleOptions, run_schedule
from zraft.storage import SnapshotStore


class _Loop:
    """Enough of a hosted loop to construct a PeerActor (it is never started)."""

    def open_loop(self) -> None: ...

    def run_once(self, timeout_ms: int) -> bool:
        return False

    def wake(self) -> None: ...

    def flush(self) -> None: ...

    def close_loop(self) -> None: ...


class _Ref:
    def tell(self, message: Any) -> None: ...


def _actors(tmp_path: Path) -> tuple[PeerActor, StateMachineActor]:
    node = Node("a", random.Random(1), NodeOptions())
    peer = PeerActor(
        node=node,
        loop=_Loop(),
        send=lambda messages: None,
        reply=lambda replies: None,
        set_peers=lambda peers: None,
        log_writer=None,
        log_actor=_Ref(),  # type: ignore[arg-type]
        state_machine_actor=_Ref(),  # type: ignore[arg-type]
        snapshot_actor=_Ref(),  # type: ignore[arg-type]
        applied=AppliedUpTo(0, 0, {}),
        on_failure=lambda reason: None,
    )
    state_machine = StateMachineActor(
        peer_id="a",
        state=ReplicatedState(KeyValueBackend(), Configuration()),
        snapshots=SnapshotStore(tmp_path / "snapshots", fsync=False),
        snapshot_lock=threading.Lock(),
        max_log_count=100,
        reply=lambda replies: None,
        peer=None,
        on_failure=lambda reason: None,
    )
    return peer, state_machine


@pytest.mark.timeout(60)
def test_the_simulation_drives_the_classes_the_actors_drive(tmp_path: Path) -> None:
    peer_actor, state_machine_actor = _actors(tmp_path)
    with Cluster(3, ["n1", "n2", "n3"], ["n1", "n2", "n3"]) as cluster:
        peers = list(cluster.peers.values())
        assert all(type(peer) is DrivenPeer for peer in peers)
        for peer in peers:
            running = peer.running
            assert running is not None
            assert type(running.driver) is type(peer_actor.driver)
            assert type(running.applier) is type(state_machine_actor.driver)
            assert type(running.writer) is LogWriter
        while cluster.leader() is None:
            cluster.tick()
    # One recovery for both: the runtime and the simulation call the same function.
    assert runtime.recover is recovery.recover


@pytest.mark.timeout(60)
def test_every_simulated_start_goes_through_the_recovery(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = recovery.recover

    def counting(**kwargs: Any) -> Node:
        calls.append(kwargs["peer_id"])
        return real(**kwargs)

    monkeypatch.setattr("zraft.sim.peer.recover", counting)
    result = run_schedule(11, ScheduleOptions(steps=200))
    assert result.crashes > 0
    assert len(calls) == 7 + result.crashes  # the pool's first starts, then each restart


BUDGET = 2_000  # as for the core's mutants (test_mutants.py)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("mutant", DRIVER_MUTANTS, ids=lambda m: m.__name__)
def test_a_broken_driver_is_caught(mutant: type) -> None:
    options = ScheduleOptions(steps=300)
    for seed in range(BUDGET):
        try:
            run_schedule(seed, options, driver_factory=mutant)
        except AssertionError as failure:
            print(f"{mutant.__name__} caught at seed {seed}: {failure}")
            assert f"seed {seed}" in str(failure)
            return
    pytest.fail(f"{mutant.__name__} survived {BUDGET} schedules: the simulation lacks teeth")

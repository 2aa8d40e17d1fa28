"""The simulation has teeth: each deliberately broken rule is caught within the CI budget."""

from __future__ import annotations

import pytest

from tests.support.mutants import MUTANTS
from zraft.sim import ScheduleOptions, run_schedule

BUDGET = 2_000  # the schedules CI runs against the real core


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.__name__)
def test_broken_rule_is_caught(mutant: type) -> None:
    options = ScheduleOptions(steps=300)
    for seed in range(BUDGET):
        try:
            run_schedule(seed, options, node_factory=mutant)
        except AssertionError as failure:
            print(f"{mutant.__name__} caught at seed {seed}: {failure}")
            assert f"seed {seed}" in str(failure)  # every failure names its seed
            return
    pytest.fail(f"{mutant.__name__} survived {BUDGET} schedules: the simulation lacks teeth")

"""Every workload of the fault suite, by the name ``zraft chaos --workload`` takes."""

from __future__ import annotations

from .casbin_workload import CasbinWorkload
from .lock_workload import LockWorkload
from .workloads import CounterWorkload, FloodWorkload, RegisterWorkload, Workload

WORKLOADS: dict[str, type[Workload]] = {
    workload.name: workload
    for workload in (RegisterWorkload, CounterWorkload, FloodWorkload, CasbinWorkload, LockWorkload)
}

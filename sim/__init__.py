"""A deterministic simulation of whole clusters running the production driver, with Raft's
safety and the clients' guarantees checked."""

from .checker import SafetyChecker, SafetyViolation
from .client import SimClient
from .cluster import Cluster, Faults, describe, memory_disk
from .peer import DrivenPeer, MemoryDisk, PeerDisk
from .schedule import LivenessFailure, ScheduleOptions, ScheduleResult, run_schedule

__all__ = [
    "Cluster",
    "DrivenPeer",
    "Faults",
    "LivenessFailure",
    "MemoryDisk",
    "PeerDisk",
    "SafetyChecker",
    "SafetyViolation",
    "ScheduleOptions",
    "ScheduleResult",
    "SimClient",
    "describe",
    "memory_disk",
    "run_schedule",
]

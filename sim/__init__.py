"""A deterministic simulation of whole clusters of cores, with Raft's safety checked."""

from .checker import SafetyChecker, SafetyViolation
from .cluster import Cluster, Disk, Faults, SimPeer, describe
from .schedule import LivenessFailure, ScheduleOptions, ScheduleResult, run_schedule

__all__ = [
    "Cluster",
    "Disk",
    "Faults",
    "LivenessFailure",
    "SafetyChecker",
    "SafetyViolation",
    "ScheduleOptions",
    "ScheduleResult",
    "SimPeer",
    "describe",
    "run_schedule",
]

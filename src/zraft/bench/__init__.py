"""``zraft bench``: client throughput and latency of a local 3-peer cluster.

Separate client processes (``client``) drive 100-byte writes and linearizable reads through
``AsyncLightSession`` at several concurrency levels against zraft (``systems.ZraftSystem``)
and, for comparison, PySyncObj behind the same wire protocol (``pysyncobj_node``);
``runner`` sequences the runs, ``results`` turns latencies into tables, ``plot`` draws them.
See ``docs/benchmarks.md``.
"""

from .results import WRITE_CEILING, LevelResult, Summary, summarize
from .runner import BenchConfig, BenchRun, run_benchmark

__all__ = [
    "WRITE_CEILING",
    "BenchConfig",
    "BenchRun",
    "LevelResult",
    "Summary",
    "run_benchmark",
    "summarize",
]

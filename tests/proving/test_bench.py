"""``zraft bench``: the numbers it computes, a short real run, and its cleanup.

The real runs are bounded (1 s per level, or a fixed count) and assert only that results are
well formed and nonzero, never how fast anything is. The PySyncObj comparison needs the
``bench`` extra; it is defined only when ZRAFT_BENCH_PYSYNCOBJ=1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from tests.support.paths import REPO
from zraft.bench.cli import add_bench_command, run_bench
from zraft.bench.client import bench_value, sessions_for
from zraft.bench.plot import _tick_labels
from zraft.bench.results import (
    WRITE_CEILING,
    LevelResult,
    level_result,
    markdown_table,
    percentile,
    summarize,
    text_table,
)
from zraft.bench.runner import BenchConfig, BenchRun, leader_counters, run_benchmark
from zraft.bench.systems import process_cpu_seconds


def _result(
    run: int, throughput_latency: float, op: str = "write", n: int = 100, system: str = "zraft"
) -> LevelResult:
    return level_result(
        system=system,
        op=op,
        concurrency=16,
        client_processes=1,
        run=run,
        latencies=[throughput_latency] * n,
        errors=run,
        seconds=1.0,
        client_cpu=0.001 * n,
        server_cpu=0.002 * n,
        leader_cpu=0.5,
    )


def test_percentile_is_nearest_rank() -> None:
    ordered = [float(i) for i in range(1, 101)]
    assert percentile(ordered, 0.50) == 50.0
    assert percentile(ordered, 0.99) == 99.0
    assert percentile(ordered, 1.0) == 100.0
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 0.5)
    with pytest.raises(ValueError):
        percentile(ordered, 0.0)


def test_level_result_rates_and_ceiling() -> None:
    latencies = [0.001] * 98 + [0.010, 0.020]
    result = level_result(
        system="zraft", op="write", concurrency=16, client_processes=1, run=1,
        latencies=latencies, errors=0, seconds=2.0, client_cpu=0.005, server_cpu=0.02,
        leader_cpu=0.01,
    )  # fmt: skip
    assert result.completed == 100
    assert result.throughput == 50.0
    assert result.p50_ms == pytest.approx(1.0)
    assert result.p99_ms == pytest.approx(10.0)
    assert result.max_ms == pytest.approx(20.0)
    assert result.client_cpu_us == pytest.approx(50.0)
    assert result.server_cpu_us == pytest.approx(200.0)
    assert result.leader_cpu_cores == pytest.approx(0.005)
    assert result.ceiling_fraction == pytest.approx(50.0 / WRITE_CEILING[16])
    read = level_result(
        system="zraft", op="read", concurrency=16, client_processes=1, run=1,
        latencies=latencies, errors=0, seconds=2.0, client_cpu=0.0, server_cpu=None,
        leader_cpu=None,
    )  # fmt: skip
    assert read.ceiling_fraction is None and read.server_cpu_us is None
    empty = level_result(
        system="zraft", op="write", concurrency=3, client_processes=1, run=1, latencies=[],
        errors=5, seconds=1.0, client_cpu=0.1, server_cpu=None, leader_cpu=None,
    )  # fmt: skip
    assert empty.throughput == 0 and math.isnan(empty.p50_ms) and empty.ceiling_fraction is None


def test_summary_takes_medians_and_renders() -> None:
    results = [_result(1, 0.002), _result(2, 0.004), _result(3, 0.003), _result(1, 0.001, "read")]
    write, read = summarize(results)
    assert (write.op, write.runs, read.runs) == ("write", 3, 1)
    assert write.p50_ms == pytest.approx(3.0)
    assert write.errors == 6
    assert write.throughput == 100.0 and write.throughput_min == write.throughput_max == 100.0
    notes = {"zraft": "fsync on"}
    text = text_table([write, read], notes)
    assert "zraft (fsync on)" in text and f"{100 / WRITE_CEILING[16]:.2f}" in text
    lines = markdown_table([write, read], notes).splitlines()
    assert len(lines) == 4 and all(line.startswith("|") for line in lines)
    assert len({line.count("|") for line in lines}) == 1


def test_a_ceiling_measured_in_the_same_run_replaces_the_reference() -> None:
    # zraft: 100 writes/s; the bare pipeline in the same run: 400/s (latency 4x lower)
    results = [_result(1, 0.002), _result(1, 0.0005, n=400, system="ceiling")]
    results.append(_result(1, 0.001, "read"))
    zraft_write, ceiling, zraft_read = summarize(results)
    assert zraft_write.measured_ceiling == 400.0 and zraft_write.ceiling_fraction == 0.25
    assert ceiling.ceiling_fraction == 1.0
    assert zraft_read.ceiling_fraction is None and zraft_read.measured_ceiling is None
    # without it, the reference figures
    (alone,) = summarize([_result(1, 0.002)])
    assert alone.ceiling_fraction == pytest.approx(100 / WRITE_CEILING[16])


def test_plot_leaves_out_labels_that_would_run_into_each_other() -> None:
    levels = [1, 16, 128, 256, 384, 512, 1024, 2048]
    assert _tick_labels(levels) == ["1", "16", "128", "256", "", "512", "1,024", "2,048"]


def test_helpers() -> None:
    assert [sessions_for(n, 256) for n in (1, 256, 257, 2048)] == [1, 1, 2, 8]
    assert sessions_for(2048, 0) == 1
    assert len(bench_value(100)) == 100
    assert process_cpu_seconds(os.getpid()) is not None
    begin = {"proposals": 0, "log_fsyncs": 10, "log_persist_seconds_total": 1.0}
    end = {"proposals": 400, "log_fsyncs": 30, "log_persist_seconds_total": 1.5}
    counters = leader_counters(begin, end, 2.0)
    assert counters["writes_per_fsync"] == 20.0 and counters["fsyncs_per_s"] == 10.0
    assert counters["persist_busy"] == 0.25
    assert leader_counters(None, end, 2.0) == {}
    with pytest.raises(ValueError):
        BenchConfig(duration=None, count=None)
    with pytest.raises(ValueError):
        BenchConfig(concurrency=(1, 16), client_processes=(1, 1, 2))


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in (b"Z", b"X")


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="zraft")
    add_bench_command(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


@pytest.mark.timeout(180)
def test_short_run_through_the_command(tmp_path: Path) -> None:
    args = _parse(
        ["bench", "--concurrency", "1,16", "--duration", "1", "--warmup", "0.3", "--keys", "50",
         "--json", "--data-dir", str(tmp_path)]
    )  # fmt: skip
    out: list[str] = []
    assert run_bench(args, out.append) == 0
    report = json.loads("\n".join(out))
    summary = report["summary"]
    assert [(s["system"], s["op"], s["concurrency"]) for s in summary] == [
        ("zraft", "write", 1), ("zraft", "read", 1), ("zraft", "write", 16),
        ("zraft", "read", 16),
    ]  # fmt: skip
    for s in summary:
        assert s["throughput"] > 0 and s["runs"] == 1
        assert 0 < s["p50_ms"] <= s["p99_ms"]
        assert s["client_cpu_us"] > 0
        assert s["server_cpu_us"] is not None and s["server_cpu_us"] > 0
        if s["op"] == "write":
            expected = s["throughput"] / WRITE_CEILING[s["concurrency"]]
            assert s["ceiling_fraction"] == pytest.approx(expected)
        else:
            assert s["ceiling_fraction"] is None
    for r in report["results"]:
        assert r["completed"] > 0 and r["completed"] == pytest.approx(r["throughput"])
        assert r["p99_ms"] <= r["max_ms"]
    writes = [r for r in report["results"] if r["op"] == "write"]
    assert all(r["leader_counters"]["fsyncs_per_s"] > 0 for r in writes)
    # The peers wrote their data where they were told to.
    assert any(tmp_path.glob("run1-zraft/*/peer.log"))


@pytest.mark.timeout(180)
def test_count_mode_and_cleanup_when_interrupted(tmp_path: Path) -> None:
    config = BenchConfig(
        concurrency=(1, 16), ops=("write",), duration=None, count=60, warmup=0.2, keys=20,
        root=tmp_path,
    )  # fmt: skip
    bench = BenchRun(config)
    seen: list[LevelResult] = []

    def interrupt(result: LevelResult) -> None:
        seen.append(result)
        raise KeyboardInterrupt  # as Ctrl-C would, in the middle of the run

    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, interrupt, bench)
    assert len(seen) == 1 and seen[0].concurrency == 1
    assert seen[0].completed == 60 and seen[0].throughput > 0
    assert len(bench.started_pids) == 4  # 3 peers and 1 client process
    assert not [pid for pid in bench.started_pids if _alive(pid)]


@pytest.mark.timeout(180)
def test_the_ceiling_pipeline_answers_only_durable_replicated_writes(tmp_path: Path) -> None:
    args = _parse(
        ["bench", "--ceiling", "--concurrency", "1,16", "--ops", "write,read", "--duration",
         "1", "--warmup", "0.3", "--keys", "50", "--json", "--data-dir", str(tmp_path)]
    )  # fmt: skip
    out: list[str] = []
    assert run_bench(args, out.append) == 0
    report = json.loads("\n".join(out))
    # It offers writes only: its reads are skipped, zraft's are not.
    assert [(s["system"], s["op"], s["concurrency"]) for s in report["summary"]] == [
        ("zraft", "write", 1), ("zraft", "read", 1), ("zraft", "write", 16),
        ("zraft", "read", 16), ("ceiling", "write", 1), ("ceiling", "write", 16),
    ]  # fmt: skip
    by_key = {(s["system"], s["op"], s["concurrency"]): s for s in report["summary"]}
    for level in (1, 16):
        zraft, ceiling = by_key[("zraft", "write", level)], by_key[("ceiling", "write", level)]
        assert ceiling["throughput"] > 0 and ceiling["errors"] == 0
        assert zraft["ceiling_fraction"] == pytest.approx(
            zraft["throughput"] / ceiling["throughput"]
        )
    # A majority of the nodes' files (the leader's and a follower's) hold every answered
    # write, the prefill's 50 too, framed and decodable (the slower follower may lag).
    answered = sum(r["completed"] for r in report["results"] if r["system"] == "ceiling")
    logs = sorted(tmp_path.glob("run1-ceiling/127.0.0.1_*/log"))
    assert len(logs) == 3
    counts = []
    for log in logs:
        raw, records, at = log.read_bytes(), 0, 0
        while at < len(raw):
            size = int.from_bytes(raw[at : at + 4], "big")
            records += len(msgpack.unpackb(raw[at + 4 : at + 4 + size]))
            at += 4 + size
        assert at == len(raw)
        counts.append(records)
    assert sorted(counts)[1] >= answered + 50


if os.environ.get("ZRAFT_BENCH_PYSYNCOBJ") == "1":  # needs the `bench` extra

    @pytest.mark.timeout(300)
    def test_pysyncobj_side_by_side(tmp_path: Path) -> None:
        plot = tmp_path / "bench.png"
        args = _parse(
            ["bench", "--pysyncobj", "--concurrency", "1,16", "--duration", "1", "--warmup",
             "0.5", "--keys", "50", "--json", "--plot", str(plot)]
        )  # fmt: skip
        out: list[str] = []
        assert run_bench(args, out.append) == 0
        report = json.loads("\n".join(out))
        assert report["notes"]["pysyncobj"] == "no journal, no fsync"
        systems = {(s["system"], s["op"], s["concurrency"]) for s in report["summary"]}
        assert systems == {
            (system, op, c) for system in ("zraft", "pysyncobj") for op in ("write", "read")
            for c in (1, 16)
        }  # fmt: skip
        for s in report["summary"]:
            assert s["throughput"] > 0 and 0 < s["p50_ms"] <= s["p99_ms"]
        pso = [r for r in report["results"] if r["system"] == "pysyncobj"]
        assert all(r["leader_counters"] == {} for r in pso)
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(120)
def test_write_path_stage_benchmark_runs() -> None:
    """benchmarks/write_path_bench.py (per-stage CPU, docs/benchmarks.md) keeps working."""
    script = REPO / "benchmarks" / "write_path_bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--runs", "1", "--json"],
        capture_output=True, text=True, timeout=100, check=True,
    )
    stages = json.loads(done.stdout)
    assert {"apply", "client frame decode", "append encode", "replies decode"} <= set(stages)
    assert all(0 < value < 1000 for value in stages.values())

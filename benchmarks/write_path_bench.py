"""CPU per entry of each stage a write goes through, in one process, no I/O.

Each stage runs on a batch of 128 client writes (`kv.put` of a 100-byte value), as the
leader proposes them under load, and is timed per entry; a run takes the median of 200
rounds, the table the median of the runs. The stages, in the order a write meets them:

    client frame encode/decode, command encode, entry build, log record encode,
    append-entries encode/decode, apply (exactly-once tables + key-value backend),
    reply build, replies encode/decode

    python benchmarks/write_path_bench.py [--runs 5] [--json]

Compare two versions by running this script from each checkout in turn (the machine's
speed drifts): the figures are for ratios, not for absolute claims.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

from zraft.actors.apply_driver import reply_for
from zraft.actors.commands import Command, CommandKind
from zraft.actors.state_machine import ReplicatedState
from zraft.backends import kv
from zraft.core import Configuration, Entry, EntryKind
from zraft.core.messages import AppendEntries
from zraft.storage.records import encode_batch as encode_records
from zraft.transport import codec
from zraft.transport.messages import ClientRequest

BATCH = 128
ROUNDS = 200
VALUE = b"v" * 100
LIMIT = 1 << 24


def per_entry(stage: Callable[[int], Any]) -> float:
    """Median over ROUNDS of one call on a batch, in µs per entry."""
    times = []
    for round_no in range(ROUNDS):
        started = time.perf_counter()
        stage(round_no)
        times.append(time.perf_counter() - started)
    return statistics.median(times) / BATCH * 1e6


def one_run() -> dict[str, float]:
    requests = [
        ClientRequest(i + 1, "write", kv.put(f"k{i % 64}", VALUE), "client-abc", i + 1, i, 5000)
        for i in range(BATCH)
    ]
    request_frame = codec.encode_batch(requests, cluster_id="zraft", sender="client")
    commands = [
        Command(CommandKind.WRITE, r.client_id, r.seq, r.acked, r.payload).encode()
        for r in requests
    ]
    entries = tuple(Entry(1000 + i, 3, EntryKind.NORMAL, data) for i, data in enumerate(commands))
    append = AppendEntries(3, "a", "b", 999, 3, entries, 990)
    append_frame = codec.encode_batches([append], cluster_id="zraft", sender="a")[0][0]
    out: dict[str, float] = {}
    out["client frame encode"] = per_entry(
        lambda _: codec.encode_batch(requests, cluster_id="zraft", sender="client")
    )
    out["client frame decode"] = per_entry(
        lambda _: codec.decode_batch(request_frame, cluster_id="zraft", max_frame_bytes=LIMIT)
    )
    out["command encode"] = per_entry(
        lambda _: [
            Command(CommandKind.WRITE, r.client_id, r.seq, r.acked, r.payload).encode()
            for r in requests
        ]
    )
    out["entry build"] = per_entry(
        lambda _: [Entry(1000 + i, 3, EntryKind.NORMAL, d) for i, d in enumerate(commands)]
    )
    out["log record encode"] = per_entry(lambda _: encode_records(list(entries)))
    out["append encode"] = per_entry(
        lambda _: codec.encode_batches([append], cluster_id="zraft", sender="a")
    )
    out["append decode"] = per_entry(
        lambda _: codec.decode_batch(append_frame, cluster_id="zraft", max_frame_bytes=LIMIT)
    )
    # Applying: every round a fresh batch of the same client's next writes (acked moves on,
    # as a client's does), so the exactly-once tables stay at their steady size.
    state = ReplicatedState(kv.KeyValueBackend(), Configuration.of(["a", "b", "c"]))
    batches = []
    for round_no in range(ROUNDS):
        base = round_no * BATCH
        batches.append([
            Entry(base + 1 + i, 3, EntryKind.NORMAL, Command(
                CommandKind.WRITE, "client-abc", base + 1 + i, base + i,
                kv.put(f"k{i % 64}", VALUE),
            ).encode())
            for i in range(BATCH)
        ])  # fmt: skip
    applied: list[Any] = []
    out["apply"] = per_entry(lambda n: applied.extend(state.apply(batches[n])))
    last = applied[-BATCH:]
    out["reply build"] = per_entry(
        lambda _: [reply_for(i, a.outcome, None, a.answered_at) for i, a in enumerate(last)]
    )
    replies = [reply_for(i, a.outcome, None, a.answered_at) for i, a in enumerate(last)]
    reply_frame = codec.encode_batches(replies, cluster_id="zraft", sender="a")[0][0]
    out["replies encode"] = per_entry(
        lambda _: codec.encode_batches(replies, cluster_id="zraft", sender="a")
    )
    out["replies decode"] = per_entry(
        lambda _: codec.decode_batch(reply_frame, cluster_id="zraft", max_frame_bytes=LIMIT)
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [one_run() for _ in range(args.runs)]
    table = {stage: statistics.median(run[stage] for run in runs) for stage in runs[0]}
    if args.json:
        print(json.dumps(table, indent=2))
        return
    print(f"{'stage':24s} {'µs per entry':>12s}")
    for stage, value in table.items():
        print(f"{stage:24s} {value:12.2f}")
    print(f"{'total':24s} {sum(table.values()):12.2f}")


if __name__ == "__main__":
    main()

"""One-way throughput of ZmqTransport: messages/s in batches of 100 between two transports.

The receiving transport runs in a child process (as a real peer would); the sender calls
``send`` with batches of 100 messages from one or more threads, keeping at most a bounded
backlog (so nothing is dropped and the figure is the delivered rate).

    python benchmarks/transport_bench.py [--messages 300000] [--threads 1]
        [--kind heartbeat|append] [--entries 1]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import socket
import threading
import time
from multiprocessing.connection import Connection

import zmq

from zraft.core.messages import AppendEntries, Heartbeat, Message
from zraft.core.types import Entry, EntryKind
from zraft.transport import ZmqTransport

CLUSTER = "bench"


def free_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def receiver(me: str, other: str, conn: Connection) -> None:
    count = 0
    last = 0.0

    def on_peer(msgs: list[Message]) -> None:
        nonlocal count, last
        count += len(msgs)
        last = time.monotonic()  # system-wide clock: comparable with the parent's

    transport = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=me,
        peers=[other],
        on_peer_messages=on_peer,
        on_client_requests=lambda r: None,
    )
    transport.start()
    conn.send("ready")
    expected = conn.recv()
    deadline = time.monotonic() + 60
    while count < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    conn.send((count, last))
    transport.close()


def raw_sink(me: str, other: str, conn: Connection) -> None:
    """A bare ROUTER that counts frames without decoding them: the sender's ceiling."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.bind(f"tcp://{me}")
    conn.send("ready")
    frames = 0
    last = 0.0
    expected: int | None = None
    deadline = time.monotonic() + 120
    while (expected is None or frames < expected) and time.monotonic() < deadline:
        if router.poll(10):
            while True:
                try:
                    router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                frames += 1
                last = time.monotonic()
        if expected is None and conn.poll():
            expected = conn.recv()
    conn.send((frames, last))
    router.close(linger=0)
    ctx.term()


def make_batch(kind: str, src: str, dst: str, start: int, entries: int) -> list[Message]:
    if kind == "heartbeat":
        return [Heartbeat(3, src, dst, start + i, start + i) for i in range(100)]
    out: list[Message] = []
    for i in range(100):
        first = (start + i) * entries + 1
        batch = tuple(Entry(first + j, 3, EntryKind.NORMAL, b"x" * 100) for j in range(entries))
        out.append(AppendEntries(3, src, dst, first - 1, 3, batch, 0))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300_000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--kind", choices=["heartbeat", "append"], default="heartbeat")
    parser.add_argument("--entries", type=int, default=1, help="100-byte entries per append")
    parser.add_argument(
        "--no-decode", action="store_true", help="receive with a bare ROUTER (sender ceiling)"
    )
    args = parser.parse_args()

    me, other = free_address(), free_address()
    total = args.messages
    parent, child = mp.Pipe()
    target = raw_sink if args.no_decode else receiver
    proc = mp.get_context("spawn").Process(target=target, args=(other, me, child))
    proc.start()
    assert parent.recv() == "ready"
    sender = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=me,
        peers=[other],
        on_peer_messages=lambda m: None,
        on_client_requests=lambda r: None,
    )
    sender.start()
    # ZMQ_IMMEDIATE drops until connected: wait for the connection first.
    while sender.stats()["sent"] == 0:
        sender.send([Heartbeat(0, me, other, 0, 0)])
        time.sleep(0.01)
    warmup = sender.stats()["sent"]
    batches = [make_batch(args.kind, me, other, i * 100, args.entries) for i in range(100)]
    per_thread = (total - warmup) // 100 // args.threads
    call_times: list[float] = []

    def run() -> None:
        spent = 0.0
        for k in range(per_thread):
            while sender.stats()["backlog"] > 20_000:
                time.sleep(0.0002)
            t0 = time.perf_counter()
            sender.send(batches[k % 100])
            spent += time.perf_counter() - t0
        call_times.append(spent / per_thread)

    threads = [threading.Thread(target=run) for _ in range(args.threads)]
    started = time.perf_counter()
    started_mono = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    send_elapsed = time.perf_counter() - started
    sent = per_thread * 100 * args.threads
    while sender.stats()["backlog"]:
        time.sleep(0.001)
    time.sleep(0.05)  # the I/O thread may still be writing its last frames
    if args.no_decode:
        parent.send(sender.stats()["sent_frames"])
        _, last_arrival = parent.recv()
        received = warmup + sent
    else:
        parent.send(warmup + sent)
        received, last_arrival = parent.recv()
    recv_elapsed = last_arrival - started_mono
    proc.join()
    stats = sender.stats()
    sender.close()
    print(
        f"kind={args.kind} entries={args.entries} threads={args.threads} messages={sent}"
        f"{' (no decode)' if args.no_decode else ''}: "
        f"delivered {received - warmup} in {recv_elapsed:.2f}s (first send to last arrival) = "
        f"{(received - warmup) / recv_elapsed:,.0f} msgs/s; "
        f"send() of 100 costs {1e6 * sum(call_times) / len(call_times):.1f} us "
        f"({sent / send_elapsed:,.0f} msgs/s offered); frames={stats.get('sent_frames', 0)} "
        f"dropped={stats['dropped']}"
    )


if __name__ == "__main__":
    main()

"""Hostile input at a live transport: it drops and counts, and keeps serving good traffic."""

from __future__ import annotations

import os
import random
import socket
import struct

import msgpack
import pytest
import zmq

from tests.transport.test_transport_support import Inbox, free_address, running, wait_until
from zraft.core.messages import Heartbeat
from zraft.transport import PROTOCOL_VERSION, encode, split_address

CLUSTER = "test-cluster"
MAX_FRAME = 1 << 20


def envelope(*parts: object) -> bytes:
    return msgpack.packb(list(parts), use_bin_type=True)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, "connection closed during the handshake"
        data += chunk
    return data


def zmtp_connect(host: str, port: int) -> socket.socket:
    """A raw TCP connection that performs the ZMTP 3.0 NULL handshake of a DEALER by hand,
    step by step like libzmq does, so the test can then write any frame header it likes."""
    sock = socket.create_connection((host, port), timeout=5)
    # Signature; libzmq wants the last padding byte to be 1 (ZMTP 1.0 compatibility).
    sock.sendall(b"\xff" + b"\x00" * 7 + b"\x01\x7f")
    assert recv_exact(sock, 10)[0] == 0xFF
    sock.sendall(b"\x03\x00" + b"NULL".ljust(20, b"\x00") + b"\x00" + b"\x00" * 31)
    recv_exact(sock, 54)
    body = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 6) + b"DEALER"
    sock.sendall(b"\x04" + bytes([len(body)]) + body)
    flags, size = recv_exact(sock, 2)
    assert flags == 0x04 and recv_exact(sock, size).startswith(b"\x05READY")
    return sock


@pytest.mark.timeout(90)
def test_rogue_peers_are_dropped_and_counted() -> None:
    a, b = free_address(), free_address()
    inbox_b = Inbox()
    with (
        running(b, [a, b], inbox_b, max_frame_bytes=MAX_FRAME) as tb,
        running(a, [a, b], Inbox()) as ta,
    ):
        host, port = split_address(b)

        def reached(n: int) -> bool:
            ta.send([Heartbeat(1, a, b, n, 0)])
            return Heartbeat(1, a, b, n, 0) in inbox_b.snapshot()

        assert wait_until(lambda: reached(0), step=0.02)

        ctx = zmq.Context()
        rogue = ctx.socket(zmq.DEALER)
        rogue.linger = 0
        rogue.connect(f"tcp://{host}:{port}")
        good = encode(Heartbeat(1, a, b, 0, 0), cluster_id=CLUSTER, sender=a)
        bad_frames = {
            "not-msgpack": [os.urandom(64) + b"\xc1", b"\xc1", b""],
            "bad-version": [envelope(PROTOCOL_VERSION + 1, CLUSTER, a, 5, [1, a, b, 0, 0])],
            "wrong-cluster": [envelope(PROTOCOL_VERSION, "evil", a, 5, [1, a, b, 0, 0])],
            "unknown-type": [envelope(PROTOCOL_VERSION, CLUSTER, a, 77, [])],
            "src-mismatch": [envelope(PROTOCOL_VERSION, CLUSTER, "x:1", 5, [1, a, b, 0, 0])],
            "bad-field:term": [envelope(PROTOCOL_VERSION, CLUSTER, a, 5, [-1, a, b, 0, 0])],
            "wrong-dst": [envelope(PROTOCOL_VERSION, CLUSTER, a, 5, [1, a, "elsewhere:1", 0, 0])],
            "unexpected-type": [
                envelope(PROTOCOL_VERSION, CLUSTER, a, 31, [1, True, None, None, None, 0])
            ],
            "trailing-data": [good + b"\x00"],
            # Bigger than max_frame_bytes but under ZMQ_MAXMSGSIZE's slack: our own check.
            "oversized": [b"\x90" * (MAX_FRAME + 10)],
        }
        for frames in bad_frames.values():
            for frame in frames:
                rogue.send(frame)
        rogue.send_multipart([good, b"extra part"])  # one part too many
        for _ in range(200):  # random garbage
            rogue.send(os.urandom(1 + os.urandom(1)[0]))

        def all_counted() -> bool:
            s = tb.stats()
            return all(s.get(f"rejected_{r}", 0) >= len(f) for r, f in bad_frames.items()) and (
                s.get("rejected_bad-parts", 0) == 1
            )

        assert wait_until(all_counted), tb.stats()
        # Random bytes can never form a valid envelope: every one of them is rejected.
        total_bad = 1 + 200 + sum(len(f) for f in bad_frames.values())
        assert wait_until(lambda: tb.stats()["rejected"] == total_bad), tb.stats()

        # The hand-written ZMTP greeting works: a small junk frame reaches the decoder.
        not_msgpack = tb.stats()["rejected_not-msgpack"]
        with zmtp_connect(host, port) as raw:
            raw.sendall(b"\x00\x03\xc1\xc1\xc1")
            assert wait_until(lambda: tb.stats()["rejected_not-msgpack"] == not_msgpack + 1)

        # A 100 MB frame: a DEALER that announces it is disconnected by zmq (MAXMSGSIZE)
        # before the body is read, so this test never needs to allocate or send 100 MB.
        before = tb.stats().get("conn_disconnected", 0)
        failed_handshakes = tb.stats().get("conn_handshake_failed", 0)
        raw = zmtp_connect(host, port)
        try:
            raw.sendall(b"\x02" + struct.pack(">Q", 100 * 1000 * 1000) + b"\x00" * 65536)
            closed = False
            try:
                for _ in range(200):  # EOF or reset once zmq has read the header
                    if not raw.recv(65536):
                        closed = True
                        break
            except ConnectionResetError:
                closed = True
            except TimeoutError:
                closed = False
            assert closed, "a 100 MB frame header did not get the connection dropped"
        finally:
            raw.close()
        assert wait_until(lambda: tb.stats().get("conn_disconnected", 0) > before), tb.stats()
        assert tb.stats().get("conn_handshake_failed", 0) == failed_handshakes  # MAXMSGSIZE did it
        assert tb.stats()["rejected_not-msgpack"] == not_msgpack + 1  # never reached decode

        # Raw TCP junk, not ZMTP: zmq fails the handshake (at the latest when the junk
        # sender hangs up mid-handshake), or, for bytes that happen to parse as ZMTP 1.0
        # framing, passes frames on that the decoder rejects.
        noise = random.Random(7).randbytes(4096)
        for junk in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" + noise, noise):
            s0 = tb.stats()
            with socket.create_connection((host, port), timeout=5) as sock:
                sock.sendall(junk)

            def refused(s0: dict[str, int] = s0) -> bool:
                s = tb.stats()
                failed = s.get("conn_handshake_failed", 0) - s0.get("conn_handshake_failed", 0)
                return failed > 0 or s["rejected"] > s0["rejected"]

            assert wait_until(refused), (junk[:16], tb.stats())

        # Good traffic still flows, and none of that junk was delivered as a message.
        assert wait_until(lambda: reached(1), step=0.02)
        assert all(m.src == a and m.dst == b for m in inbox_b.snapshot())
        assert tb._thread is not None and tb._thread.is_alive()
        rogue.close()
        ctx.term()

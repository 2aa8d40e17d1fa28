"""The snapshot file stream: intact delivery, clean failures, retries, hostile headers."""

from __future__ import annotations

import os
import socket
import threading
import zlib
from pathlib import Path

import pytest

from tests.transport.test_transport_support import wait_until
from zraft.transport import SnapshotReceiver, SnapshotTransferError, send_snapshot
from zraft.transport.snapshot_stream import _recv_msg, _send_msg, valid_file_name

CLUSTER = "test-cluster"
LEADER = "127.0.0.1:7001"


class Events:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.completed: list[tuple[int, list[str]]] = []
        self.failed: list[tuple[int, str]] = []

    def on_complete(self, index: int, dest: Path) -> None:
        with self.lock:
            self.completed.append((index, sorted(p.name for p in dest.iterdir())))

    def on_failed(self, index: int, reason: str) -> None:
        with self.lock:
            self.failed.append((index, reason))


def make_files(root: Path) -> list[Path]:
    root.mkdir()
    files = {
        "data.bin": os.urandom(5 * 1024 * 1024 + 123),
        "empty": b"",
        "meta": b"snapshot meta record",
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return [root / name for name in files]


def receiver(events: Events, **kwargs: object) -> SnapshotReceiver:
    return SnapshotReceiver(
        "127.0.0.1",
        0,
        cluster_id=CLUSTER,
        on_complete=events.on_complete,
        on_failed=events.on_failed,
        **kwargs,  # type: ignore[arg-type]
    )


def same_contents(files: list[Path], dest: Path) -> bool:
    names = sorted(p.name for p in dest.iterdir())
    if names != sorted(f.name for f in files):
        return False
    return all((dest / f.name).read_bytes() == f.read_bytes() for f in files)


def header(index: int, files: list[tuple[str, int, int]], cluster: str = CLUSTER) -> dict:
    return {"v": 1, "cluster": cluster, "sender": LEADER, "index": index, "files": files}


def listing(files: list[Path]) -> list[tuple[str, int, int]]:
    return [(f.name, f.stat().st_size, zlib.crc32(f.read_bytes())) for f in files]


@pytest.mark.timeout(60)
def test_files_arrive_intact(tmp_path: Path) -> None:
    files = make_files(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    events = Events()
    with receiver(events) as recv:
        host, port = recv.expect(42, dest)
        send_snapshot(
            host, port, cluster_id=CLUSTER, sender=LEADER, index=42, files=files, timeout=10
        )
        assert same_contents(files, dest)
        assert events.completed == [(42, ["data.bin", "empty", "meta"])]
        assert events.failed == []
        # Delivered once: the expectation is gone.
        with pytest.raises(SnapshotTransferError) as err:
            send_snapshot(
                host, port, cluster_id=CLUSTER, sender=LEADER, index=42, files=files, timeout=10
            )
        assert err.value.reason == "rejected:unexpected-index"


@pytest.mark.timeout(60)
def test_interrupted_transfer_leaves_nothing_and_a_retry_succeeds(tmp_path: Path) -> None:
    files = make_files(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    events = Events()
    with receiver(events) as recv:
        host, port = recv.expect(7, dest)
        # A sender that dies halfway through the big file (after "meta" and "empty" made it).
        order = [files[2], files[1], files[0]]
        with socket.create_connection((host, port), timeout=10) as sock:
            _send_msg(sock, header(7, listing(order)))
            assert _recv_msg(sock) == {"ok": True}
            for f in order[:2]:
                _send_msg(sock, [f.name, f.stat().st_size])
                sock.sendall(f.read_bytes())
                assert _recv_msg(sock)["ok"] is True
            big = order[2].read_bytes()
            _send_msg(sock, [order[2].name, len(big)])
            sock.sendall(big[: len(big) // 2])
        assert wait_until(lambda: events.failed == [(7, "interrupted")]), events.failed
        assert list(dest.iterdir()) == []  # no partial file, and the finished ones are gone
        assert events.completed == []

        send_snapshot(
            host, port, cluster_id=CLUSTER, sender=LEADER, index=7, files=files, timeout=10
        )
        assert same_contents(files, dest)
        assert [i for i, _ in events.completed] == [7]


@pytest.mark.timeout(60)
def test_corrupted_file_fails_cleanly_and_a_retry_succeeds(tmp_path: Path) -> None:
    files = make_files(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    events = Events()
    with receiver(events) as recv:
        host, port = recv.expect(9, dest)
        entries = listing(files)
        name, size, crc = entries[0]
        entries[0] = (name, size, crc ^ 1)  # the header promises other bytes
        with socket.create_connection((host, port), timeout=10) as sock:
            _send_msg(sock, header(9, entries))
            assert _recv_msg(sock) == {"ok": True}
            _send_msg(sock, [name, size])
            with open(files[0], "rb") as f:
                sock.sendfile(f)
            assert _recv_msg(sock) == {"ok": False, "reason": "bad-crc"}
        assert wait_until(lambda: events.failed == [(9, "bad-crc")])
        assert list(dest.iterdir()) == []
        send_snapshot(
            host, port, cluster_id=CLUSTER, sender=LEADER, index=9, files=files, timeout=10
        )
        assert same_contents(files, dest)


@pytest.mark.timeout(60)
def test_a_new_transfer_supersedes_a_stuck_one(tmp_path: Path) -> None:
    files = make_files(tmp_path / "src")
    dest = tmp_path / "dest"
    dest.mkdir()
    events = Events()
    with receiver(events) as recv:
        host, port = recv.expect(11, dest)
        with socket.create_connection((host, port), timeout=10) as stuck:
            _send_msg(stuck, header(11, listing(files)))
            assert _recv_msg(stuck) == {"ok": True}
            _send_msg(stuck, [files[0].name, files[0].stat().st_size])
            stuck.sendall(b"x" * 1000)  # ... and then nothing more
            send_snapshot(
                host, port, cluster_id=CLUSTER, sender=LEADER, index=11, files=files, timeout=10
            )
        assert same_contents(files, dest)
        assert events.failed == [(11, "superseded")]
        assert [i for i, _ in events.completed] == [11]


@pytest.mark.timeout(60)
def test_hostile_headers_are_rejected(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    dest.mkdir()
    events = Events()
    with receiver(events, max_file_bytes=1 << 20) as recv:
        host, port = recv.expect(5, dest)

        def rejected(hdr: object) -> object:
            with socket.create_connection((host, port), timeout=10) as sock:
                _send_msg(sock, hdr)
                return _recv_msg(sock)

        for bad in ["../evil", "a/b", "..", ".", "", "c\\d", "nul\x00", ".zraft-partial-x", 7]:
            assert rejected(header(5, [(bad, 1, 0)])) == {"ok": False, "reason": "bad-name"}
        assert rejected(header(5, [("a", 1, 0), ("a", 1, 0)]))["reason"] == "bad-name"
        assert rejected(header(5, [("a", 2 << 20, 0)]))["reason"] == "too-large"
        assert rejected(header(5, [("a", -1, 0)]))["reason"] == "bad-header"
        assert rejected(header(5, [("a", 1, 1 << 32)]))["reason"] == "bad-header"
        assert rejected(header(5, [("a", 1, 0)], cluster="evil"))["reason"] == "wrong-cluster"
        assert rejected(header(6, [("a", 1, 0)]))["reason"] == "unexpected-index"
        assert rejected({**header(5, []), "v": 2})["reason"] == "bad-version"
        assert rejected([1, 2, 3])["reason"] == "bad-version"
        # A length prefix claiming 4 GB of header: refused without reading it.
        with socket.create_connection((host, port), timeout=10) as sock:
            sock.sendall(b"\xff\xff\xff\xff")
            assert sock.recv(10) == b""
        assert list(dest.iterdir()) == []
        assert events.completed == []
        assert {reason for _, reason in events.failed} == {"bad-name"}
        assert recv.counters["rejected_bad-name"] == 10
        # The sender refuses bad names too, before connecting.
        with pytest.raises(SnapshotTransferError) as err:
            send_snapshot(
                host,
                port,
                cluster_id=CLUSTER,
                sender=LEADER,
                index=5,
                files=[Path("..")],
                timeout=1,
            )
        assert err.value.reason == "bad-name"


@pytest.mark.timeout(30)
def test_valid_file_names() -> None:
    assert valid_file_name("snapshot.db") and valid_file_name("meta") and valid_file_name(".hidden")
    assert not valid_file_name("x" * 256)
    assert not valid_file_name("\udcff")  # not encodable

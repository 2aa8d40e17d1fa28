"""Snapshot files over a plain TCP stream, sent with the kernel's ``sendfile``.

Snapshots are too big for the message path (a frame is decoded whole), so the leader
offers the snapshot over the transport (``SnapshotOffer``), the follower calls
``SnapshotReceiver.expect`` and answers ``SnapshotReady(host, port)``, and the leader calls
``send_snapshot``. Protocol (every control message is a 4-byte big-endian length followed by
a msgpack value; see ``docs/transport.md``)::

    sender → receiver  header  {"v", "cluster", "sender", "index", "files": [[name, size, crc32]]}
    receiver → sender  ack     {"ok": bool, "reason": str}
    for each file, in header order:
        sender → receiver  [name, size] then exactly ``size`` raw bytes (sendfile)
        receiver → sender  ack (after checking size and CRC32 of what it wrote)
    receiver → sender  final ack {"ok": bool, "done": True} after ``on_complete`` returned

Any failure on the receiving side removes every file the transfer wrote, calls
``on_failed(index, reason)`` and keeps the expectation, so the leader can simply retry; a
new connection for a snapshot that is still being received supersedes the old one.

Why one module: the sending and the receiving half of one stream protocol, which must agree
byte for byte.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import selectors
import shutil
import socket
import struct
import threading
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from zraft.storage.snapshots import file_crc

from .codec import MAX_PEER_ID_LEN

log = logging.getLogger(__name__)

STREAM_VERSION = 1
_LEN = struct.Struct(">I")
_MAX_CONTROL_BYTES = 4 * 1024 * 1024
_CHUNK = 1024 * 1024
_PARTIAL_PREFIX = ".zraft-partial-"
_MAX_NAME_BYTES = 255


class SnapshotTransferError(Exception):
    """A snapshot transfer failed; ``reason`` is a short stable code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class _Fail(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason


def valid_file_name(name: Any) -> bool:
    """A plain file name: no separators, not ``.``/``..``, no NUL, not one of our temps."""
    if type(name) is not str or not name or name in (".", ".."):
        return False
    if "/" in name or "\\" in name or "\x00" in name or name.startswith(_PARTIAL_PREFIX):
        return False
    try:
        return len(name.encode("utf-8")) <= _MAX_NAME_BYTES
    except UnicodeEncodeError:
        return False


# --------------------------------------------------------------------------- framing


def _send_msg(sock: socket.socket, obj: Any) -> None:
    data = msgpack.packb(obj, use_bin_type=True)
    sock.sendall(_LEN.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise _Fail("interrupted", "connection closed")
        got += n
    return bytes(buf)


def _recv_msg(sock: socket.socket, limit: int = _MAX_CONTROL_BYTES) -> Any:
    (size,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if size > limit:
        raise _Fail("protocol", f"control message of {size} bytes")
    data = _recv_exact(sock, size)
    try:
        return msgpack.unpackb(
            data,
            raw=False,
            max_str_len=size,
            max_bin_len=size,
            max_array_len=size,
            max_map_len=size // 2,
            max_ext_len=0,
        )
    except Exception as exc:  # noqa: BLE001 - any unpack failure
        raise _Fail("protocol", f"bad control message: {exc}") from None


# --------------------------------------------------------------------------- sender


def send_snapshot(
    host: str,
    port: int,
    *,
    cluster_id: str,
    sender: str,
    index: int,
    files: Sequence[Path],
    timeout: float,
) -> None:
    """Stream ``files`` (sent under their base names) to a ``SnapshotReceiver``.

    ``timeout`` bounds each socket operation (connect, each wait for an ack, each stall of
    the stream), not the whole transfer. Returns once the receiver acknowledged every file
    and installed the snapshot; raises ``SnapshotTransferError`` otherwise.
    """
    listing: list[tuple[Path, str, int, int]] = []
    for path in files:
        path = Path(path)
        if not valid_file_name(path.name):
            raise SnapshotTransferError("bad-name", path.name)
        try:
            size, crc = file_crc(path)
        except OSError as exc:
            raise SnapshotTransferError("io-error", f"{path}: {exc}") from exc
        listing.append((path, path.name, size, crc))
    if len({name for _, name, _, _ in listing}) != len(listing):
        raise SnapshotTransferError("bad-name", "duplicate file names")
    header = {
        "v": STREAM_VERSION,
        "cluster": cluster_id,
        "sender": sender,
        "index": index,
        "files": [[name, size, crc] for _, name, size, crc in listing],
    }
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            _send_msg(sock, header)
            _expect_ack(sock, "header")
            for path, name, size, _ in listing:
                _send_msg(sock, [name, size])
                with open(path, "rb") as f:
                    sent = sock.sendfile(f, 0, size) if size else 0
                if sent != size:
                    raise SnapshotTransferError("io-error", f"{name}: sent {sent} of {size} bytes")
                _expect_ack(sock, name)
            _expect_ack(sock, "final")
    except SnapshotTransferError:
        raise
    except _Fail as exc:
        raise SnapshotTransferError(exc.reason, str(exc)) from None
    except TimeoutError as exc:
        raise SnapshotTransferError("timeout", str(exc)) from exc
    except OSError as exc:
        raise SnapshotTransferError("interrupted", str(exc)) from exc


def _expect_ack(sock: socket.socket, what: str) -> None:
    ack = _recv_msg(sock)
    if type(ack) is not dict or ack.get("ok") is not True:
        reason = ack.get("reason") if type(ack) is dict else None
        reason = reason if type(reason) is str and len(reason) <= 64 else "protocol"
        raise SnapshotTransferError(f"rejected:{reason}", f"receiver refused {what}")


# --------------------------------------------------------------------------- receiver

CompleteCallback = Callable[[int, Path], None]
FailedCallback = Callable[[int, str], None]


@dataclass
class _Transfer:
    index: int
    conn: socket.socket
    done: threading.Event = field(default_factory=threading.Event)
    superseded: bool = False


class SnapshotReceiver:
    """Listens for snapshot streams in its own thread (one more thread per transfer).

    ``on_complete(index, dest_dir)`` and ``on_failed(index, reason)`` run on a transfer
    thread: keep them short (an actor ``tell``). Files are written but not fsynced: the
    snapshot store fsyncs a received snapshot when it installs it.
    """

    def __init__(
        self,
        bind_host: str = "127.0.0.1",
        port: int = 0,
        *,
        cluster_id: str,
        on_complete: CompleteCallback,
        on_failed: FailedCallback,
        advertise_host: str | None = None,
        max_files: int = 10_000,
        max_file_bytes: int = 1 << 40,
        idle_timeout: float = 30.0,
        max_connections: int = 4,
    ) -> None:
        self.cluster_id = cluster_id
        self._on_complete = on_complete
        self._on_failed = on_failed
        self._max_files = max_files
        self._max_file_bytes = max_file_bytes
        self._idle_timeout = idle_timeout
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._expected: dict[int, Path] = {}
        self._active: dict[int, _Transfer] = {}
        self._threads: set[threading.Thread] = set()
        self._closed = False
        self.counters: dict[str, int] = {}
        family = socket.AF_INET6 if ":" in bind_host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((bind_host, port))
            self._listener.listen(16)
        except OSError:
            self._listener.close()
            raise
        bound_port = self._listener.getsockname()[1]
        self.address: tuple[str, int] = (advertise_host or bind_host, bound_port)
        self._wake_r, self._wake_w = socket.socketpair()
        self._thread = threading.Thread(
            target=self._accept_loop, name=f"zraft-snapshot-recv-{bound_port}", daemon=True
        )
        self._thread.start()

    # ------------------------------------------------------------------ public

    def expect(self, meta_index: int, dest_dir: str | os.PathLike[str]) -> tuple[str, int]:
        """Accept a stream of snapshot ``meta_index`` into ``dest_dir`` (which must exist).

        Returns the (host, port) to put in ``SnapshotReady``. The expectation lasts until the
        snapshot arrived intact or ``cancel`` is called; failed attempts keep it.
        """
        dest = Path(dest_dir)
        if not dest.is_dir():
            raise ValueError(f"{dest} is not a directory")
        with self._lock:
            self._expected[meta_index] = dest
        return self.address

    def cancel(self, meta_index: int) -> None:
        """Stop expecting ``meta_index``; a transfer in progress fails ("cancelled")."""
        with self._lock:
            self._expected.pop(meta_index, None)
            transfer = self._active.get(meta_index)
        if transfer is not None:
            _shutdown(transfer.conn)

    def close(self) -> None:
        """Stop listening, abort transfers in progress, join every thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            active = list(self._active.values())
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        for transfer in active:
            _shutdown(transfer.conn)
        self._thread.join()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> SnapshotReceiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ threads

    def _count(self, key: str) -> None:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + 1

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._closed:
                ready = sel.select()
                if any(key.fileobj is self._wake_r for key, _ in ready):
                    break
                try:
                    conn, peer = self._listener.accept()
                except OSError:
                    continue
                with self._lock:
                    if self._closed or len(self._threads) >= self._max_connections:
                        conn.close()
                        self.counters["refused_busy"] = self.counters.get("refused_busy", 0) + 1
                        continue
                    thread = threading.Thread(
                        target=self._serve,
                        args=(conn, peer),
                        name=f"zraft-snapshot-conn-{peer}",
                        daemon=True,
                    )
                    self._threads.add(thread)
                thread.start()

    def _serve(self, conn: socket.socket, peer: Any) -> None:
        try:
            conn.settimeout(self._idle_timeout)
            self._receive(conn)
        except Exception:  # noqa: BLE001 - a transfer thread must never die noisily
            log.exception("snapshot transfer from %s crashed", peer)
        finally:
            conn.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _receive(self, conn: socket.socket) -> None:
        try:
            header = _recv_msg(conn)
        except (_Fail, OSError) as exc:
            self._count("failed_header")
            log.warning("snapshot stream: no valid header: %s", exc)
            return
        try:
            index, dest, listing = self._check_header(header)
        except _Fail as exc:
            self._count(f"rejected_{exc.reason}")
            log.warning("snapshot stream rejected: %s (%s)", exc.reason, exc)
            with contextlib.suppress(OSError):
                _send_msg(conn, {"ok": False, "reason": exc.reason})
            raw_index = header.get("index") if type(header) is dict else None
            if exc.reason == "bad-name" and type(raw_index) is int:
                self._fail(raw_index, exc.reason)
            return
        transfer = _Transfer(index, conn)
        if not self._claim(transfer):
            self._count("failed_busy")
            with contextlib.suppress(OSError):
                _send_msg(conn, {"ok": False, "reason": "busy"})
            return
        written: list[Path] = []
        try:
            self._stream(conn, transfer, dest, listing, written)
        except (_Fail, OSError) as exc:
            reason = self._reason(exc, transfer)
            _remove(written)
            self._count(f"failed_{reason}")
            log.warning("snapshot %d transfer failed: %s (%s)", index, reason, exc)
            with contextlib.suppress(OSError):
                _send_msg(conn, {"ok": False, "reason": reason})
            self._fail(index, reason)
        finally:
            with self._lock:
                if self._active.get(index) is transfer:
                    del self._active[index]
            transfer.done.set()

    def _reason(self, exc: BaseException, transfer: _Transfer) -> str:
        if transfer.superseded:
            return "superseded"
        if self._closed:
            return "closed"
        with self._lock:
            if transfer.index not in self._expected:
                return "cancelled"
        if isinstance(exc, _Fail):
            return exc.reason
        if isinstance(exc, TimeoutError):
            return "timeout"
        if isinstance(exc, ConnectionError):
            return "interrupted"
        return "io-error"

    def _check_header(self, header: Any) -> tuple[int, Path, list[tuple[str, int, int]]]:
        version = header.get("v") if type(header) is dict else None
        if type(version) is not int or version != STREAM_VERSION:  # True == 1: exact type
            raise _Fail("bad-version")
        if header.get("cluster") != self.cluster_id:
            raise _Fail("wrong-cluster")
        sender = header.get("sender")
        if type(sender) is not str or not sender or len(sender) > MAX_PEER_ID_LEN:
            raise _Fail("bad-header", "sender")
        index = header.get("index")
        if type(index) is not int or index < 0:
            raise _Fail("bad-header", "index")
        files = header.get("files")
        if type(files) is not list or len(files) > self._max_files:
            raise _Fail("bad-header", "files")
        listing: list[tuple[str, int, int]] = []
        for item in files:
            if type(item) is not list or len(item) != 3:
                raise _Fail("bad-header", "file entry")
            name, size, crc = item
            if not valid_file_name(name):
                raise _Fail("bad-name", repr(name)[:80])
            if type(size) is not int or not 0 <= size <= self._max_file_bytes:
                raise _Fail("too-large" if type(size) is int and size > 0 else "bad-header")
            if type(crc) is not int or not 0 <= crc < 1 << 32:
                raise _Fail("bad-header", "crc")
            listing.append((name, size, crc))
        if len({name for name, _, _ in listing}) != len(listing):
            raise _Fail("bad-name", "duplicate names")
        with self._lock:
            dest = self._expected.get(index)
        if dest is None:
            raise _Fail("unexpected-index", str(index))
        total = sum(size for _, size, _ in listing)
        try:
            free = shutil.disk_usage(dest).free
        except OSError as exc:
            raise _Fail("io-error", str(exc)) from None
        if total > free:
            raise _Fail("no-space", f"{total} bytes needed, {free} free")
        log.info(
            "receiving snapshot %d from %s: %d files, %d bytes", index, sender, len(listing), total
        )
        return index, dest, listing

    def _claim(self, transfer: _Transfer) -> bool:
        """Become the only transfer of this index, superseding (and awaiting) an older one."""
        with self._lock:
            old = self._active.get(transfer.index)
            if old is not None:
                old.superseded = True
        if old is not None:
            _shutdown(old.conn)
            if not old.done.wait(self._idle_timeout):
                return False
        with self._lock:
            if self._closed or self._active.get(transfer.index) is not None:
                return False
            self._active[transfer.index] = transfer
        return True

    def _stream(
        self,
        conn: socket.socket,
        transfer: _Transfer,
        dest: Path,
        listing: list[tuple[str, int, int]],
        written: list[Path],
    ) -> None:
        _send_msg(conn, {"ok": True})
        buf = bytearray(_CHUNK)
        view = memoryview(buf)
        for name, size, crc in listing:
            head = _recv_msg(conn, 64 * 1024)
            if type(head) is not list or len(head) != 2 or head[0] != name or head[1] != size:
                raise _Fail("protocol", f"expected file {name!r} of {size} bytes")
            tmp = dest / f"{_PARTIAL_PREFIX}{secrets.token_hex(6)}"
            written.append(tmp)
            got_crc = 0
            remaining = size
            with open(tmp, "wb") as out:
                while remaining:
                    n = conn.recv_into(view, min(_CHUNK, remaining))
                    if n == 0:
                        raise _Fail("interrupted", f"{name}: {size - remaining} of {size} bytes")
                    got_crc = zlib.crc32(view[:n], got_crc)
                    out.write(view[:n])
                    remaining -= n
            if got_crc != crc:
                raise _Fail("bad-crc", name)
            final = dest / name
            os.replace(tmp, final)
            written[-1] = final
            _send_msg(conn, {"ok": True, "file": name})
        with self._lock:
            still_expected = self._expected.get(transfer.index) == dest
        if not still_expected or transfer.superseded:
            raise _Fail("superseded" if transfer.superseded else "cancelled")
        try:
            self._on_complete(transfer.index, dest)
        except Exception as exc:  # noqa: BLE001
            log.exception("on_complete(%d) raised", transfer.index)
            raise _Fail("install-failed", str(exc)) from None
        with self._lock:
            if self._expected.get(transfer.index) == dest:
                del self._expected[transfer.index]
        self._count("completed")
        with contextlib.suppress(OSError):
            _send_msg(conn, {"ok": True, "done": True})

    def _fail(self, index: int, reason: str) -> None:
        try:
            self._on_failed(index, reason)
        except Exception:  # noqa: BLE001
            log.exception("on_failed(%d) raised", index)


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)


def _remove(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

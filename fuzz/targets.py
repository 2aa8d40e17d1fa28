"""Every decoder zraft runs on untrusted bytes, as a fuzz target, and the properties checked.

A target takes one ``bytes`` input and feeds it to a decoder. ``check(target, data)`` runs it
and fails (``PropertyViolation``) when:

* it raises anything but the decoder's documented error type (a crash);
* a rejection's message does not say what was wrong (empty, or a bare type name);
* it runs longer than a CPU-time budget (a hang: an interval timer on *CPU* time, so a
  loaded machine does not cause false alarms, and SIGALRM stays free for pytest-timeout);
* it allocates more than ``alloc_per_byte * len(data) + alloc_slack`` (tracemalloc peak).

The same targets serve the hypothesis tests (``tests/*/test_fuzz_*.py``, bounded, in CI) and
the atheris harnesses (``fuzz/<name>.py``, long local runs). Structure-aware targets read
the input as a recipe (which seed, which byte to change, how) so that mutations get past
checksums and reach the payload decoders behind them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import struct
import tempfile
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from zraft.backends.base import InvalidSnapshot
from zraft.backends.kv import SNAPSHOT_FILE, KeyValueBackend
from zraft.core.messages import (
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from zraft.core.types import Configuration, Entry, EntryKind, HardState, SnapshotMeta
from zraft.settings import Settings, SettingsError, add_arguments
from zraft.storage import HardStateFile, SegmentedLog, SnapshotStore, StorageError
from zraft.storage.errors import RecordError
from zraft.storage.records import HEADER_SIZE, decode_record, scan_record
from zraft.storage.records import encode_batch as encode_records
from zraft.transport import (
    ClientReply,
    ClientRequest,
    FrameError,
    SnapshotOffer,
    SnapshotReady,
    decode,
    decode_batch,
    encode,
    encode_batch,
)
from zraft.transport import snapshot_stream as stream

CLUSTER = "fuzz"
SENDER = "10.0.0.1:7001"
ME = "10.0.0.2:7002"
MAX_FRAME = 1 << 20
CPU_SECONDS = 5.0
# msgpack's C unpacker allocates a list for an array header's claimed length before the
# elements arrive; nested headers (at most ~1,000 deep) can therefore hold a fixed amount
# of memory however small the input. Measured: at most 78 MiB (docs/reliability.md).
MSGPACK_NESTING_CEILING = 96 << 20


class PropertyViolation(AssertionError):
    """A decoder broke one of the fuzzing properties (see the module docstring)."""


class _Hang(BaseException):
    """Raised by the CPU timer; a BaseException so a decoder's ``except Exception`` cannot
    swallow it."""


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    errors: tuple[type[BaseException], ...]  # what a rejection may raise
    seeds: Callable[[], list[bytes]]  # valid inputs to start mutating from
    alloc_per_byte: int = 200
    alloc_slack: int = MSGPACK_NESTING_CEILING
    clear: Callable[[BaseException], bool] = field(default=lambda exc: _clear_text(str(exc)))


_BARE_NAME = re.compile(r"^[A-Za-z_]*(Error|Exception)?$")


def _clear_text(text: str) -> bool:
    """A message that says something: not empty, not just an exception's name."""
    return bool(text.strip()) and not _BARE_NAME.match(text.strip())


# --------------------------------------------------------------------------- the harness


@contextlib.contextmanager
def cpu_time_box(seconds: float) -> Iterator[None]:
    """Raise inside the block once it has used ``seconds`` of CPU (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expired(signum: int, frame: Any) -> None:
        raise _Hang()

    previous = signal.signal(signal.SIGPROF, expired)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


def check(
    target: Target, data: bytes, *, cpu_seconds: float = CPU_SECONDS, memory: bool = True
) -> BaseException | None:
    """Run ``target`` on ``data``; return the rejection (or None), raise PropertyViolation."""
    tracing = memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    rejection: BaseException | None = None
    try:
        with cpu_time_box(cpu_seconds):
            target.run(data)
    except _Hang:
        raise PropertyViolation(
            f"{target.name}: still running after {cpu_seconds}s of CPU on {_show(data)}"
        ) from None
    except target.errors as exc:
        rejection = exc
    except Exception as exc:
        raise PropertyViolation(
            f"{target.name}: crashed with {type(exc).__name__}: {exc} on {_show(data)}"
        ) from exc
    finally:
        peak = 0
        if tracing:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    limit = target.alloc_per_byte * len(data) + target.alloc_slack
    if peak > limit:
        raise PropertyViolation(
            f"{target.name}: allocated {peak} bytes (limit {limit}) for {_show(data)}"
        )
    if rejection is not None and not target.clear(rejection):
        raise PropertyViolation(
            f"{target.name}: unclear rejection {type(rejection).__name__}({rejection!s}) "
            f"on {_show(data)}"
        )
    return rejection


def _show(data: bytes) -> str:
    head = data[:48].hex()
    return f"{len(data)} bytes {head}{'...' if len(data) > 48 else ''}"


# --------------------------------------------------------------------------- recipes


class Recipe:
    """Reads a fuzz input as a sequence of small decisions (like atheris's data provider,
    but also usable from hypothesis); runs out gracefully (zeros)."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        self._pos += 1
        return self._data[self._pos - 1]

    def int(self, bound: int) -> int:
        """0 <= n < bound."""
        if bound <= 1:
            return 0
        value = 0
        for _ in range(max(1, (bound.bit_length() + 7) // 8)):
            value = value << 8 | self.byte()
        return value % bound

    def take(self, n: int) -> bytes:
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def rest(self) -> bytes:
        return self.take(len(self._data))


def mutate(buf: bytes, recipe: Recipe, rounds: int | None = None) -> bytes:
    """A few byte-level edits of ``buf`` chosen by ``recipe``."""
    out = bytearray(buf)
    for _ in range(rounds if rounds is not None else 1 + recipe.int(4)):
        op = recipe.int(6)
        pos = recipe.int(len(out) + 1)
        if op == 0 and out:
            out[min(pos, len(out) - 1)] ^= 1 << recipe.int(8)
        elif op == 1 and out:
            out[min(pos, len(out) - 1)] = recipe.byte()
        elif op == 2:
            out[pos:pos] = recipe.take(1 + recipe.int(8))
        elif op == 3:
            del out[pos : pos + 1 + recipe.int(16)]
        elif op == 4:
            del out[pos:]
        else:  # an interesting value: a msgpack marker claiming a huge length
            out[pos:pos] = bytes([0xDD, 0xFF, 0xFF, 0xFF, 0xFF][: 1 + recipe.int(5)])
    return bytes(out)


_EDGE_INTS = (0, 1, -1, 255, 65535, 65536, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63))
_EDGE_FLOATS = (0.0, -0.0, 1.5, float("inf"), float("-inf"), float("nan"), 1e308)
_EDGE_TEXT = ("", ".", "..", "a/b", "/abs", "x\x00y", "\udcff", "a" * 300, "voters", "9", "\\")


def junk_value(recipe: Recipe, depth: int = 0) -> Any:
    """A msgpack-able value of any type, favouring the edges decoders get wrong."""
    choice = recipe.int(12 if depth < 3 else 9)
    if choice == 0:
        return None
    if choice == 1:
        return bool(recipe.int(2))
    if choice == 2:
        return _EDGE_INTS[recipe.int(len(_EDGE_INTS))]
    if choice == 3:
        return recipe.int(1 << 16) - 100
    if choice == 4:
        return _EDGE_FLOATS[recipe.int(len(_EDGE_FLOATS))]
    if choice == 5:
        return _EDGE_TEXT[recipe.int(len(_EDGE_TEXT))]
    if choice == 6:
        return recipe.take(recipe.int(12)).decode("utf-8", "replace")
    if choice == 7:
        return recipe.take(recipe.int(12))
    if choice == 8:
        return msgpack.ExtType(recipe.int(128), recipe.take(recipe.int(4)))
    if choice in (9, 10):
        return [junk_value(recipe, depth + 1) for _ in range(recipe.int(4))]
    keys: list[Any] = ["voters", "learners", "outgoing", "index", "v", b"voters", "x", "", 7]
    return {
        keys[recipe.int(len(keys))]: junk_value(recipe, depth + 1) for _ in range(recipe.int(4))
    }


def perturb(value: Any, recipe: Recipe, depth: int = 0) -> Any:
    """``value`` with one spot somewhere inside replaced, removed or added to."""
    descend = recipe.int(3) != 0 and depth < 6
    if type(value) is list and value and descend:
        i = recipe.int(len(value))
        action = recipe.int(8)
        if action == 0:
            return value[:i] + value[i + 1 :]
        if action == 1:
            return value[:i] + [junk_value(recipe)] + value[i:]
        return value[:i] + [perturb(value[i], recipe, depth + 1)] + value[i + 1 :]
    if type(value) is dict and value and descend:
        keys = list(value)
        key = keys[recipe.int(len(keys))]
        out = dict(value)
        action = recipe.int(8)
        if action == 0:
            del out[key]
        elif action == 1:
            out[_key_junk(recipe) if recipe.int(2) else "extra"] = junk_value(recipe)
        else:
            out[key] = perturb(value[key], recipe, depth + 1)
        return out
    return junk_value(recipe)


def _key_junk(recipe: Recipe) -> Any:
    """A junk map key (any hashable msgpack value: containers cannot be Python dict keys)."""
    key = junk_value(recipe, depth=3)
    return key if not isinstance(key, list | dict | msgpack.ExtType) else "junk"


def damage(value: Any, recipe: Recipe) -> bytes:
    """``value`` packed, then damaged: either its structure (types, fields) or its bytes."""
    if recipe.int(2):
        return mutate(msgpack.packb(value, use_bin_type=True), recipe)
    for _ in range(1 + recipe.int(3)):
        value = perturb(value, recipe)
    return _pack_junk(value)


def _pack_junk(value: Any) -> bytes:
    """Pack a perturbed structure; unhashable or unpackable junk is replaced by nil."""
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return msgpack.packb(None)


# --------------------------------------------------------------------------- wire codec


def sample_messages() -> list[Any]:
    """One message of every wire type, with non-trivial fields."""
    config = Configuration.of([SENDER, ME], learners=["10.0.0.3:7003"])
    meta = SnapshotMeta(10, 3, config)
    entries = (
        Entry(5, 2, EntryKind.NORMAL, b"data"),
        Entry(6, 2, EntryKind.NOOP, b""),
        Entry(7, 3, EntryKind.CONFIG, config),
    )
    return [
        AppendEntries(3, SENDER, ME, 4, 2, entries, 5),
        AppendResponse(3, SENDER, ME, True, 7, 0, 0),
        RequestVote(4, SENDER, ME, 7, 3, True, False),
        VoteResponse(4, SENDER, ME, True, True),
        Heartbeat(3, SENDER, ME, 5, 9),
        HeartbeatResponse(3, SENDER, ME, 9),
        InstallSnapshot(3, SENDER, ME, meta),
        TimeoutNow(3, SENDER, ME),
        ReadIndexRequest(3, SENDER, ME, 17),
        ReadIndexResponse(3, SENDER, ME, "ctx", 7, True),
        SnapshotOffer(3, SENDER, ME, meta),
        SnapshotReady(3, SENDER, ME, 10, "10.0.0.1", 9000),
        ClientRequest(1, "write", {"op": "put", "key": "k", "value": [1, 2.5]}, "c1", 3, 2, 500),
        ClientReply(1, False, None, "overloaded", SENDER),
    ]


def codec_seeds() -> list[bytes]:
    messages = sample_messages()
    frames = [encode(m, cluster_id=CLUSTER, sender=SENDER) for m in messages]
    frames.append(encode_batch(messages, cluster_id=CLUSTER, sender=SENDER))
    return frames


_FRAME_REASON = re.compile(r"^[a-z][a-z-]*(:[A-Za-z_.]+)?$")


def _run_codec(data: bytes) -> None:
    try:
        decode(data, cluster_id=CLUSTER, max_frame_bytes=MAX_FRAME)
    except FrameError as exc:
        if not _FRAME_REASON.match(exc.reason):
            raise PropertyViolation(f"codec: reason {exc.reason!r} is not a stable code") from exc
    decode_batch(data, cluster_id=CLUSTER, max_frame_bytes=MAX_FRAME)


def _frame_clear(exc: BaseException) -> bool:
    return isinstance(exc, FrameError) and bool(_FRAME_REASON.match(exc.reason))


CODEC = Target("codec", _run_codec, (FrameError,), codec_seeds, clear=_frame_clear)


def _run_codec_mutated(data: bytes) -> None:
    recipe = Recipe(data)
    seeds = codec_seeds()
    _run_codec(mutate(seeds[recipe.int(len(seeds))], recipe))


CODEC_MUTATED = Target(
    "codec-mutated", _run_codec_mutated, (FrameError,), lambda: [b""], clear=_frame_clear
)


def _run_codec_fields(data: bytes) -> None:
    """A valid frame's structure with one field anywhere replaced by a value of any type."""
    recipe = Recipe(data)
    seeds = codec_seeds()
    frame = msgpack.unpackb(seeds[recipe.int(len(seeds))], raw=False)
    for _ in range(1 + recipe.int(3)):
        frame = perturb(frame, recipe)
    _run_codec(_pack_junk(frame))


CODEC_FIELDS = Target(
    "codec-fields", _run_codec_fields, (FrameError,), lambda: [b""], clear=_frame_clear
)


# --------------------------------------------------------------------------- snapshot stream


@dataclass
class _StreamRig:
    receiver: stream.SnapshotReceiver
    dest: Path
    root: Path


_rig: _StreamRig | None = None


def _stream_rig() -> _StreamRig:
    """One receiver for the whole process (building one per input would dominate the run)."""
    global _rig
    if _rig is None:
        root = Path(tempfile.mkdtemp(prefix="zraft-fuzz-stream-"))
        dest = root / "dest"
        dest.mkdir()
        receiver = stream.SnapshotReceiver(
            cluster_id=CLUSTER,
            on_complete=lambda index, path: None,
            on_failed=lambda index, reason: None,
            idle_timeout=2.0,
            max_file_bytes=1 << 20,
        )
        _rig = _StreamRig(receiver, dest, root)
    return _rig


def _control(obj: Any) -> bytes:
    data = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(data)) + data


def stream_seeds() -> list[bytes]:
    body = b"snapshot bytes"
    header = {
        "v": stream.STREAM_VERSION,
        "cluster": CLUSTER,
        "sender": SENDER,
        "index": 7,
        "files": [["data", len(body), zlib.crc32(body)]],
    }
    complete = _control(header) + _control(["data", len(body)]) + body
    return [complete, _control(header), _control(header)[:9]]


def _run_stream(data: bytes) -> None:
    """Feed ``data`` to the receiver's per-connection code as one sender's whole stream.

    The receiver handles every failure itself (logs, counts, answers, cleans up): nothing
    may escape it, and no partial file may be left behind.
    """
    rig = _stream_rig()
    rig.receiver.expect(7, rig.dest)
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.settimeout(2.0)
        writer = threading.Thread(target=_write_and_close, args=(ours, data), daemon=True)
        writer.start()
        rig.receiver._receive(theirs)
        with contextlib.suppress(OSError):
            theirs.shutdown(socket.SHUT_RDWR)  # the writer stops draining
        writer.join(5)
    leftovers = [p.name for p in rig.dest.iterdir() if p.name.startswith(".zraft-partial-")]
    if leftovers:
        raise PropertyViolation(f"snapshot stream left partial files {leftovers}")
    for path in rig.dest.iterdir():  # a successful transfer: start the next input clean
        path.unlink()


def _write_and_close(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(4096):  # drain the receiver's answers until it hangs up
            pass


def _run_stream_control(data: bytes) -> None:
    """The control-message framing alone: length prefix, limit, msgpack with limits."""
    ours, theirs = socket.socketpair()
    with ours, theirs:
        theirs.settimeout(2.0)
        ours.sendall(data[: 1 << 16])
        ours.shutdown(socket.SHUT_WR)
        header = stream._recv_msg(theirs)
    _stream_rig().receiver._check_header(header)


def _run_stream_header(data: bytes) -> None:
    """A valid header with damaged fields, then (if accepted) a damaged file announcement."""
    recipe = Recipe(data)
    complete = stream_seeds()[0]
    header = msgpack.unpackb(complete[4 : 4 + struct.unpack(">I", complete[:4])[0]], raw=False)
    body = damage(header, recipe)
    announce = damage(["data", 14], recipe)
    _run_stream(
        struct.pack(">I", len(body))
        + body
        + struct.pack(">I", len(announce))
        + announce
        + recipe.rest()
    )


def _fail_clear(exc: BaseException) -> bool:
    return isinstance(exc, stream._Fail) and bool(re.match(r"^[a-z-]+$", exc.reason))


STREAM = Target("snapshot-stream", _run_stream, (), stream_seeds)
STREAM_HEADER = Target("snapshot-stream-header", _run_stream_header, (), lambda: [b""])
STREAM_CONTROL = Target(
    "snapshot-stream-control", _run_stream_control, (stream._Fail,), stream_seeds,
    clear=_fail_clear,
)  # fmt: skip


# --------------------------------------------------------------------------- log records


def record_seeds() -> list[bytes]:
    config = Configuration.of(["a:1", "b:2"], learners=["c:3"])
    data, _ = encode_records(
        [
            Entry(1, 1, EntryKind.NORMAL, b"hello"),
            Entry(2, 1, EntryKind.NOOP, b""),
            Entry(3, 2, EntryKind.CONFIG, config),
            Entry(4, 2, EntryKind.NORMAL, bytes(300)),
        ]
    )
    return [data]


def _run_records(data: bytes) -> None:
    offset = 0
    while offset < len(data):
        scan_record(data, offset)
        _, offset = decode_record(data, offset)


def _reseal(record: bytearray) -> bytes:
    """Recompute a record's length and CRC so the mutated payload gets decoded."""
    if len(record) < HEADER_SIZE:
        return bytes(record)
    struct.pack_into("<I", record, 4, len(record) - HEADER_SIZE)
    struct.pack_into("<I", record, 0, zlib.crc32(memoryview(record)[4:]))
    return bytes(record)


def _run_records_resealed(data: bytes) -> None:
    """Mutate a record, then fix its checksum: the payload decoder sees garbage."""
    recipe = Recipe(data)
    kind = recipe.int(3)
    payload = damage(_record_payload(kind), recipe)
    header = struct.pack("<IIQQBI", 0, 0, 1 + recipe.int(1 << 16), recipe.int(9), kind, 0)
    _run_records(_reseal(bytearray(header + payload)))


def _record_payload(kind: int) -> Any:
    if kind == int(EntryKind.CONFIG):
        return {"voters": ["a:1", "b:2"], "outgoing": [], "learners": ["c:3"]}
    return b"payload"


RECORDS = Target("records", _run_records, (RecordError,), record_seeds)
RECORDS_RESEALED = Target("records-resealed", _run_records_resealed, (RecordError,), lambda: [b""])


# --------------------------------------------------------------------------- log segments


def _run_segments(data: bytes) -> None:
    """Build a real log, damage its files as the recipe says, reopen it, read it all."""
    recipe = Recipe(data)
    with tempfile.TemporaryDirectory(prefix="zraft-fuzz-log-") as tmp:
        with SegmentedLog(tmp, max_segment_size=400, cache_entries=0, fsync=False) as log:
            index = 0
            for _ in range(1 + recipe.int(6)):
                batch = [
                    Entry(index + i + 1, 1 + recipe.int(3), EntryKind.NORMAL, bytes(recipe.int(90)))
                    for i in range(1 + recipe.int(4))
                ]
                log.append(batch)
                index += len(batch)
            if recipe.int(4) == 0 and index > 2:
                log.compact(index // 2, log.term(index // 2) or 0)
        names = sorted(os.listdir(tmp))
        for _ in range(1 + recipe.int(3)):
            name = names[recipe.int(len(names))]
            path = os.path.join(tmp, name)
            if name == "LOCK":
                continue
            action = recipe.int(8)
            if action == 0:
                os.unlink(path)
                names.remove(name)
                if not names:
                    break
            elif action == 1:  # a stray or renamed file
                os.rename(path, os.path.join(tmp, _segment_name(recipe)))
                names = sorted(os.listdir(tmp))
            else:
                with open(path, "rb") as f:
                    content = f.read()
                with open(path, "wb") as f:
                    f.write(mutate(content, recipe))
        with SegmentedLog(tmp, max_segment_size=400, cache_entries=0, fsync=False) as log:
            log.entries(log.first_index, log.last_index + 1)
            log.append([Entry(log.last_index + 1, log.last_term, EntryKind.NORMAL, b"after")])


def _segment_name(recipe: Recipe) -> str:
    first = recipe.int(40)
    last = first + recipe.int(40) - 10
    if recipe.int(2):
        return f"{first:020d}.open"
    return f"{first:020d}-{max(last, 0):020d}.seg"


SEGMENTS = Target("segments", _run_segments, (StorageError,), lambda: [bytes(64)])


# --------------------------------------------------------------------------- hard state


def hard_state_seeds() -> list[bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        f = HardStateFile(tmp, fsync=False)
        f.load()
        f.save(HardState(5, "a:1", 3), Configuration.of(["a:1", "b:2"]))
        with open(f.paths[1], "rb") as copy:
            return [copy.read()]


def _run_hard_state(data: bytes) -> None:
    """Both copies hold the input: load must recover or raise CorruptHardStateError."""
    with tempfile.TemporaryDirectory(prefix="zraft-fuzz-hs-") as tmp:
        for name in ("hardstate.0", "hardstate.1"):
            with open(os.path.join(tmp, name), "wb") as f:
                f.write(data)
        HardStateFile(tmp, fsync=False).load()


def _run_hard_state_resealed(data: bytes) -> None:
    recipe = Recipe(data)
    payload = damage({"term": 5, "vote": "a:1", "commit": 3, "config": {"voters": ["a:1"]}}, recipe)
    version = recipe.int(1 << 16)
    checked = struct.pack("<QI", version, len(payload)) + payload
    _run_hard_state(
        struct.pack("<4sIQI", b"ZRHS", zlib.crc32(checked), version, len(payload)) + payload
    )


HARD_STATE = Target("hard-state", _run_hard_state, (StorageError,), hard_state_seeds)
HARD_STATE_RESEALED = Target(
    "hard-state-resealed", _run_hard_state_resealed, (StorageError,), lambda: [b""]
)


# --------------------------------------------------------------------------- snapshot meta


def _meta_payload() -> dict[str, Any]:
    return {
        "index": 9,
        "term": 2,
        "config": {"voters": ["a:1", "b:2"], "outgoing": [], "learners": []},
        "extra": {"sessions": []},
        "files": {"data": [4, zlib.crc32(b"abcd")]},
    }


def _write_snapshot_dir(root: str, meta_bytes: bytes) -> str:
    path = os.path.join(root, f"snap-{9:020d}-{2:020d}")
    os.makedirs(path)
    with open(os.path.join(path, "meta"), "wb") as f:
        f.write(meta_bytes)
    with open(os.path.join(path, "data"), "wb") as f:
        f.write(b"abcd")
    return path


def meta_seeds() -> list[bytes]:
    payload = msgpack.packb(_meta_payload())
    return [struct.pack("<4sII", b"ZRSM", zlib.crc32(payload), len(payload)) + payload]


def _run_meta(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="zraft-fuzz-meta-") as tmp:
        _write_snapshot_dir(tmp, data)
        store = SnapshotStore(tmp, fsync=False)
        found = store.latest()
        if found is not None:
            store.verify(found[1])


def _run_meta_resealed(data: bytes) -> None:
    recipe = Recipe(data)
    payload = damage(_meta_payload(), recipe)
    _run_meta(struct.pack("<4sII", b"ZRSM", zlib.crc32(payload), len(payload)) + payload)


META = Target("snapshot-meta", _run_meta, (StorageError,), meta_seeds)
META_RESEALED = Target("snapshot-meta-resealed", _run_meta_resealed, (StorageError,), lambda: [b""])


# --------------------------------------------------------------------------- kv snapshot


def _kv_file(body: bytes) -> bytes:
    return struct.pack("<4sHHIQ", b"ZRKV", 1, 0, zlib.crc32(body), len(body)) + body


def _kv_items() -> list[Any]:
    return [["a", msgpack.packb(1), None], ["b", msgpack.packb([1, "x"]), "session-1"]]


def _kv_body() -> bytes:
    packer = msgpack.Packer(use_bin_type=True)
    items = _kv_items()
    return packer.pack(len(items)) + b"".join(packer.pack(item) for item in items)


def kv_seeds() -> list[bytes]:
    return [_kv_file(_kv_body())]


def _run_kv(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="zraft-fuzz-kv-") as tmp:
        with open(os.path.join(tmp, SNAPSHOT_FILE), "wb") as f:
            f.write(data)
        KeyValueBackend().install(Path(tmp))


def _run_kv_resealed(data: bytes) -> None:
    recipe = Recipe(data)
    if recipe.int(2):
        body = mutate(_kv_body(), recipe)
    else:  # a well-formed stream of damaged objects
        objects: list[Any] = [2, *_kv_items()]
        for _ in range(1 + recipe.int(3)):
            objects = perturb(objects, recipe)
        if type(objects) is not list:
            objects = [objects]
        body = b"".join(_pack_junk(obj) for obj in objects)
    _run_kv(_kv_file(body))


KV = Target("kv-snapshot", _run_kv, (InvalidSnapshot,), kv_seeds)
KV_RESEALED = Target("kv-snapshot-resealed", _run_kv_resealed, (InvalidSnapshot,), lambda: [b""])


# --------------------------------------------------------------------------- settings

_SETTING_KEYS = list(Settings.KEYS)


def toml_seeds() -> list[bytes]:
    return [
        b'cluster_id = "prod"\npeer_id = "10.0.0.1:7000"\npeers = ["10.0.0.1:7000"]\n'
        b"election_timeout = 1000\nfsync = true\n",
        b'routes = ["a:1=b:2"]\nmax_frame_bytes = 2000000\n',
    ]


def _run_toml(data: bytes) -> None:
    with tempfile.TemporaryDirectory(prefix="zraft-fuzz-toml-") as tmp:
        path = os.path.join(tmp, "zraft.toml")
        with open(path, "wb") as f:
            f.write(data)
        Settings.load(path)


def _run_toml_lines(data: bytes) -> None:
    """Known keys with fuzzed values, so the value checks (not just the parser) are hit."""
    recipe = Recipe(data)
    lines = []
    for _ in range(1 + recipe.int(4)):
        key = _SETTING_KEYS[recipe.int(len(_SETTING_KEYS))]
        value = recipe.take(recipe.int(24)).decode("utf-8", "replace")
        lines.append(f"{key} = {value}")
    _run_toml("\n".join(lines).encode())


_parser: argparse.ArgumentParser | None = None


def _run_flags(data: bytes) -> None:
    """Flags reach ``Settings`` as strings; any string for any key must be judged clearly."""
    global _parser
    if _parser is None:
        _parser = argparse.ArgumentParser(exit_on_error=False)
        add_arguments(_parser)
    recipe = Recipe(data)
    namespace = argparse.Namespace()
    for _ in range(1 + recipe.int(4)):
        key = _SETTING_KEYS[recipe.int(len(_SETTING_KEYS))]
        text = recipe.take(recipe.int(32)).decode("utf-8", "replace")
        setattr(namespace, f"zraft_{key}", text)
    Settings.from_args(namespace)


def _settings_clear(exc: BaseException) -> bool:
    return isinstance(exc, SettingsError) and bool(exc.key) and _clear_text(exc.problem)


SETTINGS_TOML = Target(
    "settings-toml", _run_toml, (SettingsError,), toml_seeds, clear=_settings_clear
)
SETTINGS_TOML_LINES = Target(
    "settings-toml-lines", _run_toml_lines, (SettingsError,), lambda: [b""], clear=_settings_clear
)
SETTINGS_FLAGS = Target(
    "settings-flags", _run_flags, (SettingsError,), lambda: [b""], clear=_settings_clear
)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        CODEC, CODEC_MUTATED, CODEC_FIELDS, STREAM, STREAM_HEADER, STREAM_CONTROL, RECORDS,
        RECORDS_RESEALED, SEGMENTS, HARD_STATE, HARD_STATE_RESEALED, META, META_RESEALED, KV,
        KV_RESEALED, SETTINGS_TOML, SETTINGS_TOML_LINES, SETTINGS_FLAGS,
    )
}  # fmt: skip


def cleanup() -> None:
    """Close the shared snapshot receiver (tests call this when done)."""
    global _rig
    if _rig is not None:
        _rig.receiver.close()
        shutil.rmtree(_rig.root, ignore_errors=True)
        _rig = None

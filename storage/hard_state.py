"""Durable hard state: current term, vote, commit index and the latest configuration.

Design choice: two alternating files (``hardstate.0`` / ``hardstate.1``), each a single
checksummed record carrying a version counter, instead of tmp-file + rename.

* A save is one ``pwrite`` + one ``fdatasync`` of a file that already exists; tmp + rename
  needs a file sync, a rename and a directory sync (a journal commit) every time, and the
  hard state is saved on every term change, vote and (if the driver wants) commit advance.
* A save overwrites only the copy that does *not* hold the newest state, so a write torn
  by a crash damages at most the copy being written; the other copy still holds the
  previous state, and the previous state is exactly what was last acknowledged.
* Load reads both copies and takes the valid one with the higher version.

Both files are created once, atomically (tmp + fsync + rename + directory fsync), the first
time the directory is used, so afterwards "a copy is missing or damaged" is never the
normal state of a fresh directory. Both copies damaged raises ``CorruptHardStateError``.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from typing import Any

import msgpack

from zraft.core.types import Configuration, HardState

from .errors import CorruptHardStateError, translate_os_error
from .syncs import fsync_dir

log = logging.getLogger(__name__)

_NAMES = ("hardstate.0", "hardstate.1")
_HEADER = struct.Struct("<4sIQI")  # magic, crc32 (over version, length, payload), version, length
_MAGIC = b"ZRHS"
_MAX_PAYLOAD = 1 << 20


def _encode(version: int, hard_state: HardState, config: Configuration | None) -> bytes:
    payload = msgpack.packb(
        {
            "term": hard_state.term,
            "vote": hard_state.vote,
            "commit": hard_state.commit,
            "config": None if config is None else config.to_wire(),
        }
    )
    if len(payload) > _MAX_PAYLOAD:
        raise ValueError(f"hard state of {len(payload)} bytes is too large")
    checked = struct.pack("<QI", version, len(payload)) + payload
    return _HEADER.pack(_MAGIC, zlib.crc32(checked), version, len(payload)) + payload


def _decode(data: bytes) -> tuple[int, HardState, Configuration | None]:
    """Parse one copy; raises ValueError describing what is wrong."""
    if len(data) < _HEADER.size:
        raise ValueError(f"only {len(data)} bytes")
    magic, crc, version, length = _HEADER.unpack_from(data)
    if magic != _MAGIC:
        raise ValueError("bad magic")
    if length > _MAX_PAYLOAD or _HEADER.size + length != len(data):
        raise ValueError(f"length field {length} does not match file size {len(data)}")
    payload = data[_HEADER.size :]
    if zlib.crc32(struct.pack("<QI", version, length) + payload) != crc:
        raise ValueError("checksum mismatch")
    try:
        raw: Any = msgpack.unpackb(payload, raw=False)
        term, vote, commit = raw["term"], raw["vote"], raw["commit"]
        config = None if raw["config"] is None else Configuration.from_wire(raw["config"])
    except Exception as exc:  # a checksummed payload we cannot parse: a bug or foreign file
        raise ValueError(f"unreadable payload: {exc}") from None
    # Exact types: a bool is an int to isinstance, and True is no term.
    if type(term) is not int or type(commit) is not int or term < 0 or commit < 0:
        raise ValueError("term and commit must be non-negative integers")
    if vote is not None and (type(vote) is not str or not vote):
        raise ValueError("vote must be a peer id or nil")
    return version, HardState(term, vote, commit), config


class HardStateFile:
    """The hard state of one peer, kept durably in ``directory``.

    ``save`` returns only once the new state is on disk. Not thread-safe.
    """

    def __init__(self, directory: str | os.PathLike[str], fsync: bool = True) -> None:
        self._dir = os.fspath(directory)
        self._fsync = fsync
        self._paths = tuple(os.path.join(self._dir, name) for name in _NAMES)
        self._version = 0  # version of the newest valid copy
        self._newest = 1  # which copy holds it; the next save writes the other one
        self._loaded = False

    @property
    def paths(self) -> tuple[str, ...]:
        return self._paths

    def load(self) -> tuple[HardState, Configuration | None]:
        """The last saved state; (HardState(), None) for a fresh directory."""
        best: tuple[int, int, HardState, Configuration | None] | None = None
        problems: list[str] = []
        present = 0
        for slot, path in enumerate(self._paths):
            try:
                with open(path, "rb") as f:
                    data = f.read(_HEADER.size + _MAX_PAYLOAD + 1)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise translate_os_error(exc, path, "read") from exc
            present += 1
            try:
                version, state, config = _decode(data)
            except ValueError as exc:
                problems.append(f"{path}: {exc}")
                log.warning("hard state copy %s is damaged (%s); using the other copy", path, exc)
                continue
            if best is None or version > best[0]:
                best = (version, slot, state, config)
        if best is None:
            if present:
                raise CorruptHardStateError(
                    "no intact copy of the hard state: " + "; ".join(problems)
                )
            self._create_missing()
            self._version, self._newest, self._loaded = 0, 1, True
            return HardState(), None
        if present < len(self._paths):  # a crash interrupted the very first load
            self._create_missing()
        self._version, self._newest = best[0], best[1]
        self._loaded = True
        return best[2], best[3]

    def save(self, hard_state: HardState, config: Configuration | None = None) -> None:
        """Durably replace the hard state (and the configuration stored with it)."""
        if not self._loaded:
            self.load()
        version = self._version + 1
        data = _encode(version, hard_state, config)
        slot = 1 - self._newest
        path = self._paths[slot]
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                view = memoryview(data)
                offset = 0
                while offset < len(data):
                    offset += os.pwrite(fd, view[offset:], offset)
                os.ftruncate(fd, len(data))
                if self._fsync:
                    os.fdatasync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            # The copy being written may be damaged now; the other still holds the last
            # saved state and the next save writes this copy again.
            raise translate_os_error(exc, path, "save hard state to") from exc
        self._version, self._newest = version, slot

    def _create_missing(self) -> None:
        """Create absent copies (version 0, default state), each atomically."""
        try:
            os.makedirs(self._dir, exist_ok=True)
            for path in self._paths:
                if os.path.exists(path):
                    continue
                tmp = path + ".tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
                try:
                    os.write(fd, _encode(0, HardState(), None))
                    if self._fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(tmp, path)
            if self._fsync:
                fsync_dir(self._dir)
        except OSError as exc:
            raise translate_os_error(exc, self._dir, "create hard state files in") from exc

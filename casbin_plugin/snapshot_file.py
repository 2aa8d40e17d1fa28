"""A checked snapshot file: a 20-byte header, then a msgpack stream of objects.

Header (little-endian): magic (4 bytes), format version u16, reserved u16, CRC32 of the
body u32, body length u64. The file is written to ``NAME.tmp``, fsynced and renamed, and
the directory fsynced; reading checks magic, version, length and checksum before any
object is decoded.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Collection, Iterable
from pathlib import Path
from typing import Any

import msgpack

from zraft.backends.base import InvalidSnapshot
from zraft.storage.syncs import fsync_dir

_HEADER = struct.Struct("<4sHHIQ")


def write_objects(path: Path, magic: bytes, version: int, objects: Iterable[Any]) -> int:
    """Write ``objects`` as a checked file at ``path``; returns the body length."""
    tmp = path.with_name(path.name + ".tmp")
    packer = msgpack.Packer(use_bin_type=True)
    crc = 0
    length = 0
    with open(tmp, "wb") as f:
        f.write(b"\0" * _HEADER.size)
        for obj in objects:
            chunk = packer.pack(obj)
            f.write(chunk)
            crc = zlib.crc32(chunk, crc)
            length += len(chunk)
        f.seek(0)
        f.write(_HEADER.pack(magic, version, 0, crc, length))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return length


def read_objects(
    path: Path, magic: bytes, versions: Collection[int]
) -> tuple[int, list[Any]]:
    """The format version and every object of a checked file (one of ``versions``);
    InvalidSnapshot if anything is wrong with it."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InvalidSnapshot(path, "the file is missing") from None
    if len(data) < _HEADER.size:
        raise InvalidSnapshot(path, f"too short for a header ({len(data)} bytes)")
    found, found_version, _reserved, crc, length = _HEADER.unpack_from(data)
    if found != magic:
        raise InvalidSnapshot(path, f"wrong magic {found!r} (expected {magic!r})")
    if found_version not in versions:
        raise InvalidSnapshot(path, f"unsupported format version {found_version}")
    body = memoryview(data)[_HEADER.size :]
    if len(body) != length:
        raise InvalidSnapshot(path, f"body is {len(body)} bytes, the header says {length}")
    if zlib.crc32(body) != crc:
        raise InvalidSnapshot(path, "checksum mismatch (the file is damaged)")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=max(length, 1))
    unpacker.feed(body)
    try:
        return found_version, list(unpacker)
    except Exception as exc:  # msgpack raises several unrelated types
        raise InvalidSnapshot(path, f"undecodable body: {type(exc).__name__}") from None

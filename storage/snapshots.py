"""Snapshot directories: creation, discovery, retention and installation from a leader.

A snapshot is a directory ``snap-<index>-<term>`` holding the backend's data files (written
by a callback) and a ``meta`` file: a checksummed msgpack record with the index, term,
configuration, an opaque ``extra`` dict (session tables, ...) and the size and CRC32 of every
data file, so a snapshot received over the network can be checked before it is trusted.

Snapshots are built in a ``tmp-*`` directory, every file and directory is fsynced, and the
directory is renamed into place; only then is the previous snapshot removed (or moved to
``backups/``). A crash therefore leaves either the old or the new snapshot complete, plus
perhaps a temp directory that is cleaned up later.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
import struct
import tempfile
import zlib
from collections.abc import Callable
from typing import Any

import msgpack

from zraft.core.types import Configuration, SnapshotMeta

from .errors import CorruptSnapshotError, translate_os_error
from .syncs import fsync_dir

log = logging.getLogger(__name__)

META_NAME = "meta"
BACKUP_DIR = "backups"
_SNAP_RE = re.compile(r"^snap-(\d{20})-(\d{20})$")
_TMP_PREFIX = "tmp-"
_META_HEADER = struct.Struct("<4sII")  # magic, crc32 of payload, payload length
_META_MAGIC = b"ZRSM"
_MAX_META = 64 * 1024 * 1024
_CHUNK = 1 << 20

Latest = tuple[SnapshotMeta, str, dict[str, Any]]


def snapshot_dir_name(index: int, term: int) -> str:
    return f"snap-{index:020d}-{term:020d}"


def _snap_key(name: str) -> tuple[int, int]:
    match = _SNAP_RE.match(name)
    assert match is not None
    return int(match[1]), int(match[2])


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_crc(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Size and CRC32 of a file (also what the snapshot stream checks on arrival)."""
    crc = 0
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
            size += len(chunk)
    return size, crc


def data_files(root: str) -> list[str]:
    """Relative POSIX paths of every regular file under ``root`` except the meta file."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
            if rel != META_NAME:
                found.append(rel)
    return found


def encode_meta(meta: SnapshotMeta, extra: dict[str, Any], files: dict[str, list[int]]) -> bytes:
    payload = msgpack.packb(
        {
            "index": meta.index,
            "term": meta.term,
            "config": meta.config.to_wire(),
            "extra": extra,
            "files": files,
        }
    )
    return _META_HEADER.pack(_META_MAGIC, zlib.crc32(payload), len(payload)) + payload


def read_meta(snapshot_dir: str) -> tuple[SnapshotMeta, dict[str, Any], dict[str, list[int]]]:
    """Parse and validate a snapshot's meta file: (meta, extra, {file: [size, crc32]})."""
    path = os.path.join(snapshot_dir, META_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read(_META_HEADER.size + _MAX_META + 1)
    except FileNotFoundError:
        raise CorruptSnapshotError(f"snapshot {snapshot_dir} has no meta file") from None
    except OSError as exc:
        raise translate_os_error(exc, path, "read") from exc
    if len(data) < _META_HEADER.size:
        raise CorruptSnapshotError(f"snapshot meta {path} is truncated ({len(data)} bytes)")
    magic, crc, length = _META_HEADER.unpack_from(data)
    payload = data[_META_HEADER.size :]
    if magic != _META_MAGIC or length != len(payload) or zlib.crc32(payload) != crc:
        raise CorruptSnapshotError(f"snapshot meta {path} fails its magic, length or checksum")
    try:
        raw = msgpack.unpackb(payload, raw=False)
        if type(raw) is not dict:
            raise ValueError(f"the record is a {type(raw).__name__}, not a map")
        index, term = raw["index"], raw["term"]
        # Exact ints only: int() would take floats (inf raises OverflowError), strings, bools.
        if type(index) is not int or type(term) is not int or index < 0 or term < 0:
            raise ValueError(f"index {index!r} and term {term!r} must be non-negative ints")
        meta = SnapshotMeta(index, term, Configuration.from_wire(raw["config"]))
        extra = raw["extra"]
        files = raw["files"]
        if not isinstance(extra, dict) or not isinstance(files, dict):
            raise ValueError("extra and files must be mappings")
        for name, value in files.items():
            if not _valid_data_name(name):
                raise ValueError(f"bad data file name {name!r:.80}")
            if not (
                type(value) is list
                and len(value) == 2
                and all(type(v) is int for v in value)
                and value[0] >= 0
                and 0 <= value[1] < 1 << 32
            ):
                raise ValueError(f"bad size/crc entry for {name!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptSnapshotError(f"snapshot meta {path} is malformed: {exc}") from None
    return meta, extra, files


def _valid_data_name(name: object) -> bool:
    """A relative POSIX path of plain names: what ``_data_files`` produces, nothing else."""
    if type(name) is not str or name == META_NAME or "\x00" in name or len(name) > 4096:
        return False
    parts = name.split("/")
    try:
        return all(
            part not in ("", ".", "..") and len(part.encode("utf-8")) <= 255 for part in parts
        )
    except UnicodeEncodeError:  # a lone surrogate cannot name a file
        return False


def snapshot_files(path: str) -> list[tuple[str, int]]:
    """(relative path, size) of every file of the snapshot at ``path``: data files first,
    the meta file last (the order a leader streams them in)."""
    out = []
    for rel in data_files(path) + [META_NAME]:
        try:
            size = os.stat(os.path.join(path, rel)).st_size
        except OSError as exc:
            raise translate_os_error(exc, os.path.join(path, rel), "stat") from exc
        out.append((rel, size))
    return out


def check_files(root: str, files: dict[str, list[int]], with_crc: bool) -> None:
    """Check the data files under ``root`` against the (size, crc32) ``files`` lists; with
    ``with_crc`` their contents too. Raises ``CorruptSnapshotError``."""
    for rel, (size, crc) in sorted(files.items()):
        path = os.path.join(root, *rel.split("/"))
        try:
            info = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):  # "a/b" where "a" is a file
            raise CorruptSnapshotError(f"snapshot {root} lacks data file {rel}") from None
        except OSError as exc:
            raise translate_os_error(exc, path, "stat") from exc
        if not stat.S_ISREG(info.st_mode):
            raise CorruptSnapshotError(f"snapshot data {path} is not a regular file")
        actual_size = info.st_size
        if actual_size != size:
            raise CorruptSnapshotError(
                f"snapshot file {path} has {actual_size} bytes, meta says {size}"
            )
        if with_crc and file_crc(path)[1] != crc:
            raise CorruptSnapshotError(f"snapshot file {path} fails its checksum")


class SnapshotStore:
    """The snapshots of one peer, in ``directory``. Not thread-safe."""

    def __init__(
        self,
        directory: str | os.PathLike[str],
        backup: bool = False,
        keep_backups: int = 3,
        fsync: bool = True,
    ) -> None:
        if keep_backups < 0:
            raise ValueError("keep_backups must not be negative")
        self._dir = os.fspath(directory)
        self._backup = backup
        self._keep_backups = keep_backups
        self._fsync = fsync
        self._active: set[str] = set()  # temp dirs this store is filling right now
        try:
            os.makedirs(self._dir, exist_ok=True)
        except OSError as exc:
            raise translate_os_error(exc, self._dir, "create snapshot directory") from exc

    @property
    def directory(self) -> str:
        return self._dir

    # ------------------------------------------------------------------ queries

    def latest(self) -> Latest | None:
        """The newest complete snapshot as (meta, path, extra), or None.

        Half-written temp directories (left by a crash) are ignored and removed. A complete
        snapshot whose meta is damaged raises ``CorruptSnapshotError``: falling back to an
        older snapshot could lose entries the log already dropped.
        """
        self._remove_stale_temps()
        snapshots = self._snapshots()
        if not snapshots:
            return None
        index, term, path = snapshots[-1]
        meta, extra, files = read_meta(path)
        if (meta.index, meta.term) != (index, term):
            raise CorruptSnapshotError(
                f"snapshot {path} holds index {meta.index} term {meta.term}, not its name's"
            )
        check_files(path, files, with_crc=False)
        return meta, path, extra

    def verify(self, path: str) -> None:
        """Check every data file of a snapshot against the sizes and CRCs in its meta."""
        _, _, files = read_meta(path)
        check_files(path, files, with_crc=True)

    def list_files(self, path: str) -> list[tuple[str, int]]:
        """(relative path, size) of every file of a snapshot, data files first, meta last.

        This is what a leader streams to a follower; the follower writes them, under the
        same relative paths, into the directory ``begin_install`` gave it.
        """
        return snapshot_files(path)

    # ------------------------------------------------------------------ creating

    def create(
        self,
        meta: SnapshotMeta,
        writer: Callable[[str], None],
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Build a snapshot: ``writer(dirpath)`` writes the backend's files into dirpath.

        Returns the snapshot's path once it is durable and is the latest; the previous
        snapshot has then been removed or moved to ``backups/``.
        """
        tmp = self._make_temp("tmp-create-")
        try:
            writer(tmp)
            files: dict[str, list[int]] = {}
            for rel in data_files(tmp):
                size, crc = file_crc(os.path.join(tmp, rel))
                files[rel] = [size, crc]
            meta_path = os.path.join(tmp, META_NAME)
            with open(meta_path, "wb") as f:
                f.write(encode_meta(meta, dict(extra or {}), files))
            return self._publish(tmp, meta)
        except OSError as exc:
            self._discard(tmp)
            raise translate_os_error(exc, tmp, "write snapshot into") from exc
        except BaseException:
            self._discard(tmp)
            raise

    # ------------------------------------------------------------------ installing

    def begin_install(self) -> str:
        """A fresh temp directory to receive a leader's snapshot files into."""
        return self._make_temp("tmp-install-")

    def finish_install(self, tmpdir: str) -> Latest:
        """Validate a received snapshot and make it the latest, atomically.

        On a validation failure the temp directory is removed and CorruptSnapshotError
        raised; the caller asks the leader again.
        """
        tmpdir = os.path.abspath(tmpdir)
        if tmpdir not in self._active:
            raise ValueError(f"{tmpdir} was not returned by begin_install")
        try:
            meta, extra, files = read_meta(tmpdir)
            check_files(tmpdir, files, with_crc=True)
            unexpected = sorted(set(data_files(tmpdir)) - set(files))
            if unexpected:
                raise CorruptSnapshotError(f"received snapshot has unlisted files {unexpected}")
            current = self._snapshots()
            if current and current[-1][0] > meta.index:
                raise ValueError(
                    f"snapshot at index {meta.index} is older than the current one at "
                    f"{current[-1][0]}"
                )
            path = self._publish(tmpdir, meta)
        except OSError as exc:
            self._discard(tmpdir)
            raise translate_os_error(exc, tmpdir, "install snapshot from") from exc
        except BaseException:
            self._discard(tmpdir)
            raise
        return meta, path, extra

    def abort_install(self, tmpdir: str) -> None:
        """Throw away a partly received snapshot."""
        self._discard(os.path.abspath(tmpdir))

    # ------------------------------------------------------------------ internals

    def _make_temp(self, prefix: str) -> str:
        try:
            tmp = os.path.abspath(tempfile.mkdtemp(prefix=prefix, dir=self._dir))
        except OSError as exc:
            raise translate_os_error(exc, self._dir, "create a temp directory in") from exc
        self._active.add(tmp)
        return tmp

    def _discard(self, tmp: str) -> None:
        self._active.discard(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    def _publish(self, tmp: str, meta: SnapshotMeta) -> str:
        """fsync everything under tmp, rename it into place, retire older snapshots. One
        older than the latest is refused (ValueError): a snapshot written on a worker may
        finish after a newer one arrived from the leader, and must not retire it."""
        snapshots = self._snapshots()
        if snapshots and snapshots[-1][0] > meta.index:
            self._discard(tmp)
            raise ValueError(
                f"snapshot at index {meta.index} is older than the latest at {snapshots[-1][0]}"
            )
        if self._fsync:
            for dirpath, _, filenames in os.walk(tmp, topdown=False):
                for name in filenames:
                    _fsync_file(os.path.join(dirpath, name))
                fsync_dir(dirpath)
        final = os.path.join(self._dir, snapshot_dir_name(meta.index, meta.term))
        if os.path.exists(final):
            # Same index and term means the same state (the state machine is deterministic).
            log.info("snapshot %s already exists; discarding the new copy", final)
            self._discard(tmp)
        else:
            os.rename(tmp, final)
            self._active.discard(tmp)
            self._sync_dir(self._dir)
        try:
            self._retire_others(final)
        except OSError as exc:  # the new snapshot is in place; retiring is retried next time
            log.error("could not retire older snapshots in %s: %s", self._dir, exc)
        return final

    def _retire_others(self, keep: str) -> None:
        others = [path for _, _, path in self._snapshots() if path != keep]
        if not others:
            return
        if self._backup:
            backups = os.path.join(self._dir, BACKUP_DIR)
            os.makedirs(backups, exist_ok=True)
            for path in others:
                target = os.path.join(backups, os.path.basename(path))
                if os.path.exists(target):
                    shutil.rmtree(target)
                os.rename(path, target)
                log.info("moved snapshot %s to %s", path, backups)
            self._sync_dir(backups)
            kept = sorted((n for n in os.listdir(backups) if _SNAP_RE.match(n)), key=_snap_key)
            for name in kept[: max(0, len(kept) - self._keep_backups)]:
                shutil.rmtree(os.path.join(backups, name))
                log.info("dropped old snapshot backup %s", name)
        else:
            for path in others:
                shutil.rmtree(path)
                log.info("removed old snapshot %s", path)
        self._sync_dir(self._dir)

    def _snapshots(self) -> list[tuple[int, int, str]]:
        """Complete snapshots as (index, term, path), oldest first."""
        try:
            names = os.listdir(self._dir)
        except OSError as exc:
            raise translate_os_error(exc, self._dir, "list") from exc
        found = []
        for name in names:
            if match := _SNAP_RE.match(name):
                found.append((int(match[1]), int(match[2]), os.path.join(self._dir, name)))
        found.sort()
        return found

    def _remove_stale_temps(self) -> None:
        for name in os.listdir(self._dir):
            path = os.path.join(self._dir, name)
            if name.startswith(_TMP_PREFIX) and path not in self._active:
                log.warning("removing half-written snapshot directory %s", path)
                shutil.rmtree(path, ignore_errors=True)

    def _sync_dir(self, path: str) -> None:
        if self._fsync:
            fsync_dir(path)

"""The data directory's identity: which cluster and which peer its state belongs to.

Written once when a peer first starts on an empty directory, before anything else is
stored there, and read at every start after. It answers three questions the Raft state
itself cannot:

* Is this the directory of the cluster and peer the settings name? (``cluster_id`` and
  ``peer_id``: serving it under other names is refused.)
* Which founding of the cluster is it? (``cluster_uuid``: chosen at founding and learned by
  joiners from the first peer that talks to them; peers of another founding are refused.)
* Is it still the same directory? (``instance``: random, chosen when the directory is
  created. ``known`` records the instance each fellow member had when first heard from, so a
  member whose directory was wiped or replaced, and that lost its votes and log with it,
  is refused instead of being counted twice.)

``founding`` holds the voters this peer founded the cluster with (empty for a joiner): the
founding entry is a pure function of it, so a crash between writing this file and the log
is mended by writing the same entry again.

The file is JSON (an operator can read it), replaced atomically: write a temporary file,
fsync, rename, fsync the directory.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import StorageError, translate_os_error
from .syncs import fsync_dir

FILE_NAME = "identity.json"
FORMAT = 1
_MAX_BYTES = 1 << 20


class CorruptIdentityError(StorageError):
    """The identity file exists but cannot be what this library wrote."""


@dataclass(frozen=True, slots=True)
class DirectoryIdentity:
    cluster_id: str
    peer_id: str
    instance: str
    cluster_uuid: str = ""  # "" until founded here or learned from a member
    founding: tuple[str, ...] = ()  # the voters this peer founded with; () for a joiner
    founding_pending: bool = False  # founding recorded, its log entry not yet durable
    known: dict[str, str] = field(default_factory=dict)  # member -> its instance
    # member -> the applied index when its instance was recorded: a committed configuration
    # after that which leaves the member out makes it forgettable (see IdentityGuard).
    known_since: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "cluster_id": self.cluster_id,
            "peer_id": self.peer_id,
            "instance": self.instance,
            "cluster_uuid": self.cluster_uuid,
            "founding": list(self.founding),
            "founding_pending": self.founding_pending,
            "known": dict(sorted(self.known.items())),
            "known_since": dict(sorted(self.known_since.items())),
        }

    @staticmethod
    def from_json(raw: Any) -> DirectoryIdentity:
        """Raises ValueError naming the first field that is wrong."""
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("format") != FORMAT:
            raise ValueError(f"unknown format {raw.get('format')!r} (this zraft reads {FORMAT})")
        for name in ("cluster_id", "peer_id", "instance", "cluster_uuid"):
            if not isinstance(raw.get(name), str):
                raise ValueError(f"{name} must be a string")
        if not raw["cluster_id"] or not raw["peer_id"] or not raw["instance"]:
            raise ValueError("cluster_id, peer_id and instance must not be empty")
        founding = raw.get("founding")
        if not isinstance(founding, list) or not all(isinstance(p, str) for p in founding):
            raise ValueError("founding must be a list of peer ids")
        known = raw.get("known")
        if not isinstance(known, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in known.items()
        ):
            raise ValueError("known must map peer ids to instance ids")
        since = raw.get("known_since", {})
        if not isinstance(since, dict) or not all(
            isinstance(k, str) and type(v) is int and v >= 0 for k, v in since.items()
        ):
            raise ValueError("known_since must map peer ids to log indexes")
        pending = raw.get("founding_pending", False)
        if type(pending) is not bool:
            raise ValueError("founding_pending must be true or false")
        return DirectoryIdentity(
            raw["cluster_id"],
            raw["peer_id"],
            raw["instance"],
            raw["cluster_uuid"],
            tuple(founding),
            pending,
            dict(known),
            {peer: since.get(peer, 0) for peer in known},
        )


class IdentityFile:
    """``directory/identity.json``. Not thread-safe: its owner serializes calls."""

    def __init__(self, directory: str | os.PathLike[str], fsync: bool = True) -> None:
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, FILE_NAME)
        self._fsync = fsync

    def load(self) -> DirectoryIdentity | None:
        """The stored identity, or None if there is none yet."""
        try:
            with open(self.path, "rb") as f:
                data = f.read(_MAX_BYTES + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise translate_os_error(exc, self.path, "read") from exc
        if len(data) > _MAX_BYTES:
            raise CorruptIdentityError(f"{self.path}: larger than {_MAX_BYTES} bytes")
        try:
            return DirectoryIdentity.from_json(json.loads(data))
        except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError included
            raise CorruptIdentityError(f"{self.path}: {exc}") from None

    def save(self, identity: DirectoryIdentity) -> None:
        """Durably replace the stored identity."""
        tmp = self.path + ".tmp"
        data = json.dumps(identity.to_json(), indent=2).encode() + b"\n"
        try:
            os.makedirs(self.directory, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self._fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            if self._fsync:
                fsync_dir(self.directory)
        except OSError as exc:
            raise translate_os_error(exc, self.path, "write") from exc

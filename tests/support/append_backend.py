"""A backend whose writes are not idempotent, so applying one twice is visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack

from zraft.backends.base import (
    ApplyResult,
    Backend,
    CommandRejected,
    QueryResult,
    SnapshotWriter,
)


class AppendLog(Backend):
    """``{"append": id}`` adds id to a list; the query returns the whole list."""

    def __init__(self) -> None:
        self.items: list[Any] = []

    def query(self, query: Any) -> QueryResult:
        return QueryResult(list(self.items))

    def apply(self, command: Any) -> ApplyResult:
        if not isinstance(command, dict) or "append" not in command:
            raise CommandRejected("expected {'append': id}")
        self.items.append(command["append"])
        return ApplyResult(len(self.items))

    def snapshot(self) -> SnapshotWriter:
        data = msgpack.packb(self.items)
        return SnapshotWriter(lambda d: (d / "items").write_bytes(data), background=True)

    def install(self, directory: Path) -> None:
        self.items = list(msgpack.unpackb((directory / "items").read_bytes()))

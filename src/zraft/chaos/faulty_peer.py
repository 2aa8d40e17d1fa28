"""``python -m zraft.chaos.faulty_peer --fail-sync-after N [serve flags]``: a peer on a
failing disk, for the fault suite.

It runs the normal ``zraft serve`` with the peer's stores on disk wrapped by
``zraft.chaos.storage_faults`` (the runtime takes a storage opener for this), so the
product reads no fault setting of any kind. Exactly one fault flag is required.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from zraft.actors.runtime import PeerStorage, StorageOpener, open_disk_storage
from zraft.cli import serve
from zraft.settings import Settings, add_arguments

from .storage_faults import (
    DiskFaults,
    FaultKind,
    FaultyHardState,
    FaultyLog,
    FaultySnapshots,
)

_FLAGS = {
    FaultKind.FAILING_SYNC: "--fail-sync-after",
    FaultKind.NO_SPACE: "--no-space-after",
    FaultKind.TORN_WRITE: "--tear-after",
}


def faulty_storage(faults: DiskFaults) -> StorageOpener:
    """A storage opener: the peer's stores on disk, every one behind ``faults``."""

    def open_storage(settings: Settings) -> PeerStorage:
        disk = open_disk_storage(settings)
        log_dir = Path(settings.log_dir or settings.data_dir)
        snapshot_dir = Path(settings.snapshot_dir or settings.data_dir)
        return PeerStorage(
            FaultyLog(disk.raft_log, faults, str(log_dir / "log")),
            FaultyHardState(disk.hard_state, faults, str(log_dir / "hard_state")),
            FaultySnapshots(disk.snapshots, faults, str(snapshot_dir / "snapshots")),
        )

    return open_storage


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m zraft.chaos.faulty_peer",
        description="run `zraft serve` on a disk that fails after N durable writes",
    )
    parser.add_argument("--log-level", default="INFO")
    faults = parser.add_mutually_exclusive_group(required=True)
    for kind, flag in _FLAGS.items():
        faults.add_argument(
            flag, type=int, metavar="N", dest=kind.name, help=f"{kind.value} after N writes"
        )
    add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    kind = next(k for k in FaultKind if getattr(args, k.name) is not None)
    after = getattr(args, kind.name)
    if after < 0:
        sys.stderr.write(f"{_FLAGS[kind]} must not be negative\n")
        return 2
    logging.getLogger(__name__).warning("serving on a disk with %s after %d writes",
                                        kind.value, after)  # fmt: skip
    return serve(args, faulty_storage(DiskFaults(kind, after)))


if __name__ == "__main__":
    raise SystemExit(main())

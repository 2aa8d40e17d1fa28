"""Making a directory's entries durable, which every store here needs after it creates,
renames or removes a file."""

from __future__ import annotations

import os


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """``fsync`` the directory ``path``: its entries (new, renamed, removed names) are on
    disk when this returns. Raises ``OSError``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

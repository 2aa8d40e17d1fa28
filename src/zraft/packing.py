"""msgpack encoding through one reusable ``Packer`` per thread.

``msgpack.packb`` builds a new Packer, and its buffer, on every call: for the small values
that travel per write (a command, a key-value value, a frame) that costs as much as the
packing itself. A Packer is not thread-safe, hence one per thread. It resets its buffer
when a pack fails, so an error leaves it ready for the next call; it never shrinks its
buffer, so after a big value the thread gets a fresh one. A pack nested in another on the
same thread (a user mapping's ``items()`` that packs) finds the thread's Packer taken and
builds its own.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

_local = threading.local()
_KEEP_BUFFER_BYTES = 1 << 20


def pack(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``, without building a Packer per call."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = msgpack.Packer(use_bin_type=True)
    _local.packer = None  # taken until this pack returns
    packed: bytes = packer.pack(obj)
    if len(packed) <= _KEEP_BUFFER_BYTES:
        _local.packer = packer
    return packed

"""msgpack encoding through one reusable ``Packer`` per thread.

``msgpack.packb`` builds a new Packer, and its buffer, on every call: for the small values
that travel per write (a command, a key-value value, a frame) that costs as much as the
packing itself. A Packer is not thread-safe, hence one per thread. It resets its buffer
when a pack fails, so an error leaves it ready for the next call.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

_local = threading.local()


def pack(obj: Any) -> bytes:
    """``msgpack.packb(obj, use_bin_type=True)``, without building a Packer per call."""
    try:
        packer = _local.packer
    except AttributeError:
        packer = _local.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)  # type: ignore[no-any-return]

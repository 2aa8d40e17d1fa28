"""zraft.packing: the per-thread Packer encodes exactly as msgpack.packb does."""

from __future__ import annotations

import threading
from typing import Any

import msgpack
import pytest

from zraft import packing
from zraft.packing import pack

SAMPLES: list[Any] = [
    None, True, 0, -1, 2**64 - 1, -(2**63), 1.5, "", "é", b"", b"\x00" * 300,
    [1, [2, [3]]], {"a": 1, 2: b"x"}, "x" * 70_000,
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("value", SAMPLES)
def test_same_bytes_as_packb(value: Any) -> None:
    assert pack(value) == msgpack.packb(value, use_bin_type=True)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("bad", [object(), {1, 2}, 2**64, -(2**63) - 1, "\udfff", [[b"x", 3j]]])
def test_a_failed_pack_leaves_nothing_behind(bad: Any) -> None:
    with pytest.raises((TypeError, ValueError, OverflowError)):
        pack([1, 2, bad])
    assert pack([7]) == msgpack.packb([7])


@pytest.mark.timeout(30)
def test_threads_do_not_share_a_buffer() -> None:
    errors: list[str] = []

    def worker(n: int) -> None:
        for i in range(2_000):
            value = [n, i, "v" * (i % 50)]
            if msgpack.unpackb(pack(value)) != value:
                errors.append(f"thread {n} item {i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


@pytest.mark.timeout(10)
def test_a_big_value_does_not_leave_its_buffer_behind() -> None:
    pack([1])
    small = packing._local.packer
    pack(b"x" * (2 << 20))
    assert packing._local.packer is not small and packing._local.packer is None
    assert pack([1]) == msgpack.packb([1])
    assert packing._local.packer is not None


class _PackingMapping(dict):  # type: ignore[type-arg]
    """A mapping whose items() packs something itself, as user code might."""

    def items(self):  # type: ignore[no-untyped-def]
        self.inner = pack(["nested", 1])
        return super().items()


@pytest.mark.timeout(10)
def test_a_nested_pack_on_the_same_thread_gets_its_own_packer() -> None:
    mapping = _PackingMapping(a=1, b=[2, 3])
    outer = pack(["outer", mapping])
    assert msgpack.unpackb(outer) == ["outer", {"a": 1, "b": [2, 3]}]
    assert msgpack.unpackb(mapping.inner) == ["nested", 1]

"""Fuzzing the wire codec: random bytes, byte-mutated frames and frames whose fields (at any
depth, any message type) hold values of the wrong type. The properties are those of
``fuzz/targets.py``: only ``FrameError`` with a stable reason code, bounded CPU, bounded
memory. ``tests/transport/test_transport_codec.py`` holds the hand-written rejection table."""

from __future__ import annotations

import tracemalloc

import msgpack
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.targets import (
    CLUSTER,
    CODEC,
    CODEC_FIELDS,
    CODEC_MUTATED,
    ME,
    MSGPACK_NESTING_CEILING,
    SENDER,
    check,
    codec_seeds,
)
from tests.support.fuzzing import fuzz
from zraft.transport import PROTOCOL_VERSION, FrameError, decode_batch


@pytest.mark.timeout(120)
@fuzz(300)
@given(st.binary(max_size=512))
@example(codec_seeds()[0])
@example(codec_seeds()[-1])
def test_random_bytes(data: bytes) -> None:
    check(CODEC, data)


@pytest.mark.timeout(120)
@fuzz(300)
@given(st.binary(min_size=1, max_size=64))
def test_byte_mutated_frames(recipe: bytes) -> None:
    check(CODEC_MUTATED, recipe)


@pytest.mark.timeout(120)
@fuzz(500)
@given(st.binary(min_size=1, max_size=96))
def test_wrong_typed_fields_in_every_message_type(recipe: bytes) -> None:
    check(CODEC_FIELDS, recipe)


def _frame(code: int, body: object) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, CLUSTER, SENDER, code, body], use_bin_type=True)


def _append_with(entry: object) -> bytes:
    return _frame(1, [1, SENDER, ME, 0, 0, [entry], 0])


# Inputs the fuzzer found that once escaped as something other than FrameError.
FOUND = [
    # Configuration.from_wire sorts unknown keys for its message: str and bytes keys
    # together raised TypeError out of decode_batch (an unexpected-error log per frame).
    ("config with str and bytes keys", _append_with([1, 1, 2, {b"x": 1, "y": []}])),
    ("meta config with str and bytes keys", _frame(7, [1, SENDER, ME, [1, 1, {b"a": 1, "b": 2}]])),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "frame"), FOUND, ids=[f[0] for f in FOUND])
def test_inputs_the_fuzzer_found(name: str, frame: bytes) -> None:
    rejection = check(CODEC, frame)
    assert isinstance(rejection, FrameError), name
    assert rejection.reason.startswith("bad-field:"), rejection.reason


@pytest.mark.timeout(60)
@pytest.mark.parametrize("size", [1_000, 30_000, 1_000_000])
def test_nested_length_claims_hold_a_bounded_amount_of_memory(size: int) -> None:
    """Arrays claiming as many elements as the frame has bytes, nested as deep as msgpack
    lets them: the unpacker preallocates each claimed list, so memory is not proportional
    to the frame here, but it stays under a fixed ceiling whatever the frame's size."""
    claim = min(size, 1 << 20)
    frame = (b"\xdd" + claim.to_bytes(4, "big")) * (size // 5)
    tracemalloc.start()
    try:
        with pytest.raises(FrameError) as err:
            decode_batch(frame, cluster_id=CLUSTER, max_frame_bytes=2 * size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.reason == "not-msgpack"
    assert peak < MSGPACK_NESTING_CEILING, peak

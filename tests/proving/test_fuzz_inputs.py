"""Fuzzing the remaining decoders: the snapshot stream (control-message framing, headers
and whole streams against a live receiver), the key-value backend's snapshot file, and the
settings (TOML files and command-line flag values)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fuzz.targets import (
    KV,
    KV_RESEALED,
    SETTINGS_FLAGS,
    SETTINGS_TOML,
    SETTINGS_TOML_LINES,
    STREAM,
    STREAM_CONTROL,
    STREAM_HEADER,
    check,
    cleanup,
    kv_seeds,
    stream_seeds,
    toml_seeds,
)
from tests.support.fuzzing import fuzz


@pytest.fixture(scope="module", autouse=True)
def _close_the_shared_receiver() -> Iterator[None]:
    yield
    cleanup()


@pytest.mark.timeout(120)
@fuzz(200)
@given(st.binary(max_size=256))
@example(stream_seeds()[0])
@example(b"\xff\xff\xff\xff")  # a control message claiming 4 GiB
def test_snapshot_stream_control_messages(data: bytes) -> None:
    check(STREAM_CONTROL, data)


@pytest.mark.timeout(120)
@fuzz(150)
@given(st.binary(max_size=256))
@example(stream_seeds()[0])
def test_snapshot_streams(data: bytes) -> None:
    check(STREAM, data)


@pytest.mark.timeout(120)
@fuzz(200)
@given(st.binary(min_size=1, max_size=96))
def test_snapshot_stream_headers_with_wrong_fields(recipe: bytes) -> None:
    check(STREAM_HEADER, recipe)


@pytest.mark.timeout(120)
@fuzz(150)
@given(st.binary(max_size=256))
@example(kv_seeds()[0])
def test_kv_snapshot_files(data: bytes) -> None:
    check(KV, data)


@pytest.mark.timeout(120)
@fuzz(200)
@given(st.binary(min_size=1, max_size=64))
def test_kv_snapshot_bodies_with_valid_checksums(recipe: bytes) -> None:
    check(KV_RESEALED, recipe)


@pytest.mark.timeout(120)
@fuzz(200)
@given(st.binary(max_size=200))
@example(toml_seeds()[0])
@example(b"[peer_id]\nx = 1\n")
@example(b"election_timeout = 1e400\n")
def test_settings_toml_files(data: bytes) -> None:
    check(SETTINGS_TOML, data)


@pytest.mark.timeout(120)
@fuzz(300)
@given(st.binary(min_size=1, max_size=96))
def test_settings_toml_values_of_every_kind(recipe: bytes) -> None:
    check(SETTINGS_TOML_LINES, recipe)


@pytest.mark.timeout(120)
@fuzz(300)
@given(st.binary(min_size=1, max_size=96))
def test_settings_flag_values(recipe: bytes) -> None:
    check(SETTINGS_FLAGS, recipe)

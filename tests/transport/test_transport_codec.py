"""The wire codec: round trips of every message type, and rejection of every bad frame."""

from __future__ import annotations

import tracemalloc
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zraft.core.messages import (
    MESSAGE_TYPES,
    AppendEntries,
    AppendResponse,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    TimeoutNow,
    VoteResponse,
)
from zraft.core.types import Configuration, Entry, EntryKind, SnapshotMeta
from zraft.transport import (
    PROTOCOL_VERSION,
    TYPE_CODES,
    ClientReply,
    ClientRequest,
    FrameError,
    SnapshotOffer,
    SnapshotReady,
    decode,
    decode_batch,
    encode,
    encode_batch,
    encode_batches,
)

CLUSTER = "c1"
LIMIT = 1 << 20
SENDER = "10.0.0.1:7001"

uints = st.integers(0, (1 << 63) - 1)
peer_ids = st.text(min_size=1, max_size=24)
peer_sets = st.frozensets(peer_ids, max_size=4)


@st.composite
def configurations(draw: st.DrawFn) -> Configuration:
    voters = draw(peer_sets)
    learners = draw(peer_sets) - voters
    outgoing = draw(peer_sets)
    return Configuration(voters, outgoing, learners)


metas = st.builds(SnapshotMeta, uints, uints, configurations())


@st.composite
def entries(draw: st.DrawFn) -> Entry:
    index = draw(st.integers(1, (1 << 63) - 1))
    term = draw(uints)
    kind = draw(st.sampled_from(EntryKind))
    if kind == EntryKind.CONFIG:
        return Entry(index, term, kind, draw(configurations()))
    return Entry(index, term, kind, draw(st.binary(max_size=64)))


contexts = st.one_of(
    st.none(), st.integers(-(1 << 63), (1 << 64) - 1), st.text(max_size=16), st.binary(max_size=16)
)
plain = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(1 << 63), (1 << 64) - 1),
        st.floats(allow_nan=False),
        st.text(max_size=8),
        st.binary(max_size=8),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


def head() -> dict[str, Any]:
    return {"term": uints, "src": st.just(SENDER), "dst": peer_ids}


peer_messages = st.one_of(
    st.builds(
        AppendEntries,
        **head(),
        prev_index=uints,
        prev_term=uints,
        entries=st.lists(entries(), max_size=4).map(tuple),
        commit=uints,
    ),
    st.builds(
        AppendResponse,
        **head(),
        success=st.booleans(),
        index=uints,
        hint_index=uints,
        hint_term=uints,
    ),
    st.builds(
        RequestVote,
        **head(),
        last_index=uints,
        last_term=uints,
        pre_vote=st.booleans(),
        transfer=st.booleans(),
    ),
    st.builds(VoteResponse, **head(), granted=st.booleans(), pre_vote=st.booleans()),
    st.builds(Heartbeat, **head(), commit=uints, round=uints),
    st.builds(HeartbeatResponse, **head(), round=uints),
    st.builds(InstallSnapshot, **head(), meta=metas),
    st.builds(TimeoutNow, **head()),
    st.builds(ReadIndexRequest, **head(), context=contexts),
    st.builds(ReadIndexResponse, **head(), context=contexts, index=uints, ok=st.booleans()),
    st.builds(SnapshotOffer, **head(), meta=metas),
    st.builds(
        SnapshotReady,
        **head(),
        index=uints,
        host=st.text(min_size=1, max_size=32),
        port=st.integers(1, 65535),
    ),
)
client_messages = st.one_of(
    st.builds(
        ClientRequest,
        request_id=uints,
        op=st.text(min_size=1, max_size=16),
        payload=plain,
        client_id=st.text(max_size=16),
        seq=uints,
        acked=uints,
        timeout_ms=uints,
    ),
    st.builds(
        ClientReply,
        request_id=uints,
        ok=st.booleans(),
        result=plain,
        error=st.none() | st.text(max_size=32),
        leader=st.none() | peer_ids,
        index=uints,
    ),
)
any_message = st.one_of(peer_messages, client_messages)


@pytest.mark.timeout(30)
def test_every_type_has_a_code_and_a_strategy() -> None:
    wanted = set(MESSAGE_TYPES) | {SnapshotOffer, SnapshotReady, ClientRequest, ClientReply}
    assert set(TYPE_CODES) == wanted
    assert len(set(TYPE_CODES.values())) == len(TYPE_CODES)
    assert 0 not in TYPE_CODES.values()  # 0 is the batch code


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_message)
def test_round_trip_single(msg: Any) -> None:
    frame = encode(msg, cluster_id=CLUSTER, sender=SENDER)
    decoded = decode(frame, cluster_id=CLUSTER, max_frame_bytes=LIMIT)
    assert decoded.sender == SENDER
    assert decoded.message == msg
    assert type(decoded.message) is type(msg)


@pytest.mark.timeout(120)
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_message, min_size=1, max_size=20))
def test_round_trip_batch(msgs: list[Any]) -> None:
    frame = encode_batch(msgs, cluster_id=CLUSTER, sender=SENDER)
    decoded = decode_batch(frame, cluster_id=CLUSTER, max_frame_bytes=LIMIT)
    assert decoded.sender == SENDER
    assert decoded.messages == msgs
    with pytest.raises(FrameError) as err:
        decode(frame, cluster_id=CLUSTER, max_frame_bytes=LIMIT)
    assert err.value.reason == "unexpected-batch"


@pytest.mark.timeout(30)
def test_encode_batches_splits_by_size_and_isolates_bad_messages() -> None:
    big = [
        AppendEntries(1, SENDER, "b", 0, 0, (Entry(i + 1, 1, EntryKind.NORMAL, b"x" * 1000),), 0)
        for i in range(50)
    ]
    bad = ClientReply(1, True, result=object())  # not msgpack-able
    huge = AppendEntries(1, SENDER, "b", 0, 0, (Entry(1, 1, EntryKind.NORMAL, b"y" * 20000),), 0)
    failures: list[tuple[Any, str]] = []
    frames = encode_batches(
        [*big[:25], bad, huge, *big[25:]],
        cluster_id=CLUSTER,
        sender=SENDER,
        max_frame_bytes=10_000,
        on_error=lambda m, e: failures.append((m, type(e).__name__)),
    )
    assert [m for m, _ in failures] == [bad, huge]
    assert all(len(f) <= 10_000 for f, _ in frames)
    out: list[Any] = []
    for frame, n in frames:
        got = decode_batch(frame, cluster_id=CLUSTER, max_frame_bytes=10_000).messages
        assert len(got) == n
        out.extend(got)
    assert out == big


# --------------------------------------------------------------------------- rejections

HB = Heartbeat(3, SENDER, "b:1", 4, 5)
GOOD_BODY = [3, SENDER, "b:1", 4, 5]


def frame_of(*envelope: Any) -> bytes:
    return msgpack.packb(list(envelope), use_bin_type=True)


def env(code: int, body: Any, **kw: Any) -> bytes:
    return frame_of(
        kw.get("version", PROTOCOL_VERSION),
        kw.get("cluster", CLUSTER),
        kw.get("sender", SENDER),
        code,
        body,
    )


def ae_body(entries: list[Any]) -> list[Any]:
    return [1, SENDER, "b:1", 0, 0, entries, 0]


BAD_FRAMES: list[tuple[str, bytes, str]] = [
    ("oversized", b"\x90" * (LIMIT + 1), "oversized"),
    ("empty", b"", "not-msgpack"),
    ("reserved byte", b"\xc1", "not-msgpack"),
    ("truncated", encode(HB, cluster_id=CLUSTER, sender=SENDER)[:-3], "not-msgpack"),
    ("trailing", encode(HB, cluster_id=CLUSTER, sender=SENDER) + b"\x00", "trailing-data"),
    ("array32 claims 4G items", b"\xdd\xff\xff\xff\xff", "not-msgpack"),
    ("str32 claims 4 GB", b"\xdb\xff\xff\xff\xff" + b"a" * 10, "not-msgpack"),
    ("bin32 claims 4 GB", b"\xc6\xff\xff\xff\xff" + b"a" * 10, "not-msgpack"),
    ("map32 claims 4G pairs", b"\xdf\xff\xff\xff\xff", "not-msgpack"),
    ("ext type", msgpack.packb(msgpack.ExtType(5, b"abc")), "not-msgpack"),
    ("timestamp", env(30, [1, "op", msgpack.Timestamp(1, 0), "", 0, 0, 0]), "not-msgpack"),
    ("invalid utf-8", b"\x95\x01\xa2\xff\xfe\xa1a\x05\x90", "not-msgpack"),
    ("not an array", msgpack.packb({"v": 1}), "bad-envelope"),
    ("short envelope", frame_of(1, CLUSTER, SENDER, 5), "bad-envelope"),
    ("version next", env(5, GOOD_BODY, version=PROTOCOL_VERSION + 1), "bad-version"),
    ("version 1", env(5, GOOD_BODY, version=1), "bad-version"),
    ("version True", env(5, GOOD_BODY, version=True), "bad-version"),
    ("version str", env(5, GOOD_BODY, version="1"), "bad-version"),
    ("wrong cluster", env(5, GOOD_BODY, cluster="other"), "wrong-cluster"),
    ("cluster bytes", env(5, GOOD_BODY, cluster=CLUSTER.encode()), "wrong-cluster"),
    ("empty sender", env(5, GOOD_BODY, sender=""), "bad-sender"),
    ("long sender", env(5, GOOD_BODY, sender="x" * 257), "bad-sender"),
    ("sender int", env(5, GOOD_BODY, sender=7), "bad-sender"),
    ("unknown code", env(99, GOOD_BODY), "unknown-type"),
    ("code str", env("5", GOOD_BODY), "unknown-type"),  # type: ignore[arg-type]
    ("code bool", env(True, GOOD_BODY), "unknown-type"),  # type: ignore[arg-type]
    ("src mismatch", env(5, [3, "mallory:1", "b:1", 4, 5]), "src-mismatch"),
    ("short body", env(5, [3, SENDER, "b:1", 4]), "bad-body:Heartbeat"),
    ("body not array", env(5, {"term": 3}), "bad-body:Heartbeat"),
    ("negative term", env(5, [-1, SENDER, "b:1", 4, 5]), "bad-field:term"),
    ("term too big", env(5, [1 << 63, SENDER, "b:1", 4, 5]), "bad-field:term"),
    ("term float", env(5, [3.0, SENDER, "b:1", 4, 5]), "bad-field:term"),
    ("term bool", env(5, [True, SENDER, "b:1", 4, 5]), "bad-field:term"),
    ("empty dst", env(5, [3, SENDER, "", 4, 5]), "bad-field:dst"),
    ("long dst", env(5, [3, SENDER, "d" * 257, 4, 5]), "bad-field:dst"),
    ("dst bytes", env(5, [3, SENDER, b"b:1", 4, 5]), "bad-field:dst"),
    ("negative round", env(5, [3, SENDER, "b:1", 4, -5]), "bad-field:round"),
    ("success int", env(2, [1, SENDER, "b:1", 1, 2, 0, 0]), "bad-field:success"),
    ("pre_vote None", env(4, [1, SENDER, "b:1", True, None]), "bad-field:pre_vote"),
    ("entries not list", env(1, ae_body({})), "bad-field:entries"),  # type: ignore[arg-type]
    ("entry short", env(1, ae_body([[1, 1, 0]])), "bad-field:entry"),
    ("entry index 0", env(1, ae_body([[0, 1, 0, b""]])), "bad-field:entry.index"),
    ("entry term neg", env(1, ae_body([[1, -1, 0, b""]])), "bad-field:entry.term"),
    ("entry kind 7", env(1, ae_body([[1, 1, 7, b""]])), "bad-field:entry.kind"),
    ("entry kind bool", env(1, ae_body([[1, 1, False, b""]])), "bad-field:entry.kind"),
    ("normal data str", env(1, ae_body([[1, 1, 0, "text"]])), "bad-field:entry.data"),
    ("noop data None", env(1, ae_body([[1, 1, 1, None]])), "bad-field:entry.data"),
    ("config data bytes", env(1, ae_body([[1, 1, 2, b"x"]])), "bad-field:entry.data"),
    (
        "config voter and learner",
        env(1, ae_body([[1, 1, 2, {"voters": ["a"], "learners": ["a"]}]])),
        "bad-field:entry.data",
    ),
    (
        "config unknown key",
        env(1, ae_body([[1, 1, 2, {"voters": ["a"], "extra": []}]])),
        "bad-field:entry.data",
    ),
    (
        "config empty peer",
        env(1, ae_body([[1, 1, 2, {"voters": [""]}]])),
        "bad-field:entry.data",
    ),
    ("meta short", env(7, [1, SENDER, "b:1", [1, 1]]), "bad-field:meta"),
    ("meta config list", env(7, [1, SENDER, "b:1", [1, 1, []]]), "bad-field:meta.config"),
    ("context float", env(9, [1, SENDER, "b:1", 1.5]), "bad-field:context"),
    ("context list", env(9, [1, SENDER, "b:1", [1]]), "bad-field:context"),
    ("context bool", env(9, [1, SENDER, "b:1", True]), "bad-field:context"),
    ("port 0", env(21, [1, SENDER, "b:1", 5, "h", 0]), "bad-field:port"),
    ("port 70000", env(21, [1, SENDER, "b:1", 5, "h", 70000]), "bad-field:port"),
    ("host empty", env(21, [1, SENDER, "b:1", 5, "", 80]), "bad-field:host"),
    ("op empty", env(30, [1, "", None, "", 0, 0, 0]), "bad-field:op"),
    ("request_id neg", env(30, [-1, "get", None, "", 0, 0, 0]), "bad-field:request_id"),
    ("client_id int", env(30, [1, "get", None, 5, 0, 0, 0]), "bad-field:client_id"),
    ("reply ok None", env(31, [1, None, None, None, None, 0]), "bad-field:ok"),
    ("reply error int", env(31, [1, True, None, 3, None, 0]), "bad-field:error"),
    ("reply leader empty", env(31, [1, True, None, None, "", 0]), "bad-field:leader"),
    ("empty batch", env(0, []), "bad-batch"),
    ("batch item short", env(0, [[5]]), "bad-batch"),
    ("nested batch", env(0, [[0, [[5, GOOD_BODY]]]]), "unknown-type"),
    ("batch src mismatch", env(0, [[5, GOOD_BODY], [5, [3, "x", "b", 4, 5]]]), "src-mismatch"),
]


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("name", "frame", "reason"), BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_rejects_bad_frames(name: str, frame: bytes, reason: str) -> None:
    with pytest.raises(FrameError) as err:
        decode_batch(frame, cluster_id=CLUSTER, max_frame_bytes=LIMIT)
    assert err.value.reason == reason, name


@pytest.mark.timeout(30)
def test_good_frames_in_the_table_are_really_good() -> None:
    """The rejection table mutates good frames: make sure the unmutated ones pass."""
    assert decode(env(5, GOOD_BODY), cluster_id=CLUSTER, max_frame_bytes=LIMIT).message == HB
    assert decode(env(1, ae_body([[1, 1, 0, b"x"]])), cluster_id=CLUSTER, max_frame_bytes=LIMIT)
    ready = env(21, [1, SENDER, "b:1", 5, "h", 65535])
    assert decode(ready, cluster_id=CLUSTER, max_frame_bytes=LIMIT).message.port == 65535  # type: ignore[union-attr]


# --------------------------------------------------------------------------- fuzzing


def _decode_bounded(frame: bytes) -> None:
    """Decode; only FrameError may escape, and memory must stay proportional to the frame."""
    tracemalloc.start()
    try:
        decode_batch(frame, cluster_id=CLUSTER, max_frame_bytes=LIMIT)
    except FrameError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 200 * len(frame) + 256 * 1024, (peak, len(frame))


@pytest.mark.timeout(180)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(frame: bytes) -> None:
    _decode_bounded(frame)


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    msgs = draw(st.lists(any_message, min_size=1, max_size=3))
    frame = bytearray(
        encode_batch(msgs, cluster_id=CLUSTER, sender=SENDER)
        if len(msgs) > 1
        else encode(msgs[0], cluster_id=CLUSTER, sender=SENDER)
    )
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        pos = draw(st.integers(0, max(0, len(frame) - 1)))
        if op == "flip" and frame:
            frame[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and frame:
            frame[pos] = draw(st.sampled_from([0x00, 0x7F, 0xC0, 0xC1, 0xC6, 0xDC, 0xDD, 0xFF]))
        elif op == "insert":
            frame[pos:pos] = draw(st.binary(min_size=1, max_size=5))
        elif op == "delete" and frame:
            del frame[pos : pos + draw(st.integers(1, 4))]
        elif op == "truncate":
            del frame[pos:]
    return bytes(frame)


@pytest.mark.timeout(180)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames())
def test_fuzz_mutated_frames(frame: bytes) -> None:
    _decode_bounded(frame)

"""The key-value backend: every op, rejections, temporary keys, watches, snapshots."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zraft.backends import (
    ApplyResult,
    CommandRejected,
    InvalidSnapshot,
    KeyValueBackend,
    QueryResult,
    kv,
)
from zraft.backends.kv import MAX_KEY_BYTES, SNAPSHOT_FILE


def make() -> KeyValueBackend:
    backend = KeyValueBackend()
    backend.init("127.0.0.1:7000")
    return backend


def snapshot_bytes(backend: KeyValueBackend, directory: Path) -> bytes:
    directory.mkdir(parents=True, exist_ok=True)
    backend.snapshot()(directory)
    return (directory / SNAPSHOT_FILE).read_bytes()


def everything(backend: KeyValueBackend) -> dict[str, Any]:
    result = backend.query(kv.list_prefix()).data
    assert result["more"] is False
    return {key: (value, backend.owner(key)) for key, value in result["items"]}


# --------------------------------------------------------------------------- the ops


@pytest.mark.timeout(10)
def test_put_get_delete() -> None:
    b = make()
    assert b.query(kv.get("a")).data == {"found": False, "value": None}
    assert b.apply(kv.put("a", {"x": [1, 2.5, b"raw", None, True]})).result == {"created": True}
    assert b.query(kv.get("a")).data == {"found": True,
                                         "value": {"x": [1, 2.5, b"raw", None, True]}}
    assert b.apply(kv.put("a", None)).result == {"created": False}
    # A stored None is distinguishable from an absent key.
    assert b.query(kv.get("a")).data == {"found": True, "value": None}
    assert b.apply(kv.delete("a")).result == {"deleted": True}
    assert b.apply(kv.delete("a")).result == {"deleted": False}
    assert b.query(kv.get("a")).data == {"found": False, "value": None}
    assert len(b) == 0


@pytest.mark.timeout(10)
def test_reads_through_apply() -> None:
    b = make()
    b.apply(kv.put("k", 1))
    assert b.apply(kv.get("k")) == ApplyResult({"found": True, "value": 1})
    assert b.apply(kv.list_prefix("k")) == ApplyResult({"items": [["k", 1]], "more": False})


@pytest.mark.timeout(10)
def test_conditional_delete() -> None:
    b = make()
    b.apply(kv.put("lock", "me"))
    assert b.apply(kv.delete("lock", expected="you")).result == {"deleted": False}
    assert b.apply(kv.delete("lock", expected=None)).result == {"deleted": False}
    assert b.apply(kv.delete("lock", expected="me")).result == {"deleted": True}
    assert b.apply(kv.delete("lock", expected=None)).result == {"deleted": False}


@pytest.mark.timeout(10)
def test_cas() -> None:
    b = make()
    # expected None: create only if absent
    assert b.apply(kv.cas("c", None, 1)).result == {"swapped": True, "found": True, "value": 1}
    assert b.apply(kv.cas("c", None, 2)).result == {"swapped": False, "found": True, "value": 1}
    assert b.apply(kv.cas("c", 1, 3)).result == {"swapped": True, "found": True, "value": 3}
    assert b.apply(kv.cas("c", 1, 4)).result == {"swapped": False, "found": True, "value": 3}
    assert b.apply(kv.cas("gone", 1, 4)).result == {"swapped": False, "found": False,
                                                    "value": None}
    assert b.query(kv.get("gone")).data["found"] is False


@pytest.mark.timeout(10)
def test_cas_compares_encodings_strictly() -> None:
    b = make()
    b.apply(kv.put("n", 1))
    assert b.apply(kv.cas("n", 1.0, 9)).result["swapped"] is False
    assert b.apply(kv.cas("n", True, 9)).result["swapped"] is False
    assert b.apply(kv.cas("n", 1, 9)).result["swapped"] is True
    b.apply(kv.put("m", {"a": 1, "b": [1, 2]}))
    read = b.query(kv.get("m")).data["value"]
    assert b.apply(kv.cas("m", read, "next")).result["swapped"] is True
    b.apply(kv.put("t", (1, 2)))  # tuples are stored as lists, as msgpack would
    assert b.apply(kv.cas("t", [1, 2], "x")).result["swapped"] is True


@pytest.mark.timeout(10)
def test_list() -> None:
    b = make()
    for key in ["b/2", "a", "b/1", "b/3", "c", "b", "b/10"]:
        b.apply(kv.put(key, key.upper()))
    assert b.query(kv.list_prefix("b/")).data == {
        "items": [["b/1", "B/1"], ["b/10", "B/10"], ["b/2", "B/2"], ["b/3", "B/3"]],
        "more": False,
    }
    assert b.query(kv.list_prefix(keys_only=True)).data == {
        "keys": ["a", "b", "b/1", "b/10", "b/2", "b/3", "c"], "more": False}
    page = b.query(kv.list_prefix("b/", limit=2, keys_only=True)).data
    assert page == {"keys": ["b/1", "b/10"], "more": True}
    page = b.query(kv.list_prefix("b/", limit=2, after="b/10", keys_only=True)).data
    assert page == {"keys": ["b/2", "b/3"], "more": False}
    # after before the prefix range, after a missing key, after the end
    assert b.query(kv.list_prefix("b/", after="a", keys_only=True)).data["keys"][0] == "b/1"
    assert b.query(kv.list_prefix("b/", after="b/15", keys_only=True)).data["keys"] == [
        "b/2", "b/3"]
    assert b.query(kv.list_prefix("b/", after="z", keys_only=True)).data["keys"] == []
    assert b.query(kv.list_prefix("zz")).data == {"items": [], "more": False}
    # Deleting and re-adding keeps the order right.
    b.apply(kv.delete("b/10"))
    b.apply(kv.put("b/0", 0))
    assert b.query(kv.list_prefix("b/", keys_only=True)).data["keys"] == [
        "b/0", "b/1", "b/2", "b/3"]
    assert b.query({"op": "list", "prefix": None, "limit": None, "after": None}).data[
        "items"][0] == ["a", "A"]


@pytest.mark.timeout(10)
def test_state_cannot_be_changed_through_values() -> None:
    b = make()
    value = {"list": [1]}
    command = kv.put("k", value)
    b.apply(command)
    value["list"].append(2)
    got = b.query(kv.get("k")).data["value"]
    got["list"].append(3)
    assert b.query(kv.get("k")).data["value"] == {"list": [1]}


# --------------------------------------------------------------------------- rejections


BAD_COMMANDS: list[tuple[Any, str]] = [
    (None, "a command must be a map, not NoneType"),
    ([1, 2], "a command must be a map, not list"),
    ({}, "no 'op' field"),
    ({"op": 3}, "op must be a str, not int"),
    ({"op": "frobnicate"}, "unknown op 'frobnicate'"),
    ({"op": "put", "key": "k"}, "needs field(s) 'value'"),
    ({"op": "put", "key": "k", "value": 1, "ttl": 3}, "unknown field(s) 'ttl'"),
    ({"op": "put", "key": "k", "value": 1, 7: 3}, "field names must be str"),
    ({"op": "put", "key": 1, "value": 1}, "key must be a str, not int"),
    ({"op": "put", "key": b"k", "value": 1}, "key must be a str, not bytes"),
    ({"op": "put", "key": "", "value": 1}, "key must not be empty"),
    ({"op": "put", "key": "x" * (MAX_KEY_BYTES + 1), "value": 1}, "the limit is 4096"),
    ({"op": "put", "key": "\ud800", "value": 1}, "not valid UTF-8"),
    ({"op": "put", "key": "k", "value": {1, 2}}, "value is not msgpack-able"),
    ({"op": "put", "key": "k", "value": object()}, "value is not msgpack-able"),
    ({"op": "put", "key": "k", "value": 2**64}, "does not fit in 64 bits"),
    ({"op": "put", "key": "k", "value": ["\udfff"]}, "not valid UTF-8"),
    ({"op": "put", "key": "k", "value": "\udfff"}, "not valid UTF-8"),
    ({"op": "put", "key": "k", "value": -(2**63) - 1}, "does not fit in 64 bits"),
    ({"op": "put", "key": "k", "value": {(1, 2): 3}}, "a map key is a list or map"),
    ({"op": "cas", "key": "k", "value": 1}, "needs field(s) 'expected'"),
    ({"op": "cas", "key": "k", "expected": {3j}, "value": 1}, "expected is not msgpack-able"),
    ({"op": "delete", "key": "k", "expected": set()}, "expected is not msgpack-able"),
    ({"op": "get"}, "needs field(s) 'key'"),
    ({"op": "list", "prefix": 3}, "prefix must be a str"),
    ({"op": "list", "limit": 0}, "limit must be >= 1"),
    ({"op": "list", "limit": True}, "limit must be an int or None, not bool"),
    ({"op": "list", "limit": 1.0}, "limit must be an int or None, not float"),
    ({"op": "list", "after": ""}, "after must not be empty"),
    ({"op": "list", "keys_only": 1}, "keys_only must be a bool"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("command", "reason"), BAD_COMMANDS)
def test_malformed_commands_are_rejected(command: Any, reason: str) -> None:
    b = make()
    b.apply(kv.put("k", "before"))
    with pytest.raises(CommandRejected) as info:
        b.apply(command)
    assert reason in info.value.reason
    with pytest.raises(CommandRejected):
        b.apply_session(command, "s1")
    assert everything(b) == {"k": ("before", None)}


@pytest.mark.timeout(10)
def test_deep_values_are_rejected_not_crashing() -> None:
    value: Any = 0
    for _ in range(5000):
        value = [value]
    with pytest.raises(CommandRejected, match="not msgpack-able"):
        make().apply({"op": "put", "key": "k", "value": value})


@pytest.mark.timeout(10)
def test_queries_may_only_read() -> None:
    b = make()
    for command in (kv.put("k", 1), kv.delete("k"), kv.cas("k", None, 1)):
        with pytest.raises(CommandRejected, match="queries may only get or list"):
            b.query(command)
    assert len(b) == 0


@pytest.mark.timeout(10)
def test_helpers_validate_early() -> None:
    with pytest.raises(CommandRejected, match="key must be a str"):
        kv.put(1, 2)  # type: ignore[arg-type]
    with pytest.raises(CommandRejected, match="value is not msgpack-able"):
        kv.cas("k", None, {1})
    with pytest.raises(CommandRejected, match="limit must be >= 1"):
        kv.list_prefix(limit=0)
    assert kv.delete("k") == {"op": "delete", "key": "k"}
    assert kv.delete("k", None) == {"op": "delete", "key": "k", "expected": None}
    assert kv.list_prefix("p", limit=2, after="p1", keys_only=True) == {
        "op": "list", "prefix": "p", "limit": 2, "after": "p1", "keys_only": True}


def _values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
        | st.floats() | st.text(max_size=8) | st.binary(max_size=8)
        | st.sampled_from([set(), (1, "a"), object(), 3j, "\ud800", frozenset({1})])
    )
    return st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(scalars.filter(lambda x: x.__hash__ is not None), inner, max_size=3),
        max_leaves=8,
    )


_FIELD_NAMES = st.sampled_from(
    ["op", "key", "value", "expected", "prefix", "limit", "after", "keys_only", "x"]
)
_OPS = st.sampled_from(["put", "get", "delete", "cas", "list", "bogus"]) | _values()
_COMMANDS = (
    st.fixed_dictionaries({"op": _OPS}, optional={
        "key": st.text(max_size=4) | _values(),
        "value": _values(),
        "expected": _values(),
        "prefix": st.text(max_size=2) | _values(),
        "limit": st.integers(-2, 3) | _values(),
        "after": st.text(max_size=2) | _values(),
        "keys_only": st.booleans() | _values(),
    })
    | st.dictionaries(_FIELD_NAMES | _values().filter(lambda x: x.__hash__ is not None),
                      _values(), max_size=4)
    | _values()
)


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(commands=st.lists(_COMMANDS, min_size=1, max_size=12))
def test_random_input_only_ever_rejects(commands: list[Any]) -> None:
    b = make()
    b.apply(kv.put("seed", 1))
    for command in commands:
        for call in (b.apply, b.query, lambda c: b.apply_session(c, "s")):
            before = everything(b)
            try:
                outcome = call(command)
            except CommandRejected:
                assert everything(b) == before  # a rejection changes nothing
                continue
            assert isinstance(outcome, ApplyResult | QueryResult)
            msgpack.packb(outcome.data if isinstance(outcome, QueryResult) else outcome.result,
                          use_bin_type=True)


@pytest.mark.timeout(120)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    puts=st.lists(
        st.fixed_dictionaries({
            "op": st.just("put"),
            "key": st.text(max_size=3)
            | st.sampled_from(["k", "é", "\ud800", "x" * MAX_KEY_BYTES, "y" * (MAX_KEY_BYTES + 1)]),
            "value": _values(),
        }),
        min_size=1, max_size=10,
    )
)
def test_put_fast_path_matches_the_general_path(puts: list[dict[str, Any]]) -> None:
    """apply() takes a shortcut for plain puts; it must answer, change and refuse exactly
    as the general parser does."""
    fast, general = make(), make()
    for command in puts:
        try:
            expected: Any = general._write(kv._Parsed.parse(command, kv._ALL_OPS), None)
        except CommandRejected as exc:
            expected = ("rejected", exc.reason)
        try:
            got: Any = fast.apply(command)
        except CommandRejected as exc:
            got = ("rejected", exc.reason)
        assert repr(got) == repr(expected)  # repr: NaN equals itself there
        assert fast._data == general._data  # the stored values are their encodings
        assert fast._owner == general._owner and fast._keys() == general._keys()


# --------------------------------------------------------------------------- sessions


@pytest.mark.timeout(10)
def test_temporary_keys_expire_with_their_session() -> None:
    b = make()
    b.apply(kv.put("persistent", 0))
    assert b.apply_session(kv.put("eph/a", 1), "s1") == ApplyResult(
        {"created": True}, frozenset({"eph/a"}))
    b.apply_session(kv.cas("eph/b", None, 2), "s1")
    b.apply_session(kv.put("eph/c", 3), "s2")
    assert b.owner("eph/a") == "s1" and b.owner("eph/c") == "s2"
    assert b.owner("persistent") is None
    assert b.expire_session("s1") == frozenset({"eph/a", "eph/b"})
    assert set(everything(b)) == {"persistent", "eph/c"}
    assert b.expire_session("s1") == frozenset()
    assert b.expire_session("never-seen") == frozenset()
    assert b.expire_session("s2") == frozenset({"eph/c"})
    assert set(everything(b)) == {"persistent"}


@pytest.mark.timeout(10)
def test_ownership_is_fixed_at_creation() -> None:
    b = make()
    b.apply_session(kv.put("e", 1), "s1")
    b.apply_session(kv.put("e", 2), "s1")  # its own key: fine
    b.apply(kv.put("e", 3))  # plain write keeps the owner
    assert b.owner("e") == "s1"
    with pytest.raises(CommandRejected, match="belongs to another session"):
        b.apply_session(kv.put("e", 4), "s2")
    with pytest.raises(CommandRejected, match="belongs to another session"):
        b.apply_session(kv.cas("e", 3, 4), "s2")
    # A failed cas writes nothing, so it is not a rejection.
    assert b.apply_session(kv.cas("e", None, 4), "s2").result["swapped"] is False
    b.apply(kv.put("p", 1))
    with pytest.raises(CommandRejected, match="is persistent"):
        b.apply_session(kv.put("p", 2), "s1")
    assert b.query(kv.get("e")).data["value"] == 3
    assert b.expire_session("s1") == frozenset({"e"})
    assert set(everything(b)) == {"p"}


@pytest.mark.timeout(10)
def test_deleted_temporary_key_recreated_persistent_survives() -> None:
    b = make()
    b.apply_session(kv.put("k", 1), "s1")
    assert b.apply(kv.delete("k")).trigger_keys == frozenset({"k"})
    assert b.owner("k") is None
    b.apply(kv.put("k", 2))
    assert b.expire_session("s1") == frozenset()
    assert everything(b) == {"k": (2, None)}


@pytest.mark.timeout(10)
def test_session_writes_are_put_or_cas_only() -> None:
    b = make()
    for command in (kv.get("k"), kv.delete("k"), kv.list_prefix()):
        with pytest.raises(CommandRejected, match="temporary data is created by put or cas"):
            b.apply_session(command, "s1")
    for session in ("", None, 3):
        with pytest.raises(CommandRejected, match="session id"):
            b.apply_session(kv.put("k", 1), session)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- watches


@pytest.mark.timeout(10)
def test_trigger_keys() -> None:
    b = make()
    assert b.apply(kv.put("a", 1)).trigger_keys == frozenset({"a"})
    assert b.apply(kv.put("a", 1)).trigger_keys == frozenset({"a"})  # a write, even if same
    assert b.apply(kv.cas("a", 2, 3)).trigger_keys == frozenset()
    assert b.apply(kv.cas("a", 1, 3)).trigger_keys == frozenset({"a"})
    assert b.apply(kv.delete("a", expected=9)).trigger_keys == frozenset()
    assert b.apply(kv.delete("a")).trigger_keys == frozenset({"a"})
    assert b.apply(kv.delete("a")).trigger_keys == frozenset()
    assert b.apply(kv.get("a")).trigger_keys == frozenset()
    assert b.apply(kv.list_prefix()).trigger_keys == frozenset()


@pytest.mark.timeout(10)
def test_watch_keys_fire_on_the_right_writes() -> None:
    b = make()
    get_watch = b.query(kv.get("cfg/a")).watch
    list_watch = b.query(kv.list_prefix("cfg/")).watch
    assert get_watch is not None and list_watch is not None
    assert get_watch.keys == frozenset({"cfg/a"}) and not get_watch.prefixes
    assert list_watch.keys == frozenset() and list_watch.prefixes == frozenset({"cfg/"})
    other = b.apply(kv.put("cfg/b", 1)).trigger_keys
    assert not get_watch.matches(other) and list_watch.matches(other)
    created = b.apply(kv.put("cfg/a", 1)).trigger_keys
    assert get_watch.matches(created) and list_watch.matches(created)
    outside = b.apply(kv.put("cfgx", 1)).trigger_keys
    assert not get_watch.matches(outside) and not list_watch.matches(outside)
    b.apply_session(kv.put("cfg/eph", 1), "s")
    assert list_watch.matches(b.expire_session("s"))


# --------------------------------------------------------------------------- snapshots


def populated() -> KeyValueBackend:
    b = make()
    for i in range(50):
        b.apply(kv.put(f"k{i:03d}", {"i": i, "blob": bytes([i]) * i, "f": i / 7}))
    b.apply_session(kv.put("eph/1", "one"), "s1")
    b.apply_session(kv.put("eph/2", "two"), "s2")
    b.apply(kv.put("ünïcode/ключ", ["x"]))
    b.apply(kv.delete("k007"))
    return b


@pytest.mark.timeout(10)
def test_snapshot_install_round_trip(tmp_path: Path) -> None:
    original = populated()
    first = snapshot_bytes(original, tmp_path / "one")
    restored = make()
    restored.apply(kv.put("stale", 1))
    restored.apply_session(kv.put("stale-eph", 1), "s1")
    restored.install(tmp_path / "one")
    assert everything(restored) == everything(original)
    assert "stale" not in everything(restored)
    assert snapshot_bytes(restored, tmp_path / "two") == first
    # Ownership survives: expiring s1 deletes exactly its key on both.
    assert restored.expire_session("s1") == original.expire_session("s1") == frozenset(
        {"eph/1"})
    # Listing still works after install (the sorted index was rebuilt).
    restored.apply(kv.put("a-first", 0))
    assert restored.query(kv.list_prefix(keys_only=True, limit=1)).data["keys"] == ["a-first"]


@pytest.mark.timeout(10)
def test_empty_snapshot_round_trip(tmp_path: Path) -> None:
    snapshot_bytes(make(), tmp_path)
    restored = populated()
    restored.install(tmp_path)
    assert len(restored) == 0 and everything(restored) == {}


@pytest.mark.timeout(10)
def test_background_snapshot_sees_the_state_when_taken(tmp_path: Path) -> None:
    b = populated()
    expected = everything(b)
    writer = b.snapshot()
    assert writer.background
    b.apply(kv.put("later", 1))
    b.apply(kv.delete("k001"))
    b.expire_session("s1")
    writer(tmp_path)
    assert not (tmp_path / (SNAPSHOT_FILE + ".tmp")).exists()
    restored = make()
    restored.install(tmp_path)
    assert everything(restored) == expected


_HEADER = struct.Struct("<4sHHIQ")


def _write_raw(directory: Path, objects: list[Any], version: int = 1) -> None:
    body = b"".join(msgpack.packb(o, use_bin_type=True) for o in objects)
    header = _HEADER.pack(b"ZRKV", version, 0, zlib.crc32(body), len(body))
    (directory / SNAPSHOT_FILE).write_bytes(header + body)


def _damage(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    if kind == "flip":
        data[len(data) // 2] ^= 0x40
    elif kind == "truncate":
        del data[-5:]
    elif kind == "extend":
        data += b"\0"
    elif kind == "magic":
        data[0:4] = b"NOPE"
    elif kind == "header":
        del data[10:]
    elif kind == "empty":
        data.clear()
    path.write_bytes(bytes(data))


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("flip", "checksum mismatch"),
        ("truncate", "the header says"),
        ("extend", "the header says"),
        ("magic", "not a key-value snapshot"),
        ("header", "too short for a header"),
        ("empty", "too short for a header"),
    ],
)
def test_damaged_snapshot_is_refused(tmp_path: Path, kind: str, message: str) -> None:
    snapshot_bytes(populated(), tmp_path)
    _damage(tmp_path / SNAPSHOT_FILE, kind)
    victim = make()
    victim.apply(kv.put("mine", 1))
    with pytest.raises(InvalidSnapshot) as info:
        victim.install(tmp_path)
    assert message in str(info.value)
    assert str(tmp_path / SNAPSHOT_FILE) in str(info.value)
    assert everything(victim) == {"mine": (1, None)}  # the old state is kept


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ([], "does not start with an entry count"),
        (["x"], "does not start with an entry count"),
        ([-1], "does not start with an entry count"),
        ([2, ["a", msgpack.packb(1), None]], "1 entries, the count says 2"),
        ([1, ["a", msgpack.packb(1)]], "entry 0 is not [key, value, owner]"),
        ([1, [1, msgpack.packb(1), None]], "entry 0: key must be a str"),
        ([2, ["b", msgpack.packb(1), None], ["a", msgpack.packb(1), None]], "out of order"),
        ([2, ["a", msgpack.packb(1), None], ["a", msgpack.packb(1), None]], "out of order"),
        ([1, ["a", 1, None]], "the value is not bytes"),
        ([1, ["a", b"\xc1", None]], "undecodable value"),
        ([1, ["a", msgpack.packb(1) + b"\x01", None]], "undecodable value"),
        ([1, ["a", msgpack.packb(1), 7]], "bad owner session"),
        ([1, ["a", msgpack.packb(1), ""]], "bad owner session"),
    ],
)
def test_well_checksummed_but_invalid_body_is_refused(
    tmp_path: Path, objects: list[Any], message: str
) -> None:
    _write_raw(tmp_path, objects)
    with pytest.raises(InvalidSnapshot) as info:
        make().install(tmp_path)
    assert message in str(info.value)


@pytest.mark.timeout(10)
def test_unknown_version_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidSnapshot, match="the file is missing"):
        make().install(tmp_path)
    _write_raw(tmp_path, [0], version=2)
    with pytest.raises(InvalidSnapshot, match="unsupported format version 2"):
        make().install(tmp_path)
    (tmp_path / SNAPSHOT_FILE).write_bytes(_HEADER.pack(b"ZRKV", 1, 0, 0, 1) + b"\xc1")
    with pytest.raises(InvalidSnapshot, match="undecodable body"):
        make().install(tmp_path)


# --------------------------------------------------------------------------- determinism

_KEYS = st.sampled_from(["a", "b", "c", "d/1", "d/2", "d/3", "é"])
_SMALL = st.none() | st.integers(-3, 3) | st.text(max_size=3) | st.lists(st.integers(0, 2),
                                                                         max_size=2)
_STEPS = st.one_of(
    st.tuples(st.just("apply"), st.builds(kv.put, _KEYS, _SMALL)),
    st.tuples(st.just("apply"), st.builds(kv.delete, _KEYS)),
    st.tuples(st.just("apply"), st.builds(kv.cas, _KEYS, _SMALL, _SMALL)),
    st.tuples(st.just("apply"), st.builds(lambda p: kv.list_prefix(p), st.sampled_from(
        ["", "d/"]))),
    st.tuples(st.sampled_from(["s1", "s2"]), st.builds(kv.put, _KEYS, _SMALL)),
    st.tuples(st.sampled_from(["s1", "s2"]), st.builds(kv.cas, _KEYS, _SMALL, _SMALL)),
    st.tuples(st.just("expire"), st.sampled_from(["s1", "s2", "s3"])),
)


def _step(b: KeyValueBackend, step: tuple[str, Any]) -> Any:
    kind, arg = step
    try:
        if kind == "apply":
            return b.apply(arg)
        if kind == "expire":
            return b.expire_session(arg)
        return b.apply_session(arg, kind)
    except CommandRejected as exc:
        return ("rejected", exc.reason)


@pytest.mark.timeout(120)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(_STEPS, max_size=40), cut=st.integers(0, 40))
def test_same_commands_same_snapshot_bytes(
    tmp_path_factory: pytest.TempPathFactory, steps: list[tuple[str, Any]], cut: int
) -> None:
    root = tmp_path_factory.mktemp("det")
    one, two = make(), make()
    # A third peer catches up from a snapshot taken part-way, then replays the rest.
    cut = min(cut, len(steps))
    for step in steps[:cut]:
        assert _step(one, step) == _step(two, step)
    snapshot_bytes(one, root / "mid")
    three = make()
    three.install(root / "mid")
    for step in steps[cut:]:
        results = {repr(_step(b, step)) for b in (one, two, three)}
        assert len(results) == 1
    final = snapshot_bytes(one, root / "one")
    assert snapshot_bytes(two, root / "two") == final
    assert snapshot_bytes(three, root / "three") == final


@pytest.mark.timeout(10)
def test_snapshot_bytes_do_not_depend_on_history(tmp_path: Path) -> None:
    forward, backward = make(), make()
    for key in ["a", "b", "c"]:
        forward.apply(kv.put(key, key))
    for key in ["c", "b", "a", "x"]:
        backward.apply(kv.put(key, key))
    backward.apply(kv.delete("x"))
    assert snapshot_bytes(forward, tmp_path / "f") == snapshot_bytes(backward, tmp_path / "b")

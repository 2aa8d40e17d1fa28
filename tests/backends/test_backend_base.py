"""The backend protocol: result types, the apply-layer helpers and load_backend."""

from __future__ import annotations

import dataclasses
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO
from zraft.backends import (
    ApplyResult,
    Backend,
    BackendFailure,
    BackendLoadError,
    CommandRejected,
    Failure,
    KeyValueBackend,
    NotSupported,
    QueryResult,
    SnapshotWriter,
    WatchSpec,
    checked_apply,
    checked_expire,
    checked_query,
    load_backend,
)


class Scripted(Backend):
    """A backend whose apply/query raise or return whatever the test tells it."""

    def __init__(self) -> None:
        self.outcome: Any = ApplyResult("ok")
        self.count = 0

    def _run(self) -> Any:
        self.count += 1
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome

    def query(self, query: Any) -> QueryResult:
        return self._run()  # type: ignore[no-any-return]

    def apply(self, command: Any) -> ApplyResult:
        return self._run()  # type: ignore[no-any-return]

    def expire_session(self, session_id: str) -> frozenset[str]:
        return self._run()  # type: ignore[no-any-return]

    def snapshot(self) -> SnapshotWriter:
        return SnapshotWriter(lambda directory: None)

    def install(self, directory: Path) -> None:
        pass


# --------------------------------------------------------------------------- result types


@pytest.mark.timeout(10)
def test_results_normalise_keys_to_frozensets() -> None:
    assert ApplyResult(1, {"a", "b"}).trigger_keys == frozenset({"a", "b"})  # type: ignore[arg-type]
    assert isinstance(ApplyResult(1, ["a"]).trigger_keys, frozenset)  # type: ignore[arg-type]
    query = QueryResult("d", ["k"], ["p/"])  # type: ignore[arg-type]
    assert query.watch == WatchSpec(frozenset({"k"}), frozenset({"p/"}))
    assert QueryResult("d").watch is None


@pytest.mark.timeout(10)
def test_results_refuse_bad_keys() -> None:
    with pytest.raises(TypeError, match="single str"):
        ApplyResult(1, "abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="contain str"):
        ApplyResult(1, frozenset({1}))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="watch_prefixes need watch_keys"):
        QueryResult("d", None, frozenset({"p"}))


@pytest.mark.timeout(10)
def test_watch_spec_matches_keys_and_prefixes() -> None:
    spec = WatchSpec(frozenset({"a"}), frozenset({"dir/"}))
    assert spec.matches(["a"])
    assert spec.matches(["x", "dir/y"])
    assert not spec.matches(["ab", "dir", "b"])
    assert not spec.matches([])
    assert WatchSpec(prefixes=frozenset({""})).matches(["anything"])


@pytest.mark.timeout(10)
def test_failure_wire_round_trip() -> None:
    failure = Failure("rejected", "why")
    assert Failure.from_wire(failure.to_wire()) == failure
    for bad in (None, {"code": "x"}, {"code": 1, "reason": "r"}, {"code": "x", "reason": "r",
                                                                    "extra": 1}):
        with pytest.raises(ValueError):
            Failure.from_wire(bad)


@pytest.mark.timeout(10)
def test_snapshot_writer_passes_a_path(tmp_path: Path) -> None:
    seen: list[Path] = []
    writer = SnapshotWriter(seen.append, background=True)
    writer(str(tmp_path))
    assert seen == [tmp_path]
    assert writer.background


# --------------------------------------------------------------------------- defaults


@pytest.mark.timeout(10)
def test_default_hooks() -> None:
    backend = Scripted()
    backend.init("p:1")
    with pytest.raises(NotSupported, match="temporary"):
        backend.apply_session({"op": "x"}, "s")
    assert Backend.expire_session(backend, "s") == frozenset()
    backend.snapshot_done()
    backend.snapshot_failed(RuntimeError("x"))
    backend.close()


@pytest.mark.timeout(10)
def test_backend_is_abstract() -> None:
    with pytest.raises(TypeError):
        Backend()  # type: ignore[abstract]


# --------------------------------------------------------------------------- apply layer


@pytest.mark.timeout(10)
def test_checked_apply_turns_errors_into_failures(caplog: pytest.LogCaptureFixture) -> None:
    backend = Scripted()
    assert checked_apply(backend, {}) == ApplyResult("ok")
    backend.outcome = CommandRejected("bad key")
    assert checked_apply(backend, {}) == Failure("rejected", "bad key")
    backend.outcome = NotSupported("thing", "Scripted")
    assert checked_apply(backend, {}) == Failure("not_supported",
                                                 "thing is not supported by Scripted")
    backend.outcome = KeyError("secret at 0x7f00")
    with caplog.at_level("ERROR"):
        failure = checked_apply(backend, {})
    # Only the type survives: messages may differ between processes.
    assert failure == Failure("backend_error", "apply raised KeyError")
    assert "Scripted.apply raised" in caplog.text
    backend.outcome = "not a result"
    assert checked_apply(backend, {}) == Failure("backend_error", "apply returned str")


@pytest.mark.timeout(10)
def test_checked_apply_session_uses_apply_session() -> None:
    backend = Scripted()
    assert checked_apply(backend, {"op": "put"}, "s1") == Failure(
        "not_supported", "temporary (session-owned) data is not supported by Scripted"
    )
    kv = KeyValueBackend()
    result = checked_apply(kv, {"op": "put", "key": "k", "value": 1}, "s1")
    assert isinstance(result, ApplyResult)
    assert kv.owner("k") == "s1"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("error", [MemoryError(), RecursionError(), OSError(5, "EIO")])
def test_environmental_errors_stop_the_peer(error: BaseException) -> None:
    backend = Scripted()
    backend.outcome = error
    with pytest.raises(BackendFailure) as info:
        checked_apply(backend, {})
    assert info.value.__cause__ is error
    with pytest.raises(BackendFailure):
        checked_expire(backend, "s")
    # A query runs on one peer only: it just fails.
    assert checked_query(backend, {}) == Failure(
        "backend_error", f"query raised {type(error).__name__}"
    )


@pytest.mark.timeout(10)
def test_checked_query_and_expire() -> None:
    backend = Scripted()
    backend.outcome = QueryResult(1, frozenset())
    assert checked_query(backend, {}) == QueryResult(1, frozenset())
    backend.outcome = ApplyResult(1)
    assert checked_query(backend, {}) == Failure("backend_error", "query returned ApplyResult")
    backend.outcome = CommandRejected("no")
    assert checked_query(backend, {}) == Failure("rejected", "no")
    assert checked_expire(backend, "s") == frozenset()
    backend.outcome = {"a", "b"}
    assert checked_expire(backend, "s") == frozenset({"a", "b"})
    backend.outcome = [1]
    assert checked_expire(backend, "s") == frozenset()


# --------------------------------------------------------------------------- load_backend


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    package = tmp_path / "zr_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "good.py").write_text(textwrap.dedent("""
        from zraft.backends.kv import KeyValueBackend
        from zraft.backends.base import Backend

        class Mine(KeyValueBackend):
            pass

        class Holder:
            Inner = Mine

        class NotABackend:
            pass

        class Half(Backend):
            def query(self, query):
                return None

        value = 3
    """))
    (package / "broken.py").write_text("import zr_missing_dependency_xyz\n")
    (package / "crashes.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [m for m in sys.modules if m.startswith("zr_plugins")]:
        del sys.modules[name]


@pytest.mark.timeout(10)
def test_load_backend_success(plugin_dir: Path) -> None:
    assert load_backend("zraft.backends.kv:KeyValueBackend") is KeyValueBackend
    mine = load_backend("zr_plugins.good:Mine")
    assert issubclass(mine, KeyValueBackend)
    assert load_backend("zr_plugins.good:Holder.Inner") is mine
    assert load_backend("  zr_plugins.good:Mine ") is mine


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("zraft.backends.kv.KeyValueBackend", "not an import path"),
        ("zraft.backends.kv:", "not an import path"),
        (":KeyValueBackend", "not an import path"),
        ("a:b:c", "not an import path"),
        ("zraft backends:X", "not an import path"),
        ("zr_plugins.nope:X", "module 'zr_plugins.nope' not found"),
        ("zr_nothing_here:X", "module 'zr_nothing_here' not found"),
        ("zr_plugins.broken:X", "importing 'zr_plugins.broken' failed"),
        ("zr_plugins.crashes:X", "RuntimeError: boom at import"),
        ("zr_plugins.good:Missing", "has no attribute 'Missing'"),
        ("zr_plugins.good:Holder.Missing", "has no attribute 'Holder.Missing'"),
        ("zr_plugins.good:NotABackend", "not a subclass of zraft.backends.Backend"),
        ("zr_plugins.good:value", "not a subclass"),
        ("zr_plugins.good:Half", "is abstract (does not implement apply, install, snapshot)"),
    ],
)
def test_load_backend_errors(plugin_dir: Path, path: str, message: str) -> None:
    with pytest.raises(BackendLoadError) as info:
        load_backend(path)
    assert message in str(info.value)
    assert repr(path) in str(info.value)


@pytest.mark.timeout(10)
def test_load_backend_refuses_non_strings() -> None:
    with pytest.raises(BackendLoadError, match="must be a str"):
        load_backend(KeyValueBackend)  # type: ignore[arg-type]


@pytest.mark.timeout(10)
def test_the_documented_example_backend_works(tmp_path: Path) -> None:
    docs = REPO / "docs" / "backends.md"
    blocks = re.findall(r"```python\n(.*?)```", docs.read_text(), re.DOTALL)
    source = next(b for b in blocks if "class Counter(Backend)" in b)
    namespace: dict[str, Any] = {}
    exec(compile(source, str(docs), "exec"), namespace)
    counter_cls = namespace["Counter"]
    assert not inspect.isabstract(counter_cls)
    one = counter_cls()
    assert checked_apply(one, {"incr": "a", "by": 2}) == ApplyResult(2, frozenset({"a"}))
    assert checked_apply(one, {"incr": "a"}) == Failure(
        "rejected", "expected {'incr': name, 'by': n}")
    writer = one.snapshot()
    one.apply({"incr": "a", "by": 5})
    writer(tmp_path)
    two = counter_cls()
    two.install(tmp_path)
    assert two.query({"read": "a"}) == QueryResult(2, frozenset({"a"}))


@pytest.mark.timeout(10)
def test_apply_result_checks_trigger_keys_in_dataclass_subclasses_too() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Tagged(ApplyResult):
        tag: str = ""

    assert Tagged(1, ["a"], "t").trigger_keys == frozenset({"a"})
    with pytest.raises(TypeError):
        Tagged(1, [7], "t")  # type: ignore[list-item]
    plain = ApplyResult({"x": 1}, ["k"])
    assert plain.trigger_keys == frozenset({"k"}) and plain == ApplyResult({"x": 1}, {"k"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        plain.result = 2  # type: ignore[misc]
    assert dataclasses.replace(plain, result=3) == ApplyResult(3, frozenset({"k"}))

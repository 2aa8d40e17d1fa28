"""``PeerRuntime.start()`` undoes what it started when a later step fails (in-process)."""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pykka
import pytest
import zmq

from tests.support.cluster_support import single_peer_settings
from zraft.actors import runtime as runtime_module
from zraft.actors.metrics import MetricsServer
from zraft.actors.runtime import PeerRuntime, StartupError
from zraft.backends.kv import KeyValueBackend
from zraft.local import free_ports
from zraft.settings import Settings
from zraft.storage import ReadOnlyStorageError, SegmentedLog
from zraft.transport import TransportError

BACKEND = "zraft.backends.kv:KeyValueBackend"


@contextmanager
def nothing_left_behind() -> Iterator[None]:
    """The body may start threads and actors; none may be left once it is done."""
    threads = set(threading.enumerate())
    actors = set(pykka.ActorRegistry.get_all())
    yield
    deadline = time.monotonic() + 5
    while True:
        extra = [t for t in threading.enumerate() if t not in threads and t.is_alive()]
        if not extra:
            break
        assert time.monotonic() < deadline, f"threads left running: {extra}"
        time.sleep(0.02)
    assert set(pykka.ActorRegistry.get_all()) <= actors


def assert_released(settings: Settings) -> None:
    """The peer port binds again and the log opens (its lock is free)."""
    host, port = str(settings.peer_id).rsplit(":", 1)
    with socket.socket() as sock:
        sock.bind((host, int(port)))
    SegmentedLog(Path(settings.data_dir) / "log", fsync=False).close()


def with_metrics(settings: Settings, port: int) -> Settings:
    return Settings.load(
        peer_id=settings.peer_id,
        peers=settings.peers,
        data_dir=settings.data_dir,
        backend=settings.backend,
        election_timeout=200,
        metrics_port=port,
    )


@pytest.mark.timeout(60)
def test_metrics_port_in_use_fails_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (metrics_port,) = free_ports(1)
    settings = with_metrics(single_peer_settings(tmp_path, BACKEND), metrics_port)
    opened: list[Any] = []
    monkeypatch.setattr(runtime_module, "SegmentedLog", lambda *a, **k: opened.append(a))
    with socket.socket() as taken, nothing_left_behind():
        taken.bind(("127.0.0.1", metrics_port))
        taken.listen()
        with pytest.raises(StartupError) as failure:
            PeerRuntime(settings).start()
    assert str(failure.value) == f"metrics port 127.0.0.1:{metrics_port} is in use"
    assert opened == []  # failed before the disk was touched


@pytest.mark.timeout(60)
def test_a_failure_after_the_actors_started_stops_them_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (metrics_port,) = free_ports(1)
    settings = with_metrics(single_peer_settings(tmp_path, BACKEND), metrics_port)

    def broken_start(self: MetricsServer) -> None:  # the last step of start()
        raise RuntimeError("no serving today")

    monkeypatch.setattr(MetricsServer, "start", broken_start)
    with nothing_left_behind():
        runtime = PeerRuntime(settings)
        with pytest.raises(StartupError, match="RuntimeError: no serving today"):
            runtime.start()
        assert runtime.peer is not None and not runtime.peer.is_alive()
        assert runtime.stopped.is_set()
    assert_released(settings)
    with socket.socket() as sock:  # the metrics port too
        sock.bind(("127.0.0.1", metrics_port))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_thread", [False, True])
def test_a_failure_among_the_actors_stops_those_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_thread: bool
) -> None:
    base = single_peer_settings(tmp_path, BACKEND)
    settings = Settings.load(
        peer_id=base.peer_id,
        peers=base.peers,
        data_dir=tmp_path,
        backend=BACKEND,
        election_timeout=200,
        log_thread=log_thread,
    )

    def broken_start(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("peer actor refused")

    monkeypatch.setattr(runtime_module.PeerActor, "start", broken_start)
    with nothing_left_behind():
        runtime = PeerRuntime(settings)
        with pytest.raises(StartupError, match="peer actor refused"):
            runtime.start()
        # The session, snapshot (and log) actors had started; the transport was bound.
        assert len(runtime._actors) == (3 if log_thread else 2)
        assert not any(ref.is_alive() for ref in runtime._actors)
    assert_released(settings)


@pytest.mark.timeout(60)
def test_an_interrupt_during_start_up_is_undone_and_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = single_peer_settings(tmp_path, BACKEND)

    def interrupted(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(runtime_module.ReplicatedState, "__init__", interrupted)
    with nothing_left_behind(), pytest.raises(KeyboardInterrupt):
        PeerRuntime(settings).start()
    assert_released(settings)


@pytest.mark.timeout(60)
def test_stop_after_a_failed_start_does_nothing_more(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = single_peer_settings(tmp_path, "no_such_module:Backend")
    runtime = PeerRuntime(settings)
    with pytest.raises(StartupError, match="module 'no_such_module' not found"):
        runtime.start()
    runtime.stop()
    assert_released(settings)


def test_messages_name_what_failed(tmp_path: Path) -> None:
    settings = single_peer_settings(tmp_path, BACKEND)
    peer = str(settings.peer_id)
    describe = runtime_module._describe

    in_use = TransportError("cannot listen on ...")
    in_use.__cause__ = zmq.ZMQError(errno.EADDRINUSE)
    assert describe(in_use, settings, peer) == f"peer port {peer} is in use"

    log_dir = str(tmp_path / "log")
    denied = PermissionError(errno.EACCES, "Permission denied", log_dir)
    assert describe(ReadOnlyStorageError(log_dir, "create", denied), settings, peer) == (
        f"data dir {tmp_path} is not writable: Permission denied: {log_dir}"
    )
    assert describe(denied, settings, peer) == (
        f"data dir {tmp_path} is not writable: Permission denied: {log_dir}"
    )
    assert describe(ValueError("a\nb"), settings, peer) == "ValueError: a b"


def test_an_os_error_in_the_backend_is_the_backend_s(tmp_path: Path) -> None:
    settings = single_peer_settings(tmp_path, BACKEND)
    missing = tmp_path / "backend.conf"

    class Broken(KeyValueBackend):
        def init(self, peer_id: str) -> None:
            missing.read_text()

    with pytest.raises(OSError) as failure:
        Broken().init("x")
    assert runtime_module._describe(failure.value, settings, str(settings.peer_id)) == (
        f"backend {BACKEND} failed to start: FileNotFoundError: [Errno 2] No such file or "
        f"directory: '{missing}'"
    )

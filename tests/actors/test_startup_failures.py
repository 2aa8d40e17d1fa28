"""A peer that cannot start says why in one line and exits; nothing of it is left running.

Each test runs ``zraft serve`` as a real process on 127.0.0.1 with one thing wrong, and
checks that it exits non-zero within seconds, that its stderr is exactly one line naming
the problem (no traceback), and that what it had taken is free again: its peer port can be
bound and its data directory's log opened.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.paths import REPO
from zraft.core import Configuration, SnapshotMeta
from zraft.local import free_ports
from zraft.storage import SegmentedLog, SnapshotStore
from zraft.transport import ClientChannel, ClientRequest, TransportTimeout

EXIT_WITHIN = 10.0  # seconds from launch, interpreter start-up included


class Serve:
    """One ``zraft serve`` process: one peer alone in its cluster."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        port: int | None = None,
        log_level: str = "WARNING",
        env: dict[str, str] | None = None,
    ) -> None:
        self.port = port if port is not None else free_ports(1)[0]
        self.peer = f"127.0.0.1:{self.port}"
        self.data_dir = data_dir
        command = [
            sys.executable, "-m", "zraft", "serve",
            "--peer-id", self.peer, "--peers", self.peer,
            "--data-dir", str(data_dir),
            "--election-timeout", "300",
            "--log-level", log_level,
            *extra,
        ]  # fmt: skip
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            command,
            cwd=REPO,  # the test backends are imported as tests.*
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

    def finish(self, within: float = EXIT_WITHIN) -> tuple[int, list[str]]:
        """Exit code and stderr lines, failing if the process is still running ``within``
        seconds after it was launched."""
        left = max(0.1, self.started + within - time.monotonic())
        try:
            _, err = self.process.communicate(timeout=left)
        except subprocess.TimeoutExpired:
            pytest.fail(f"zraft serve still running {within:.0f}s after it was launched")
        return self.process.returncode, err.splitlines()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.communicate(timeout=10)


@contextmanager
def serving(data_dir: Path, *extra: str, **kwargs: object) -> Iterator[Serve]:
    peer = Serve(data_dir, *extra, **kwargs)  # type: ignore[arg-type]
    try:
        yield peer
    finally:
        peer.kill()  # whatever the test did


@contextmanager
def listening(port: int) -> Iterator[socket.socket]:
    """Something else listening on ``port`` of 127.0.0.1. With SO_REUSEADDR, as zmq binds
    (and so a restarted peer): connections the peer closed may linger in TIME_WAIT on its
    port, but a socket still listening there makes the bind fail all the same."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield sock
    finally:
        sock.close()


def assert_one_line(lines: list[str], *expected: str) -> None:
    assert len(lines) == 1, "\n".join(lines)
    assert lines[0].startswith("zraft serve: "), lines[0]
    assert "Traceback" not in lines[0]
    for text in expected:
        assert text in lines[0], lines[0]


def assert_released(peer: Serve) -> None:
    """The failed peer holds nothing: its port binds and its log opens (the lock is free)."""
    with listening(peer.port):
        pass
    log_dir = peer.data_dir / "log"
    if log_dir.is_dir():
        SegmentedLog(log_dir, fsync=False).close()


@pytest.mark.timeout(60)
def test_peer_port_in_use(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    with listening(port), serving(tmp_path / "data", port=port) as peer:
        code, err = peer.finish()
    assert code != 0
    assert_one_line(err, f"peer port 127.0.0.1:{port} is in use")
    assert_released(peer)


@pytest.mark.timeout(60)
def test_metrics_port_in_use(tmp_path: Path) -> None:
    (metrics_port,) = free_ports(1)
    with listening(metrics_port):
        with serving(tmp_path / "data", "--metrics-port", str(metrics_port)) as peer:
            code, err = peer.finish()
        assert code != 0
        assert_one_line(err, f"metrics port 127.0.0.1:{metrics_port} is in use")
        assert_released(peer)


@pytest.mark.timeout(60)
def test_snapshot_port_in_use(tmp_path: Path) -> None:
    (snapshot_port,) = free_ports(1)
    extra = ("--snapshot-listener-addr", "127.0.0.1", "--snapshot-listener-port")
    with listening(snapshot_port):
        with serving(tmp_path / "data", *extra, str(snapshot_port)) as peer:
            code, err = peer.finish()
        assert code != 0
        assert_one_line(err, f"snapshot port 127.0.0.1:{snapshot_port} is in use")
        assert_released(peer)


@pytest.mark.timeout(60)
def test_data_dir_locked_by_a_running_peer(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with serving(data, log_level="ERROR") as running:
        _wait_for_status(running.peer)
        with serving(data) as second:
            code, err = second.finish()
        assert code != 0
        assert_one_line(err, f"data dir {data} is in use by another running peer")
        with listening(second.port):
            pass
        _wait_for_status(running.peer)  # the running peer was not disturbed
        running.process.send_signal(signal.SIGTERM)
        assert running.finish(within=60)[0] == 0


@pytest.mark.timeout(60)
def test_unreadable_snapshot(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = SnapshotStore(data / "snapshots", fsync=False)
    path = store.create(SnapshotMeta(5, 1, Configuration.of(["127.0.0.1:1"])), lambda d: None)
    (Path(path) / "meta").write_bytes(b"not a snapshot meta file")
    with serving(data) as peer:
        code, err = peer.finish()
    assert code != 0
    assert_one_line(err, "snapshot", "cannot be read")
    assert_released(peer)


@pytest.mark.timeout(60)
def test_bad_backend_path(tmp_path: Path) -> None:
    with serving(tmp_path / "data", "--backend", "no_such_package.store:Store") as peer:
        code, err = peer.finish()
    assert code != 0
    assert_one_line(err, "backend 'no_such_package.store:Store'", "not found")
    assert_released(peer)


@pytest.mark.timeout(60)
def test_backend_failing_to_start(tmp_path: Path) -> None:
    backend = "tests.support.slow_backend:FailingStartKeyValue"
    with serving(tmp_path / "data", "--backend", backend) as peer:
        code, err = peer.finish()
    assert code != 0
    assert_one_line(err, f"backend {backend} failed to start", "cannot reach the policy")
    assert_released(peer)


@pytest.mark.timeout(60)
def test_a_leftover_thread_does_not_keep_a_failed_peer_alive(tmp_path: Path) -> None:
    backend = "tests.support.slow_backend:StuckThreadStartKeyValue"
    with serving(tmp_path / "data", "--backend", backend) as peer:
        code, err = peer.finish(within=EXIT_WITHIN + 5)  # the stuck thread gets 5 s
    assert code != 0
    assert err[0] == f"zraft serve: backend {backend} failed to start: RuntimeError: gave up"
    assert "stuck-backend-thread" in err[-1]  # named, as what the exit did not wait for
    assert_released(peer)


@pytest.mark.timeout(60)
def test_unwritable_data_dir(tmp_path: Path) -> None:
    # A regular file where the directory should be: no directory can be made in it, for
    # root too (permission bits would not stop root).
    data = tmp_path / "data"
    data.write_text("not a directory")
    with serving(data) as peer:
        code, err = peer.finish()
    assert code != 0
    assert_one_line(err, f"data dir {data} cannot be used", "Not a directory")
    with listening(peer.port):
        pass


@pytest.mark.timeout(60)
def test_debug_logging_shows_the_traceback(tmp_path: Path) -> None:
    (metrics_port,) = free_ports(1)
    with listening(metrics_port):
        extra = ("--metrics-port", str(metrics_port))
        with serving(tmp_path / "data", *extra, log_level="DEBUG") as peer:
            code, err = peer.finish()
    assert code != 0
    text = "\n".join(err)
    assert "Traceback" in text and "Address already in use" in text
    assert err[-1] == f"zraft serve: metrics port 127.0.0.1:{metrics_port} is in use"
    assert_released(peer)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_start_up_stops_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    marker = tmp_path / "init-started"
    with serving(
        tmp_path / "data",
        "--backend", "tests.support.slow_backend:SlowStartKeyValue",
        env={"ZRAFT_TEST_INIT_STARTED": str(marker)},
    ) as peer:  # fmt: skip
        deadline = time.monotonic() + 20
        while not marker.exists():  # start-up is inside the backend's minute-long init
            assert peer.process.poll() is None, peer.finish()
            assert time.monotonic() < deadline, "the backend's init never started"
            time.sleep(0.02)
        signalled = time.monotonic()
        peer.process.send_signal(sig)
        code, err = peer.finish(within=signalled - peer.started + 5)
    assert code == 0, err
    assert err == []
    assert_released(peer)


@pytest.mark.timeout(60)
def test_sigterm_stops_a_running_peer(tmp_path: Path) -> None:
    with serving(tmp_path / "data") as peer:
        _wait_for_status(peer.peer)
        peer.process.send_signal(signal.SIGTERM)
        code, err = peer.finish(within=time.monotonic() - peer.started + 15)
    assert code == 0 and err == [], err
    assert_released(peer)


def _wait_for_status(peer: str) -> None:
    deadline = time.monotonic() + 20
    with ClientChannel("zraft", f"startup-test-{os.getpid()}") as channel:
        while True:
            try:
                channel.request(peer, ClientRequest(1, "status"), 0.5)
                return
            except TransportTimeout:
                assert time.monotonic() < deadline, f"{peer} never answered"


@pytest.mark.timeout(60)
def test_the_log_level_before_serve_is_kept(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    peer = f"127.0.0.1:{port}"
    done = subprocess.run(
        [
            sys.executable, "-m", "zraft", "--log-level", "DEBUG", "serve",
            "--peer-id", peer, "--peers", peer, "--data-dir", str(tmp_path / "data"),
            "--backend", "no_such_package.store:Store",
        ],  # fmt: skip
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=EXIT_WITHIN,
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr  # DEBUG, not serve's own default
    assert done.stderr.splitlines()[-1].startswith("zraft serve: backend 'no_such_package")

"""The chaos harness's link proxies and the ports they listen on."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

from zraft import local
from zraft.chaos.proxy import LinkProxy, ProxiedLinks
from zraft.local import free_ports


class ScriptedSocket:
    """A socket whose bind to port 0 gets the next port of a script."""

    def __init__(self, ports: Iterator[int]) -> None:
        self._ports = ports
        self.port = 0
        self.closed = False

    def bind(self, address: tuple[str, int]) -> None:
        self.port = next(self._ports)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def scripted_ports(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[ScriptedSocket]]:
    """The OS offers 5001, 5002, 5001 (released and offered again), 5003, 5004, ..."""
    ports = iter([5001, 5002, 5001, 5003, 5002, 5004, 5005, 5006, 5007])
    made: list[ScriptedSocket] = []

    def make(*args: Any) -> ScriptedSocket:
        made.append(ScriptedSocket(ports))
        return made[-1]

    monkeypatch.setattr(local.socket, "socket", make)
    monkeypatch.setattr(local, "_ISSUED_PORTS", local.collections.deque(maxlen=16))
    yield made


@pytest.mark.timeout(10)
def test_free_ports_never_hands_out_a_port_twice(scripted_ports: list[ScriptedSocket]) -> None:
    assert free_ports(2) == [5001, 5002]
    # The OS offers 5001 and 5002 again, as it may once they are released: both skipped.
    assert free_ports(2) == [5003, 5004]
    assert free_ports(1, avoid=[5005]) == [5006]
    assert all(sock.closed for sock in scripted_ports)


@pytest.mark.timeout(10)
def test_a_proxy_refuses_to_forward_to_its_own_port() -> None:
    (port,) = free_ports(1)
    with pytest.raises(ValueError, match="its own port"):
        LinkProxy(port, ("127.0.0.1", port))


class EchoServer:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn: socket.socket) -> None:
        with conn:
            while data := conn.recv(4096):
                conn.sendall(data)

    def close(self) -> None:
        self.listener.close()


@contextmanager
def proxy_to_echo(**options: Any) -> Iterator[tuple[LinkProxy, int]]:
    """A proxy in front of an echo server, and the port it listens on; both closed after."""
    echo = EchoServer()
    (port,) = free_ports(1)
    proxy = LinkProxy(port, ("127.0.0.1", echo.port), **options)
    try:
        yield proxy, port
    finally:
        proxy.close()
        echo.close()


@pytest.mark.timeout(20)
def test_a_proxy_forwards_until_cut_and_again_once_restored() -> None:
    with proxy_to_echo() as (proxy, port):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"hello")
            assert conn.recv(16) == b"hello"
            proxy.set_cut(True)
            assert conn.recv(16) == b""  # a cut closes the link's connections
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            assert conn.recv(16) == b""  # and refuses new ones
        proxy.set_cut(False)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            conn.sendall(b"again")
            assert conn.recv(16) == b"again"


@pytest.mark.timeout(20)
def test_a_proxy_refuses_connections_over_its_cap_and_says_so() -> None:
    with proxy_to_echo(name="capped", max_connections=2) as (proxy, port), ExitStack() as held:
        for text in (b"one", b"two"):
            conn = held.enter_context(socket.create_connection(("127.0.0.1", port), timeout=5))
            conn.sendall(text)
            assert conn.recv(16) == text
        with socket.create_connection(("127.0.0.1", port), timeout=5) as third:
            assert third.recv(16) == b""  # refused: closed at once
        assert proxy.refused_over_cap == 1
        links = ProxiedLinks([])
        links.links[("a", "b")] = proxy
        assert links.broken() == ["capped (refused 1 connections over its cap)"]
        conn.close()  # back under the cap: accepted again, once the proxy sees it
        assert _echoed_within(port, b"four", 5.0)


def _echoed_within(port: int, text: bytes, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
                conn.sendall(text)
                if conn.recv(16) == text:
                    return True
        except OSError:  # refused and closed meanwhile
            pass
        time.sleep(0.05)
    return False

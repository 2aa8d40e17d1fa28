"""Helpers shared by the transport tests (this module holds no tests itself)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from zraft.core.messages import Message
from zraft.transport import ClientRequest, CurveSettings, ZmqTransport


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_address() -> str:
    return f"127.0.0.1:{free_port()}"


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


class Inbox:
    """Collects what a transport delivers; remembers each callback's batch size."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.messages: list[Message] = []
        self.batches: list[int] = []
        self.requests: list[tuple[bytes, ClientRequest]] = []

    def on_peer(self, msgs: list[Message]) -> None:
        with self.lock:
            self.messages.extend(msgs)
            self.batches.append(len(msgs))

    def on_client(self, reqs: list[tuple[bytes, ClientRequest]]) -> None:
        with self.lock:
            self.requests.extend(reqs)

    def count(self) -> int:
        with self.lock:
            return len(self.messages)

    def snapshot(self) -> list[Message]:
        with self.lock:
            return list(self.messages)


@contextmanager
def running(
    peer_id: str,
    peers: list[str],
    inbox: Inbox,
    *,
    cluster_id: str = "test-cluster",
    curve: CurveSettings | None = None,
    **kwargs: Any,
) -> Iterator[ZmqTransport]:
    transport = ZmqTransport(
        cluster_id=cluster_id,
        peer_id=peer_id,
        peers=peers,
        on_peer_messages=inbox.on_peer,
        on_client_requests=inbox.on_client,
        curve=curve,
        **kwargs,
    )
    transport.start()
    try:
        yield transport
    finally:
        transport.close()

"""TCP proxies on the links between peers, so a test can cut them for real.

Peer A reaches peer B through ``LinkProxy(A→B)`` (A is started with
``--routes B=127.0.0.1:<proxy port>``). Cutting a link closes its connections and refuses
new ones until it is restored: to A's ZeroMQ socket it looks like B became unreachable,
which is what a network partition does to TCP. One direction can be cut alone, since A→B
and B→A are separate connections in zraft (each peer's DEALER to the other's ROUTER).
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
from collections.abc import Iterable, Sequence

from zraft.local import free_ports

log = logging.getLogger(__name__)

_CHUNK = 1 << 16
# A peer holds one or two connections on a link. Far more means something runs away (a
# proxy once forwarded to itself, each connection opening another): refuse the excess
# rather than let it take every descriptor of the harness's process.
MAX_CONNECTIONS = 256


class LinkProxy:
    """Forwards one listening port to one target, until cut."""

    def __init__(
        self,
        listen_port: int,
        target: tuple[str, int],
        name: str = "",
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if target[1] == listen_port and target[0] in ("127.0.0.1", "localhost"):
            # It would forward to itself, each connection opening another, without end.
            raise ValueError(f"a link proxy cannot forward to its own port {listen_port}")
        self.name = name or f"{listen_port}->{target[1]}"
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", listen_port), backlog=64)
        self._listener.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, None)
        self._pairs: dict[socket.socket, socket.socket] = {}
        self._cut = False
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._stopped = False
        self.max_connections = max_connections
        self.refused_over_cap = 0
        self._thread = threading.Thread(target=self._run, name=f"proxy-{self.name}", daemon=True)
        self._thread.start()

    @property
    def cut(self) -> bool:
        return self._cut

    def set_cut(self, cut: bool) -> None:
        with self._lock:
            self._cut = cut
        self._wake_w.send(b"x")

    def close(self) -> None:
        self._stopped = True
        self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for sock in list(self._pairs):
            sock.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()
        self._selector.close()

    @property
    def running(self) -> bool:
        """False once the forwarding thread has ended (closed, or a bug)."""
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self._selector.select(timeout=0.5):
                try:
                    self._handle(key)
                except Exception:  # one bad connection must not kill the whole link
                    log.exception("proxy %s", self.name)
                    if key.fileobj in self._pairs:
                        self._close_pair(key.fileobj)  # type: ignore[arg-type]

    def _handle(self, key: selectors.SelectorKey) -> None:
        if key.data == "wake":
            self._wake_r.recv(4096)
            if self._cut:
                self._drop_all()
        elif key.fileobj is self._listener:
            self._accept()
        else:
            self._pump(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        try:
            client, _ = self._listener.accept()
        except OSError:  # nothing to accept after all, or the client gave up already
            return
        if self._cut:
            client.close()
            return
        if len(self._pairs) >= 2 * self.max_connections:
            self.refused_over_cap += 1  # counted before the close that others may see
            if self.refused_over_cap == 1:
                log.error("proxy %s: at its cap of %d connections", self.name, self.max_connections)
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=1)
        except OSError:
            client.close()
            return
        self._pairs[client] = upstream
        self._pairs[upstream] = client
        try:
            for sock in (client, upstream):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._selector.register(sock, selectors.EVENT_READ, "pipe")
        except OSError:  # one side hung up already
            self._close_pair(client)

    def _pump(self, sock: socket.socket) -> None:
        other = self._pairs.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(_CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data or self._cut:
            self._close_pair(sock)
            return
        try:
            other.settimeout(1.0)  # a peer that stopped reading must not stall the proxy
            other.sendall(data)
            other.setblocking(False)
        except OSError:
            self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._pairs.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._pairs.pop(s, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(s)
            s.close()

    def _drop_all(self) -> None:
        for sock in list(self._pairs):
            if sock in self._pairs:
                self._close_pair(sock)


class ProxiedLinks:
    """One proxy per ordered pair of peers, and the ``--routes`` each peer needs."""

    def __init__(self, peers: Sequence[str]) -> None:
        self.peers = list(peers)
        pairs = [(a, b) for a in self.peers for b in self.peers if a != b]
        ports = free_ports(len(pairs), avoid=(int(p.rsplit(":", 1)[1]) for p in self.peers))
        self.links: dict[tuple[str, str], LinkProxy] = {}
        for (a, b), port in zip(pairs, ports, strict=True):
            host, target_port = b.rsplit(":", 1)
            self.links[(a, b)] = LinkProxy(port, (host, int(target_port)), f"{a}->{b}")
        self._ports = dict(zip(pairs, ports, strict=True))

    def routes_for(self, peer: str) -> list[str]:
        """Flags for ``peer``: reach every other peer through its proxy."""
        routes = [f"{b}=127.0.0.1:{self._ports[(peer, b)]}" for b in self.peers if b != peer]
        return ["--routes", ",".join(routes)] if routes else []

    def cut(self, pairs: Iterable[tuple[str, str]]) -> None:
        for pair in pairs:
            self.links[pair].set_cut(True)

    def isolate(self, peer: str) -> None:
        """Cut every link to and from ``peer`` (clients still reach it)."""
        self.cut((a, b) for a, b in self.links if peer in (a, b))

    def heal(self) -> None:
        for link in self.links.values():
            link.set_cut(False)

    def broken(self) -> list[str]:
        """Links whose proxy stopped forwarding (should be none until ``close``), or had to
        refuse connections over its cap."""
        broken = []
        for link in self.links.values():
            if not link.running:
                broken.append(link.name)
            if link.refused_over_cap:
                broken.append(
                    f"{link.name} (refused {link.refused_over_cap} connections over its cap)"
                )
        return broken

    def close(self) -> None:
        for link in self.links.values():
            link.close()

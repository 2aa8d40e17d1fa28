"""Prometheus text-format metrics over HTTP (``metrics_port``), from the peer's status."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

log = logging.getLogger(__name__)


def render(status: dict[str, Any]) -> str:
    """The status of one peer as Prometheus exposition text (gauges and counters)."""
    peer = status["id"]
    lines = []

    def emit(name: str, value: Any, labels: str = "") -> None:
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, int | float):
            lines.append(f'zraft_{name}{{peer="{peer}"{labels}}} {value}')

    for key in ("term", "commit", "applied", "apply_lag", "last_index", "snapshot_index"):
        emit(key, status[key])
    emit("is_leader", status["role"] == "leader")
    for key, value in sorted(status["metrics"].items()):
        emit(key.replace("-", "_"), value)
    for member, info in sorted(status["members"].items()):
        emit("follower_lag", info["lag"], f',follower="{member}"')
        emit("follower_match", info["match"], f',follower="{member}"')
    return "\n".join(lines) + "\n"


class MetricsServer:
    """The metrics endpoint in two steps: the port is bound when it is made (a port in use
    fails there, before the peer has started anything), requests are served from
    ``start()``. ``close()`` is safe in either state."""

    def __init__(self, host: str, port: int, get_status: Callable[[], dict[str, Any]]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                try:
                    body = render(get_status()).encode()
                except Exception:  # a scrape must never take the peer down
                    log.exception("rendering metrics")
                    self.send_error(503)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("metrics: " + format, *args)

        self.address = (host, port)
        self.server = ThreadingHTTPServer((host, port), Handler)  # binds and listens
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self.server.serve_forever, name="zraft-metrics", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            # Only once serving: shutdown() waits for serve_forever to notice, forever if it
            # never ran.
            self.server.shutdown()
            self._thread = None
        self.server.server_close()

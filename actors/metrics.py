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


def serve_metrics(
    host: str, port: int, get_status: Callable[[], dict[str, Any]]
) -> ThreadingHTTPServer:
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

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="zraft-metrics", daemon=True).start()
    return server

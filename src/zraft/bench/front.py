"""What the benchmark's stand-in servers (PySyncObj's front end, the ceiling pipeline)
share: zraft's client frames in and out of a ROUTER, and their command line's common part."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import zmq

from zraft.transport import (
    DEFAULT_MAX_FRAME_BYTES,
    ClientReply,
    ClientRequest,
    FrameError,
    decode_batch,
    encode_batches,
)

log = logging.getLogger(__name__)


def client_requests(frame: bytes, cluster_id: str) -> list[ClientRequest]:
    """The requests in one client frame; a bad frame is dropped with a log line."""
    try:
        batch = decode_batch(frame, cluster_id=cluster_id, max_frame_bytes=DEFAULT_MAX_FRAME_BYTES)
    except FrameError as error:
        log.warning("dropped a frame: %s", error.reason)
        return []
    return [m for m in batch.messages if isinstance(m, ClientRequest)]


def identity_reply(request: ClientRequest, cluster_id: str, peer: str) -> ClientReply:
    """The ``identity`` answer of a stand-in server: one founding per cluster id (sessions
    ask every listed peer which founding it belongs to before their first request)."""
    founding = {"cluster_uuid": f"stand-in:{cluster_id}", "instance": peer}
    return ClientReply(request.request_id, True, founding)


def send_replies(
    router: zmq.Socket[Any],
    replies: Mapping[bytes, Sequence[ClientReply]],
    cluster_id: str,
    sender: str,
) -> int:
    """Each client's replies as batch frames, never blocking; returns how many went out."""
    sent = 0
    for routing_id, batch in replies.items():
        for frame, count in encode_batches(list(batch), cluster_id=cluster_id, sender=sender):
            try:
                router.send_multipart([routing_id, frame], zmq.NOBLOCK)
            except zmq.ZMQError as error:
                log.warning("reply to a client dropped: %s", error)
            else:
                sent += count
    return sent


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cluster-id", default="zraft")
    parser.add_argument("--log-level", default="WARNING")


def parse_server_args(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None
) -> argparse.Namespace:
    """Parse, then log to stderr at the asked level."""
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, args.log_level.upper(), logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return args


def serve(stopping: threading.Event, run: Callable[[], None], close: Callable[[], None]) -> int:
    """Run a server's loop until it returns (SIGTERM and SIGINT set ``stopping``), then close."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        run()
    finally:
        close()
    return 0

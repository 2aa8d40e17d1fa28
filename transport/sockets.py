"""Peer addresses and the socket options the server and client sides share."""

from __future__ import annotations

import zmq

from .codec import MAX_PEER_ID_LEN

# Frames larger than max_frame_bytes are useless, so zmq refuses them (and drops the
# connection) before reading them; the slack covers the ROUTER's framing.
MAXMSGSIZE_SLACK = 64 * 1024
# pyzmq sends frames above 64 KiB without copying even when asked to copy, and then needs its
# garbage-collector thread (one more wakeup and GIL hand-off per frame) to learn when libzmq
# is done with the buffer. Copying a big append batch costs microseconds; that wakeup, under
# load, costs more: always copy.
COPY_THRESHOLD = 2**31 - 1
# As plain ints: pyzmq answers an enum key with an enum, whose arithmetic is slow.
ZMQ_EVENTS, ZMQ_POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)


def split_address(peer_id: str) -> tuple[str, int]:
    """``"host:port"`` (or ``"[v6]:port"``) → (host, port). Raises ValueError."""
    if not isinstance(peer_id, str) or not peer_id or len(peer_id) > MAX_PEER_ID_LEN:
        raise ValueError(f"bad peer id {peer_id!r}")
    host, sep, port_text = peer_id.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"peer id {peer_id!r} is not host:port")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"peer id {peer_id!r} has a bad port")
    return host, port


def endpoint(host: str, port: int) -> str:
    return f"tcp://{host}:{port}"

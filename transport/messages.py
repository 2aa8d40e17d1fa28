"""Wire-only messages: they travel beside the core's messages but the core never sees them.

``SnapshotOffer``/``SnapshotReady`` negotiate a snapshot file stream (see
``snapshot_stream``); ``ClientRequest``/``ClientReply`` are what clients and peers exchange.
All are frozen, so they can cross threads (and pykka actors) without copying.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from zraft.core.messages import Message
from zraft.core.types import SnapshotMeta


@dataclass(frozen=True, slots=True)
class SnapshotOffer(Message):
    """Leader → follower: "I am about to stream the snapshot ``meta``; where shall I send it?"."""

    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class SnapshotReady(Message):
    """Follower → leader: "stream snapshot ``index`` to ``host:port``"."""

    index: int
    host: str
    port: int


class ClientRequest(NamedTuple):
    """A client's command or query.

    ``client_id``/``seq``/``acked`` identify the request for exactly-once bookkeeping (the
    session layer's job); ``timeout_ms`` is how long the client will wait (0: unspecified).
    ``payload`` is any msgpack-able value; tuples come back as lists. The fields, in this
    order, are the wire form (the codec packs and unpacks the tuple as it is).
    """

    request_id: int
    op: str
    payload: Any = None
    client_id: str = ""
    seq: int = 0
    acked: int = 0
    timeout_ms: int = 0


class ClientReply(NamedTuple):
    """The answer to ``ClientRequest`` ``request_id``; ``leader`` is a redirect hint;
    ``index`` the log index of the entry that produced a write's answer (0 otherwise): a
    fencing token that grows with every write. The fields, in this order, are the wire form."""

    request_id: int
    ok: bool
    result: Any = None
    error: str | None = None
    leader: str | None = None
    index: int = 0


# A client's frame names the founding (cluster uuid) its requests are for as its origin,
# with no instance; a peer of another founding answers them with this error code, except
# the ops below, which change nothing and tell who it is.
OTHER_FOUNDING = "other_founding"
# ...and a peer not founded yet (a joiner): it holds nothing yet, but may soon.
NOT_FOUNDED = "not_founded"
IDENTITY = "identity"  # which founding and directory a peer is: answered by its transport
FOUNDING_FREE_OPS = frozenset({IDENTITY, "status", "bootstrap"})


PEER_WIRE_TYPES: tuple[type[Message], ...] = (SnapshotOffer, SnapshotReady)
"""Peer-to-peer messages that exist only on the wire (not in ``zraft.core``)."""

"""The wire: a versioned msgpack codec, the ZeroMQ transport and the snapshot file stream.

See ``docs/transport.md`` for the frame format, validation rules, queues and CURVE keys.
"""

from .async_channel import AsyncClientChannel
from .client_channel import ClientChannel
from .codec import (
    DEFAULT_MAX_FRAME_BYTES,
    PROTOCOL_VERSION,
    TYPE_CODES,
    Decoded,
    DecodedBatch,
    FrameError,
    WireMessage,
    decode,
    decode_batch,
    encode,
    encode_batch,
    encode_batches,
    is_peer_message,
)
from .curve import CurveSettings, generate_keys, key_name
from .errors import ChannelClosed, NotSent, TransportError, TransportTimeout
from .messages import (
    FOUNDING_FREE_OPS,
    NOT_FOUNDED,
    OTHER_FOUNDING,
    ClientReply,
    ClientRequest,
    SnapshotOffer,
    SnapshotReady,
)
from .snapshot_stream import SnapshotReceiver, SnapshotTransferError, send_snapshot
from .sockets import split_address
from .zmq_transport import ZmqTransport

__all__ = [
    "FOUNDING_FREE_OPS",
    "NOT_FOUNDED",
    "OTHER_FOUNDING",
    "AsyncClientChannel",
    "ChannelClosed",
    "DEFAULT_MAX_FRAME_BYTES",
    "PROTOCOL_VERSION",
    "TYPE_CODES",
    "ClientChannel",
    "ClientReply",
    "ClientRequest",
    "CurveSettings",
    "Decoded",
    "DecodedBatch",
    "FrameError",
    "SnapshotOffer",
    "SnapshotReady",
    "SnapshotReceiver",
    "SnapshotTransferError",
    "TransportError",
    "NotSent",
    "TransportTimeout",
    "WireMessage",
    "ZmqTransport",
    "decode",
    "decode_batch",
    "encode",
    "encode_batch",
    "encode_batches",
    "generate_keys",
    "is_peer_message",
    "key_name",
    "send_snapshot",
    "split_address",
]

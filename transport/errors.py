"""What the transport raises."""

from __future__ import annotations


class TransportError(Exception):
    """The transport cannot do what was asked (bad address, bind failure, closed)."""


class TransportTimeout(TransportError):
    """No (matching) reply arrived in time."""


class NotSent(TransportTimeout):
    """The request never left this process (no connection to the peer in time, or its
    send queue stayed full: ``queue_full``): the peer cannot have acted on it."""

    def __init__(self, message: str, queue_full: bool = False) -> None:
        super().__init__(message)
        self.queue_full = queue_full


class ChannelClosed(TransportError):
    """The client channel was closed: before the request, or while it waited."""

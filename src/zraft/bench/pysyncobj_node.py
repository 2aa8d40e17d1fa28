"""One PySyncObj node for ``zraft bench --pysyncobj``: a replicated dict behind zraft's wire.

    python -m zraft.bench.pysyncobj_node --raft 127.0.0.1:A --front 127.0.0.1:B \
        --raft-peers A1,A2,A3 --front-peers B1,B2,B3 [--cluster-id zraft]

The node is a ``SyncObj`` subclass holding a dict with two ``@replicated`` methods, ``set``
and ``get``. Its configuration is PySyncObj's default: no journal file (the log lives in
memory, nothing is fsynced), 50 ms auto-tick, batched appends.

In front of it, in the same process, a ZeroMQ ROUTER speaks zraft's client protocol
(``ClientRequest``/``ClientReply`` frames of ``zraft.transport``), so the benchmark's
``AsyncLightSession`` clients work unchanged:

* ``write`` with ``kv.put(k, v)``: calls the replicated ``set`` and answers in its callback,
  i.e. once the entry is committed and applied on this (the leader) node;
* ``query`` with ``kv.get(k)``: calls the replicated ``get`` (the read goes through the log:
  linearizable, the way PySyncObj offers it) and answers in its callback;
* ``query_local``: reads the local dict (possibly stale);
* ``status``: role and leader.

A node that is not the leader answers ``not_leader`` with the leader's *front-end* address
as the hint, as a zraft peer does. PySyncObj calls the callbacks on its tick thread; they
queue replies and wake the front end through a pipe, and the front end sends each client's
replies as one batch frame. There is no exactly-once bookkeeping: a retried write may apply
twice (the benchmark never retries a write that was answered).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import threading
import time
from collections.abc import Sequence
from typing import Any

import zmq

from zraft.transport import ClientReply, ClientRequest, split_address

from .front import client_requests, identity_reply, parse_server_args, send_replies, serve

log = logging.getLogger(__name__)

_SUCCESS = 0  # pysyncobj.FAIL_REASON.SUCCESS
_RETRYABLE = {1, 2, 3, 4, 5, 7}  # queue full, no leader, discarded, not leader, changed, unknown


def make_dict_class() -> type:
    """The replicated dict (imports pysyncobj, which only the benchmark extra installs)."""
    from pysyncobj import SyncObj, replicated

    class ReplicatedDict(SyncObj):  # type: ignore[misc]
        def __init__(self, me: str, partners: Sequence[str]) -> None:
            self.data: dict[str, Any] = {}  # before the tick thread starts
            super().__init__(me, list(partners))  # default SyncObjConf: no journal file

        @replicated  # type: ignore[misc]
        def set(self, key: str, value: Any) -> bool:
            created = key not in self.data
            self.data[key] = value
            return created

        @replicated  # type: ignore[misc]
        def get(self, key: str) -> tuple[bool, Any]:
            if key in self.data:
                return True, self.data[key]
            return False, None

    return ReplicatedDict


class FrontEnd:
    """The ROUTER loop; runs in the node process's main thread."""

    def __init__(
        self,
        node: Any,
        *,
        raft: str,
        front: str,
        raft_to_front: dict[str, str],
        cluster_id: str,
    ) -> None:
        self.node = node
        self.raft = raft
        self.front = front
        self.raft_to_front = raft_to_front
        self.cluster_id = cluster_id
        self._replies: collections.deque[tuple[bytes, ClientReply]] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._wake_pending = False
        self._ctx = zmq.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.linger = 0
        host, port = split_address(front)
        self._router.bind(f"tcp://{host}:{port}")
        self.stopping = threading.Event()
        self.served = 0

    # -- called from PySyncObj's tick thread (and, for a full queue, from ours)

    def _queue(self, routing_id: bytes, reply: ClientReply) -> None:
        self._replies.append((routing_id, reply))
        if not self._wake_pending:
            self._wake_pending = True
            os.write(self._wake_w, b"!")

    def _on_write(self, routing_id: bytes, request_id: int) -> Any:
        def done(result: Any, error: int) -> None:
            if error == _SUCCESS:
                reply = ClientReply(request_id, True, {"created": bool(result)})
            else:
                reply = self._failure(request_id, error)
            self._queue(routing_id, reply)

        return done

    def _on_read(self, routing_id: bytes, request_id: int) -> Any:
        def done(result: Any, error: int) -> None:
            if error == _SUCCESS:
                found, value = result
                reply = ClientReply(request_id, True, {"found": found, "value": value})
            else:
                reply = self._failure(request_id, error)
            self._queue(routing_id, reply)

        return done

    def _failure(self, request_id: int, error: int) -> ClientReply:
        if error in _RETRYABLE:
            return ClientReply(request_id, False, f"pysyncobj error {error}", "retry")
        return ClientReply(request_id, False, f"pysyncobj error {error}", "rejected")

    # -- the loop

    def _leader_front(self) -> str | None:
        leader = self.node._getLeader()
        return None if leader is None else self.raft_to_front.get(str(leader))

    def _handle(self, routing_id: bytes, req: ClientRequest) -> None:
        op = req.op
        payload = req.payload if isinstance(req.payload, dict) else {}
        if op == "status":
            leader = self._leader_front()
            role = "leader" if self.node._isLeader() else "follower"
            result = {"id": self.front, "role": role, "leader": leader}
            self._queue(routing_id, ClientReply(req.request_id, True, result))
            return
        if op == "identity":
            self._queue(routing_id, identity_reply(req, self.cluster_id, self.front))
            return
        if op == "query_local":
            key = payload.get("key")
            found = key in self.node.data
            result = {"found": found, "value": self.node.data.get(key)}
            self._queue(routing_id, ClientReply(req.request_id, True, result))
            return
        if op not in ("write", "query"):
            reply = ClientReply(req.request_id, False, op, "not_supported")
            self._queue(routing_id, reply)
            return
        if not self.node._isLeader():
            leader = self._leader_front()
            hint = leader if leader != self.front else None
            self._queue(routing_id, ClientReply(req.request_id, False, None, "not_leader", hint))
            return
        kind = payload.get("op")
        if op == "write" and kind == "put":
            callback = self._on_write(routing_id, req.request_id)
            self.node.set(payload["key"], payload["value"], callback=callback)
        elif op == "query" and kind == "get":
            self.node.get(payload["key"], callback=self._on_read(routing_id, req.request_id))
        else:
            self._queue(routing_id, ClientReply(req.request_id, False, kind, "not_supported"))

    def _drain_inbound(self) -> None:
        for _ in range(1000):
            try:
                parts = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(parts) != 2:
                continue
            routing_id, frame = parts
            for message in client_requests(frame, self.cluster_id):
                self._handle(routing_id, message)

    def _send_replies(self) -> None:
        self._wake_pending = False
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        by_client: dict[bytes, list[ClientReply]] = {}
        replies = self._replies
        while replies:
            routing_id, reply = replies.popleft()
            by_client.setdefault(routing_id, []).append(reply)
        self.served += send_replies(self._router, by_client, self.cluster_id, self.front)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        parent = os.getppid()
        next_check = time.monotonic() + 1.0
        while not self.stopping.is_set():
            poller.poll(200)
            self._drain_inbound()
            self._send_replies()
            now = time.monotonic()
            if now >= next_check:
                next_check = now + 1.0
                if os.getppid() != parent:  # the harness died: do not outlive it
                    log.warning("parent process gone; stopping")
                    return

    def close(self) -> None:
        self._router.close(linger=0)
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zraft.bench.pysyncobj_node")
    parser.add_argument("--raft", required=True, help="this node's PySyncObj address")
    parser.add_argument("--front", required=True, help="this node's client (ZeroMQ) address")
    parser.add_argument("--raft-peers", required=True, help="every node's PySyncObj address")
    parser.add_argument("--front-peers", required=True, help="the matching client addresses")
    args = parse_server_args(parser, argv)
    raft_peers = args.raft_peers.split(",")
    front_peers = args.front_peers.split(",")
    if len(raft_peers) != len(front_peers) or args.raft not in raft_peers:
        parser.error("--raft-peers and --front-peers must match and include this node")
    node = make_dict_class()(args.raft, [p for p in raft_peers if p != args.raft])
    front = FrontEnd(
        node,
        raft=args.raft,
        front=args.front,
        raft_to_front=dict(zip(raft_peers, front_peers, strict=True)),
        cluster_id=args.cluster_id,
    )

    def close() -> None:
        front.close()
        node.destroy()

    return serve(front.stopping, front.run, close)


if __name__ == "__main__":
    raise SystemExit(main())

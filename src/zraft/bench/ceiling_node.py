"""One process of the bare write path for ``zraft bench --ceiling``: the most Python gets
out of this machine for a durable, replicated write, with no consensus at all.

    python -m zraft.bench.ceiling_node --listen 127.0.0.1:A --peers A,B,C --data-dir DIR

The first of ``--peers`` leads, for ever: no elections, terms, log matching, exactly-once
tables, snapshots or actors. Its one thread drains every client write that has arrived into
one batch, sends the batch to both followers, appends it to its file with one
``fdatasync``, and answers the batch's clients once a follower has acknowledged it durable
(with the leader, a majority); batches pipeline, so the next one is built while acks are on
their way. A follower appends every batch that has arrived with one ``fdatasync`` and
acknowledges the highest. That is the pipeline of shared/reference/performance.md ("the
ceiling"), measured here in the same run as zraft, since this machine's fsync and thread
hand-offs vary from day to day.

Clients speak zraft's request frames (``ClientRequest``/``ClientReply``), so the benchmark's
clients drive it unchanged: ``write`` with ``kv.put`` and ``status``; nothing else (reads
are not part of the ceiling). A follower answers writes ``not_leader`` with the leader as
hint. Replication uses multipart frames on the same ROUTER port: ``[b"R", seq, batch]``
from the leader's DEALER, ``[b"A", seq]`` back.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack
import zmq

from zraft.transport import ClientReply, ClientRequest, split_address

from .front import client_requests, identity_reply, parse_server_args, send_replies, serve

log = logging.getLogger(__name__)

_REPLICATE = b"R"
_ACK = b"A"
_DRAIN_CAP = 4096  # frames taken per wakeup, so acks are not starved by a flood of requests


def _endpoint(peer: str) -> str:
    host, port = split_address(peer)
    return f"tcp://{host}:{port}"


class _Node:
    """What leader and follower share: the ROUTER, the file, answering clients."""

    def __init__(self, listen: str, leader: str, data_dir: Path, cluster_id: str) -> None:
        self.listen = listen
        self.leader = leader
        self.cluster_id = cluster_id
        data_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(data_dir / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.ctx = zmq.Context()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        self.router.bind(_endpoint(listen))
        self.stopping = threading.Event()
        self.parent = os.getppid()

    def append(self, records: list[bytes]) -> None:
        """Length-prefixed records, one write, one fdatasync: what makes them durable."""
        os.write(self.fd, b"".join(len(r).to_bytes(4, "big") + r for r in records))
        os.fdatasync(self.fd)

    def reply(self, replies: dict[bytes, list[ClientReply]]) -> None:
        send_replies(self.router, replies, self.cluster_id, self.listen)

    def run(self) -> None:
        raise NotImplementedError

    def should_stop(self) -> bool:
        """Whether to stop: asked to, or the harness that started us is gone."""
        return self.stopping.is_set() or os.getppid() != self.parent

    def client_frame(self, routing_id: bytes, frame: bytes) -> list[ClientRequest]:
        """The requests in a client frame; answers those that are not writes at once."""
        writes, answers = [], []
        for message in client_requests(frame, self.cluster_id):
            if message.op == "status":
                role = "leader" if self.listen == self.leader else "follower"
                status = {"id": self.listen, "role": role, "leader": self.leader}
                answers.append(ClientReply(message.request_id, True, status))
            elif message.op == "identity":
                answers.append(identity_reply(message, self.cluster_id, self.listen))
            elif message.op != "write":
                answers.append(ClientReply(message.request_id, False, message.op, "not_supported"))
            elif self.listen != self.leader:
                answers.append(
                    ClientReply(message.request_id, False, None, "not_leader", self.leader)
                )
            else:
                writes.append(message)
        if answers:
            self.reply({routing_id: answers})
        return writes

    def close(self) -> None:
        self.router.close(linger=0)
        self.ctx.term()
        os.close(self.fd)


class Leader(_Node):
    def __init__(self, listen: str, peers: Sequence[str], data_dir: Path, cluster_id: str):
        super().__init__(listen, listen, data_dir, cluster_id)
        self.followers = []
        for peer in peers:
            if peer != listen:
                sock = self.ctx.socket(zmq.DEALER)
                sock.linger = 0
                sock.connect(_endpoint(peer))
                self.followers.append(sock)
        self.data: dict[Any, Any] = {}
        self.seq = 0  # batches sent
        self.durable = 0  # batches on our own disk
        self.acked = 0  # the highest batch a follower has on its disk
        # Batches not answered yet: (seq, [(routing id, request id, created)]), oldest first.
        self.waiting: deque[tuple[int, list[tuple[bytes, int, bool]]]] = deque()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        for sock in self.followers:
            poller.register(sock, zmq.POLLIN)
        while True:
            if not poller.poll(200) and self.should_stop():
                return
            self._take_acks()
            writes = self._take_writes()
            if writes:
                self._replicate(writes)
                self._take_acks()
            self._answer_committed()

    def _take_writes(self) -> list[tuple[bytes, ClientRequest]]:
        writes = []
        for _ in range(_DRAIN_CAP):
            try:
                parts = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(parts) == 2:
                writes += [(parts[0], w) for w in self.client_frame(parts[0], parts[1])]
        return writes

    def _replicate(self, writes: list[tuple[bytes, ClientRequest]]) -> None:
        self.seq += 1
        puts = []
        for _, request in writes:
            payload = request.payload if isinstance(request.payload, dict) else {}
            puts.append([payload.get("key"), payload.get("value")])
        batch = msgpack.packb(puts)
        seq = self.seq.to_bytes(8, "big")
        for sock in self.followers:  # first, so they write while we do
            try:
                sock.send_multipart([_REPLICATE, seq, batch], zmq.NOBLOCK)
            except zmq.ZMQError as error:
                log.warning("batch %d not sent to a follower: %s", self.seq, error)
        self.append([batch])
        self.durable = self.seq
        answers = []
        for (routing_id, request), (key, value) in zip(writes, puts, strict=True):
            created = key not in self.data
            self.data[key] = value
            answers.append((routing_id, request.request_id, created))
        self.waiting.append((self.seq, answers))

    def _take_acks(self) -> None:
        for sock in self.followers:
            while True:
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(parts) == 2 and parts[0] == _ACK:
                    self.acked = max(self.acked, int.from_bytes(parts[1], "big"))

    def _answer_committed(self) -> None:
        committed = min(self.durable, self.acked)
        replies: dict[bytes, list[ClientReply]] = {}
        while self.waiting and self.waiting[0][0] <= committed:
            for routing_id, request_id, created in self.waiting.popleft()[1]:
                reply = ClientReply(request_id, True, {"created": created})
                replies.setdefault(routing_id, []).append(reply)
        if replies:
            self.reply(replies)


class Follower(_Node):
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        while True:
            if not poller.poll(200) and self.should_stop():
                return
            batches, highest, leader_id = [], 0, None
            for _ in range(_DRAIN_CAP):
                try:
                    parts = self.router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if len(parts) == 4 and parts[1] == _REPLICATE:
                    leader_id = parts[0]
                    highest = max(highest, int.from_bytes(parts[2], "big"))
                    batches.append(parts[3])
                elif len(parts) == 2:
                    self.client_frame(parts[0], parts[1])  # status, or not_leader
            if batches and leader_id is not None:
                self.append(batches)
                self.router.send_multipart([leader_id, _ACK, highest.to_bytes(8, "big")])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zraft.bench.ceiling_node")
    parser.add_argument("--listen", required=True, help="this process's address")
    parser.add_argument("--peers", required=True, help="every address; the first leads")
    parser.add_argument("--data-dir", required=True, type=Path)
    args = parse_server_args(parser, argv)
    peers = args.peers.split(",")
    if args.listen not in peers:
        parser.error("--peers must include --listen")
    node: _Node
    if args.listen == peers[0]:
        node = Leader(args.listen, peers, args.data_dir, args.cluster_id)
    else:
        node = Follower(args.listen, peers[0], args.data_dir, args.cluster_id)
    return serve(node.stopping, node.run, node.close)


if __name__ == "__main__":
    raise SystemExit(main())

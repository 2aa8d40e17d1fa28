"""The simulated cluster's client: it talks to the peers' drivers as a session would, with
``ClientRequest``s, and checks every answer it gets.

- Writes are exactly-once: one client id, a seq per write, retried with the same seq (to
  the leader it sees, or any live peer) while the answer says it may have applied
  ("retry", no answer). "not_leader" says it was not applied: the write is then sent again
  under a new seq, as a session's ``retry(error)`` does, and the seq answered so must
  never show up applied (checked at the end against every applied entry). Each write
  creates its own key (``cas`` with "absent" expected), so a write applied twice answers
  ``swapped: False``: every successful answer must say ``swapped: True``, every answer to
  the same seq must agree, and the entry at the index it names must be that very write.
- Reads are linearizable: served at an applied index no older than the highest commit any
  peer knew when the read began (``SafetyChecker.check_read``).
- Membership changes and leadership transfers go through the same ops as the CLI's.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from zraft.actors.commands import Command, CommandKind, MalformedCommand
from zraft.backends import kv
from zraft.transport import ClientReply, ClientRequest

if TYPE_CHECKING:
    from .cluster import Cluster

# Ticks a write waits for its first answer before it is sent again; each further wait
# doubles, up to MAX_RETRY_TICKS (a cluster slowed by retries would only get slower).
RETRY_TICKS = 40
MAX_RETRY_TICKS = 80
# Writes sent and not answered at most (later ones wait their turn, as in a session).
WINDOW = 16
# Answers after which a write is sent again with its seq: it may have been applied.
RETRYABLE = frozenset({"retry", "too_far_ahead", "not_founded"})
# The answer that says a write was not applied: it goes again under a new seq.
NOT_APPLIED = "not_leader"


@dataclass
class _Write:
    seq: int
    value: bytes
    key: str
    sent_at: int | None = None  # None: waiting for room in the window
    answer: ClientReply | None = None
    wait: int = RETRY_TICKS  # before it is sent again
    copies: int = 0  # times sent
    refused: int = 0  # copies answered "not_leader"


class SimClient:
    def __init__(self, cluster: Cluster, client_id: str = "sim-client") -> None:
        self.cluster = cluster
        self.client_id = client_id
        self.writer = f"{client_id}/write".encode()
        self.reader = f"{client_id}/read".encode()
        self.admin_identity = f"{client_id}/admin".encode()
        self.paused = False  # a client gone quiet sends nothing more
        self.sent_unanswered = 0
        self.request_ids = itertools.count(1)
        self.next_seq = 1
        self.acked = 0  # every write up to this seq is answered
        self.writes: dict[int, _Write] = {}  # by seq, until answered and acknowledged
        self.write_requests: dict[int, int] = {}  # request id -> seq
        self.reads: dict[int, Any] = {}  # request id -> read context
        self.admin: dict[int, str] = {}  # request id -> op
        self.answered_writes = 0
        self.done: dict[str, int] = {"set_members": 0, "transfer": 0}
        self.answer_indexes: dict[bytes, int] = {}  # value -> index of its successful answer
        self.answered_at: dict[int, int] = {}  # seq -> index its successful answer named
        self.not_applied: set[int] = set()  # seqs answered "not_leader"
        self.keys = itertools.count(1)

    # ------------------------------------------------------------------ requests

    def write(self, peer_id: str, value: bytes) -> int:
        """A new write of ``value``, sent to ``peer_id`` if the window has room (else by a
        later tick, to whoever leads then); its seq."""
        return self._new_seq(peer_id, value, f"{self.client_id}/{next(self.keys)}")

    def _new_seq(self, peer_id: str | None, value: bytes, key: str) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.writes[seq] = _Write(seq, value, key)
        earlier_sent = self.sent_unanswered + self.answered_writes + len(self.not_applied)
        if peer_id is not None and self._in_flight() < WINDOW and earlier_sent >= seq - 1:
            self._send_write(peer_id, seq)  # every earlier write went already: in order
        return seq

    def _in_flight(self) -> int:
        return self.sent_unanswered

    def read(self, peer_id: str, context: Any) -> None:
        request_id = next(self.request_ids)
        self.reads[request_id] = context
        request = ClientRequest(request_id, "query", kv.get(f"{self.client_id}/1"))
        self.cluster.peers[peer_id].request(self.reader, request)

    def change_members(self, peer_id: str, voters: set[str], learners: set[str]) -> None:
        payload = {"voters": sorted(voters), "learners": sorted(learners)}
        self._admin(peer_id, "set_members", payload)

    def transfer(self, peer_id: str, target: str) -> None:
        self._admin(peer_id, "transfer", target)

    def _admin(self, peer_id: str, op: str, payload: Any) -> None:
        request_id = next(self.request_ids)
        self.admin[request_id] = op
        request = ClientRequest(request_id, op, payload)
        self.cluster.peers[peer_id].request(self.admin_identity, request)

    def _send_write(self, peer_id: str, seq: int) -> None:
        write = self.writes[seq]
        if write.sent_at is None:
            self.sent_unanswered += 1
        write.sent_at = self.cluster.time
        write.copies += 1
        request_id = next(self.request_ids)
        self.write_requests[request_id] = seq
        command = kv.cas(write.key, None, write.value)
        request = ClientRequest(request_id, "write", command, self.client_id, seq, self.acked)
        self.cluster.peers[peer_id].request(self.writer, request)

    # ------------------------------------------------------------------ time

    def tick(self) -> None:
        """Writes unanswered for a while are sent again, with their seq, to whoever leads;
        waiting ones go as the window makes room."""
        if self.paused:
            return
        now = self.cluster.time
        room = WINDOW - self._in_flight()
        due = []
        for write in self.writes.values():
            if write.answer is not None:
                continue
            if write.sent_at is None and room <= 0:
                break  # the rest wait too (seqs are in order)
            if write.sent_at is None:
                if room > 0:
                    room -= 1
                    due.append(write.seq)
            elif now - write.sent_at >= write.wait:
                write.wait = min(2 * write.wait, MAX_RETRY_TICKS)
                due.append(write.seq)
        for seq in due:
            write = self.writes.get(seq)
            if write is None or write.answer is not None:
                continue  # answered meanwhile (sending one write may answer another)
            target = self.cluster.target()
            if target is not None:
                self._send_write(target, seq)

    # ------------------------------------------------------------------ answers

    def on_replies(
        self, peer_id: str, replies: list[tuple[bytes, ClientReply]], applied: int
    ) -> None:
        for identity, reply in replies:
            if identity == self.writer:
                self._write_answered(peer_id, reply)
            elif identity == self.reader:
                self._read_answered(peer_id, reply, applied)
            elif identity == self.admin_identity:
                op = self.admin.pop(reply.request_id, None)
                if op is not None and reply.ok:
                    self.done[op] += 1

    def _write_answered(self, peer_id: str, reply: ClientReply) -> None:
        seq = self.write_requests.pop(reply.request_id, None)
        if seq is None:
            return
        write = self.writes.get(seq)
        if write is None or write.answer is not None:
            # An answer to another copy of a write answered already: it must agree.
            if reply.ok and seq in self.not_applied:
                self.cluster.checker.fail(f"write {seq} answered not_leader, then applied")
            if reply.ok and self.answered_at.get(seq, reply.index) != reply.index:
                self.cluster.checker.fail(
                    f"write {seq} answered at {self.answered_at[seq]}, then at {reply.index}"
                )
            if reply.ok and (not isinstance(reply.result, dict) or not reply.result.get("swapped")):
                self.cluster.checker.fail(f"write {seq} applied twice: {reply.result}")
            return
        if not reply.ok and reply.error == NOT_APPLIED:
            write.refused += 1
        if not reply.ok and reply.error == NOT_APPLIED and write.refused < write.copies:
            # Another copy of this seq may still apply (a session knows it sent one and
            # counts the call "maybe applied"): the seq is sent again as it is.
            assert write.sent_at is not None
            write.sent_at = min(write.sent_at, self.cluster.time - write.wait + 2)
            return
        if not reply.ok and reply.error == NOT_APPLIED:
            # Every copy refused: not applied. Done with this seq; the write goes again
            # under a new one.
            self.not_applied.add(seq)
            write.answer = reply
            self.sent_unanswered -= 1
            self._forget_answered()
            self._new_seq(None, write.value, write.key)
            return
        if not reply.ok and reply.error in RETRYABLE:
            # Sent again a couple of ticks from now (by tick), not from inside this answer.
            assert write.sent_at is not None  # answered, so sent
            write.sent_at = min(write.sent_at, self.cluster.time - write.wait + 2)
            return
        fail = self.cluster.checker.fail
        if not reply.ok:
            fail(f"write {write.seq} refused by {peer_id}: {reply.error} {reply.result}")
        if not isinstance(reply.result, dict) or reply.result.get("swapped") is not True:
            fail(f"write {write.seq} applied twice: {peer_id} answered {reply.result}")
        applied = self.cluster.checker.applied.get(reply.index)
        if applied is None:
            fail(f"write {write.seq} answered at {reply.index} by {peer_id}, never applied")
        else:
            try:
                command = Command.decode(applied[2])
            except MalformedCommand:
                command = None
            mine = (CommandKind.WRITE, self.client_id, write.seq)
            if command is None or (command.kind, command.client_id, command.seq) != mine:
                fail(f"write {write.seq} answered at {reply.index}, which holds {command}")
        write.answer = reply
        self.answered_writes += 1
        self.sent_unanswered -= 1
        self.answer_indexes[write.value] = reply.index
        self.answered_at[write.seq] = reply.index
        self._forget_answered()

    def _forget_answered(self) -> None:
        while self.acked + 1 in self.writes and self.writes[self.acked + 1].answer is not None:
            self.acked += 1
            del self.writes[self.acked]

    def verify(self) -> None:
        """At the end: no write answered "not applied" was applied after all."""
        if not self.not_applied:
            return
        for index, (_, _, data) in self.cluster.checker.applied.items():
            try:
                command = Command.decode(data)
            except (MalformedCommand, TypeError):
                continue
            if command.client_id == self.client_id and command.seq in self.not_applied:
                self.cluster.checker.fail(
                    f"write {command.seq} was answered not_leader (not applied), "
                    f"but index {index} applied it"
                )

    def _read_answered(self, peer_id: str, reply: ClientReply, applied: int) -> None:
        context = self.reads.pop(reply.request_id, None)
        if context is None:
            return
        if reply.ok:
            self.cluster.on_read_served(peer_id, context, applied)
        else:
            self.cluster.on_read_failed(peer_id, context)

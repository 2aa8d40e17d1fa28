"""Both places the log can be written: on the peer actor's thread (the default: the peer
owns the ``LogWriter``) and, with ``log_thread``, on a ``LogActor``'s thread. Either way a
write is durable before it is answered and survives a restart; a slow write is reported,
pointing at ``log_thread`` when it held up the peer's thread."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.cluster_support import ask_leader, single_peer_settings
from zraft.actors.log_actor import SLOW_PERSIST_S, LogActor, LogWriter
from zraft.actors.messages import REPORT_METRICS, CompactLog, MetricsReport, Persisted, PersistItem
from zraft.actors.runtime import PeerRuntime
from zraft.backends import kv
from zraft.core import AppendResponse, Entry, EntryKind, HardState, VoteResponse
from zraft.storage import MemoryHardState, MemoryLog, MemoryVolume
from zraft.transport import ClientChannel, ClientRequest


def _log_threads() -> set[str]:
    return {t.name for t in threading.enumerate() if t.name.startswith("LogActor")}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("log_thread", [False, True])
def test_writes_are_durable_whichever_thread_writes_the_log(
    tmp_path: Path, log_thread: bool
) -> None:
    settings = single_peer_settings(tmp_path, "zraft.backends.kv:KeyValueBackend")
    settings = settings.replace(log_thread=log_thread)
    peer = settings.require_peer_id()
    before = _log_threads()
    runtime = PeerRuntime(settings).start()
    try:
        assert bool(_log_threads() - before) == log_thread
        with ClientChannel("zraft", "w") as channel:
            for seq in range(1, 51):
                request = ClientRequest(seq, "write", kv.put(f"k{seq}", seq), "c", seq)
                assert ask_leader(channel, peer, request).ok
        metrics = runtime._status()["metrics"]
        if log_thread:  # the log actor reports its counters to the peer once a tick
            deadline = time.monotonic() + 10
            while metrics["log_fsyncs"] == 0 and time.monotonic() < deadline:
                time.sleep(0.05)
                metrics = runtime._status()["metrics"]
        assert metrics["log_fsyncs"] > 0, metrics
    finally:
        runtime.stop()
    assert not _log_threads() - before  # stopped with the peer

    runtime = PeerRuntime(settings).start()  # the same data, read back from disk
    try:
        with ClientChannel("zraft", "r") as channel:
            for seq in (1, 25, 50):
                reply = ask_leader(channel, peer, ClientRequest(seq, "query", kv.get(f"k{seq}")))
                assert reply.ok and reply.result == {"found": True, "value": seq}, reply
    finally:
        runtime.stop()


class _SlowLog:
    """A log whose every append takes longer than a write should."""

    last_index = 0
    last_term = 0

    def append(self, entries: list[Entry]) -> None:
        time.sleep(SLOW_PERSIST_S * 1.5)
        self.last_index, self.last_term = entries[-1].index, entries[-1].term


class _Peer:
    def __init__(self) -> None:
        self.told: list[object] = []

    def tell(self, message: object) -> None:
        self.told.append(message)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("own_thread", [False, True])
def test_a_slow_write_is_reported_once_per_interval(
    own_thread: bool, caplog: pytest.LogCaptureFixture
) -> None:
    sent: list[Any] = []
    writer = LogWriter(
        raft_log=_SlowLog(),  # type: ignore[arg-type]
        hard_state_file=None,  # type: ignore[arg-type]
        snapshots=None,  # type: ignore[arg-type]
        snapshot_lock=threading.Lock(),
        send=sent.extend,
        state_machine=None,  # type: ignore[arg-type]
        saved=HardState(),
        own_thread=own_thread,
    )
    persisted = []
    with caplog.at_level(logging.WARNING, logger="zraft.actors.log_actor"):
        for index in (1, 2):
            item = PersistItem(None, None, (Entry(index, 1, data=b"x"),), None, ())
            persisted.append(writer.write((item,)))
    warnings = [r.getMessage() for r in caplog.records if "writing the log took" in r.getMessage()]
    assert len(warnings) == 1, warnings  # the second, within the interval, is not repeated
    assert ("log_thread" in warnings[0]) is not own_thread
    assert [m.index for m in persisted] == [1, 2]  # both made durable and reported


class _RecordingLog:
    """A log that records what the actor asked of it."""

    last_index = 0
    last_term = 0

    def __init__(self, frees: bool = False) -> None:
        self.frees = frees
        self.compacted: list[tuple[int, int]] = []

    def append(self, entries: list[Entry]) -> None:
        self.last_index, self.last_term = entries[-1].index, entries[-1].term

    def frees_segment(self, upto_index: int) -> bool:
        return self.frees

    def compact(self, upto_index: int, upto_term: int) -> None:
        self.compacted.append((upto_index, upto_term))


def _log_writer(raft_log: object, events: list[object]) -> LogWriter:
    return LogWriter(
        raft_log=raft_log,  # type: ignore[arg-type]
        hard_state_file=None,  # type: ignore[arg-type]
        snapshots=None,  # type: ignore[arg-type]
        snapshot_lock=threading.Lock(),
        send=lambda messages: events.append(("send", list(messages))),
        flush=lambda: events.append("flush"),
        state_machine=None,  # type: ignore[arg-type]
        saved=HardState(),
    )


@pytest.mark.timeout(30)
def test_acknowledgements_leave_right_after_the_sync() -> None:
    """A follower's acknowledgement is flushed as soon as its entries are durable, not at
    the end of the peer's turn (which may still apply a batch): the leader waits for it."""
    events: list[object] = []
    writer = _log_writer(_RecordingLog(), events)
    ack = AppendResponse(term=1, src="b", dst="a", success=True, index=1)
    item = PersistItem(None, None, (Entry(1, 1, data=b"x"),), None, (ack,))
    assert writer.write((item,)) == Persisted(1, 1)
    assert events == [("send", [ack]), "flush"]
    events.clear()
    item = PersistItem(None, None, (Entry(2, 1, data=b"x"),), None, ())
    assert writer.write((item,)) == Persisted(2, 1)
    assert events == []  # nothing to send: nothing flushed


@pytest.mark.timeout(30)
def test_the_log_is_compacted_on_disk_only_when_a_segment_can_go() -> None:
    events: list[object] = []
    kept = _RecordingLog(frees=False)
    _log_writer(kept, events).compact(CompactLog(100, 2))
    assert kept.compacted == []  # a snapshot alone does not move the base on disk
    freed = _RecordingLog(frees=True)
    _log_writer(freed, events).compact(CompactLog(200, 3))
    assert freed.compacted == [(200, 3)]


class _GatedLog(_RecordingLog):
    """A log whose first append waits for a gate: items told meanwhile queue up."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.appends: list[list[int]] = []

    def append(self, entries: list[Entry]) -> None:
        self.appends.append([e.index for e in entries])
        self.entered.set()
        assert self.gate.wait(10)
        super().append(entries)


@pytest.mark.timeout(30)
def test_the_log_actor_writes_what_queued_during_a_sync_in_one_append() -> None:
    """On its own thread the log still commits in groups: items told while a sync runs are
    written together by the next one, and the peer hears once per append, in order."""
    raft_log = _GatedLog()
    peer = _Peer()
    actor = LogActor.start(_log_writer(raft_log, []), peer, lambda reason: None)
    try:
        actor.tell(PersistItem(None, None, (Entry(1, 1, data=b"x"),), None, ()))
        assert raft_log.entered.wait(10)
        for index in (2, 3, 4):
            actor.tell(PersistItem(None, None, (Entry(index, 1, data=b"x"),), None, ()))
        raft_log.gate.set()
        deadline = time.monotonic() + 10
        while Persisted(4, 1) not in peer.told and time.monotonic() < deadline:
            time.sleep(0.01)
        actor.ask(REPORT_METRICS)
    finally:
        actor.stop()
    assert raft_log.appends == [[1], [2, 3, 4]]
    persisted = [m for m in peer.told if isinstance(m, Persisted)]
    assert persisted == [Persisted(1, 1), Persisted(4, 1)]
    report = [m for m in peer.told if isinstance(m, MetricsReport)][-1]
    assert report.source == "log" and dict(report.values)["fsyncs"] == 2


@pytest.mark.timeout(30)
def test_a_grouped_write_drops_the_messages_a_later_term_made_stale() -> None:
    """Two Readys written as one group (the log actor's way): the first acknowledged a
    term-1 entry, the second moved the peer to term 2 with a leader whose entry replaced
    it. The group makes only the term-2 entry durable, so the term-1 acknowledgement
    would promise what never was: it is dropped (dropping a message is always safe)."""
    volume = MemoryVolume()
    sent: list[Any] = []
    raft_log = MemoryLog(volume)
    writer = LogWriter(
        raft_log=raft_log,
        hard_state_file=MemoryHardState(volume),
        snapshots=None,  # type: ignore[arg-type]
        snapshot_lock=threading.Lock(),
        send=sent.extend,
        state_machine=None,  # type: ignore[arg-type]
        saved=HardState(),
    )
    stale_ack = AppendResponse(1, "f", "old-leader", True, 1)
    vote = VoteResponse(2, "f", "new-leader", True)
    new_ack = AppendResponse(2, "f", "new-leader", True, 1)
    first = PersistItem(
        None, None, (Entry(1, 1, EntryKind.NORMAL, b"a"),), HardState(1, None, 0), (stale_ack,)
    )
    second = PersistItem(
        None,
        None,
        (Entry(1, 2, EntryKind.NORMAL, b"b"),),
        HardState(2, "new-leader", 0),
        (vote, new_ack),
    )
    assert writer.write([first, second]) == Persisted(1, 2)
    assert sent == [vote, new_ack]
    assert raft_log.term(1) == 2

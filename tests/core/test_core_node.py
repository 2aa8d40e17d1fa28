"""Unit tests of the core's contract: persistence ordering, rejection of bad input."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zraft.core import (
    AppendEntries,
    AppendResponse,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Node,
    NodeOptions,
    ReadIndexRequest,
    RequestVote,
    Role,
    SnapshotMeta,
    TimeoutNow,
    VoteResponse,
)

THREE = Configuration.of(["a", "b", "c"])


def make(peer: str = "a", config: Configuration = THREE, **kwargs: object) -> Node:
    return Node(peer, random.Random(1), snapshot=SnapshotMeta(0, 0, config), **kwargs)


def elect(node: Node) -> None:
    """Make ``node`` leader of THREE by hand."""
    node.campaign()
    ready = node.ready()
    pre = [m for m in ready.messages if isinstance(m, RequestVote)]
    assert pre and all(m.pre_vote for m in pre)
    node.step(VoteResponse(node.term + 1, "b", node.id, True, pre_vote=True))
    node.ready()
    node.step(VoteResponse(node.term, "b", node.id, True))
    assert node.role is Role.LEADER


def test_single_voter_commits_only_after_its_own_persist() -> None:
    node = make("a", Configuration.of(["a"]))
    node.campaign()
    assert node.role is Role.LEADER
    ready = node.ready()
    assert [e.kind.name for e in ready.entries] == ["NOOP"]
    assert node.commit == 0, "the leader counted an entry it had not persisted"
    node.persisted(1, node.term)
    assert node.commit == 1
    result = node.propose([b"x", b"y"])
    assert result.accepted and result.index == 2
    node.ready()
    assert node.commit == 1
    node.persisted(3, node.term)
    assert [e.data for e in node.ready().committed] == [b"x", b"y"]


def test_votes_and_acks_wait_for_persistence_but_leader_appends_do_not() -> None:
    follower = make("b")
    follower.step(RequestVote(1, "a", "b", 0, 0))
    ready = follower.ready()
    assert ready.hard_state == HardState(1, "a", 0)
    assert not ready.messages
    assert isinstance(ready.messages_after_persist[0], VoteResponse)
    follower.step(AppendEntries(1, "a", "b", 0, 0, (Entry(1, 1),), 0))
    ready = follower.ready()
    assert ready.entries == [Entry(1, 1)]
    assert isinstance(ready.messages_after_persist[0], AppendResponse)

    leader = make("a")
    elect(leader)
    ready = leader.ready()
    assert ready.entries and any(isinstance(m, AppendEntries) for m in ready.messages)
    candidate = make("c", options=NodeOptions(pre_vote=False))
    candidate.campaign()
    ready = candidate.ready()
    assert ready.hard_state == HardState(1, "c", 0)
    assert all(isinstance(m, RequestVote) for m in ready.messages_after_persist)
    assert not ready.messages


def test_follower_rejects_proposals_and_names_the_leader() -> None:
    follower = make("b")
    follower.step(Heartbeat(1, "a", "b", 0))
    result = follower.propose([b"x"])
    assert not result.accepted and result.leader == "a" and result.reason == "not leader"


def test_reads_need_a_commit_in_the_current_term_and_one_round_for_many() -> None:
    leader = make("a")
    elect(leader)
    leader.ready()
    leader.read_index("early")
    assert not leader.ready().read_states  # no entry of this term committed yet
    leader.persisted(1, leader.term)
    leader.step(AppendResponse(leader.term, "b", "a", True, 1))
    assert leader.commit == 1
    for i in range(5):
        leader.read_index(f"r{i}")
    ready = leader.ready()
    rounds = {m.round for m in ready.messages if isinstance(m, Heartbeat)}
    assert len(rounds) == 1, "six reads should share one heartbeat round"
    (round_,) = rounds
    leader.step(HeartbeatResponse(leader.term, "c", "a", round_))
    states = leader.ready().read_states
    assert [s.context for s in states] == ["early"] + [f"r{i}" for i in range(5)]
    assert all(s.index == 1 for s in states)


BAD_MESSAGES = [
    AppendEntries(1, "x", "b", -1, 0, (), 0),
    AppendEntries(1, "a", "b", 0, 0, (Entry(3, 1),), 0),  # not contiguous
    AppendEntries(1, "a", "b", 0, 0, (Entry(1, 2),), 0),  # entry term above message term
    AppendEntries(1, "a", "b", 0, 5, (), 0),  # prev_term above message term
    AppendEntries(1, "a", "zz", 0, 0, (), 0),  # not for us
    AppendEntries(1, "b", "b", 0, 0, (), 0),  # from ourselves
    AppendResponse(-3, "a", "b", True, 0),
    InstallSnapshot(1, "a", "b", SnapshotMeta(5, 1, Configuration())),
    InstallSnapshot(1, "a", "b", SnapshotMeta(5, 9, THREE)),
    Heartbeat(1, "a", "b", -4),
]


@pytest.mark.parametrize("msg", BAD_MESSAGES, ids=lambda m: type(m).__name__)
def test_malformed_messages_are_ignored_with_a_reason(msg: object) -> None:
    node = make("b")
    before = (node.term, node.commit, node.log.last_index)
    reason = node.step(msg)  # type: ignore[arg-type]
    assert reason
    assert (node.term, node.commit, node.log.last_index) == before


def test_leader_ignores_responses_from_unknown_peers_and_out_of_range_indexes() -> None:
    leader = make("a")
    elect(leader)
    assert leader.step(AppendResponse(leader.term, "mallory", "a", True, 1)) is not None
    assert leader.step(AppendResponse(leader.term, "b", "a", True, 99)) is not None
    assert leader.commit == 0


def test_a_removed_or_learner_peer_never_campaigns() -> None:
    learner = make("d", Configuration.of(["a", "b", "c"], learners=["d"]))
    for _ in range(100):
        learner.tick()
    assert learner.role is Role.FOLLOWER and not learner.ready().messages
    assert learner.step(TimeoutNow(1, "a", "d")) is not None


def test_stale_leader_learns_the_new_term() -> None:
    node = make("b")
    node.step(Heartbeat(5, "c", "b", 0))
    node.ready()
    node.step(AppendEntries(3, "a", "b", 0, 0, (), 0))
    (reply,) = node.ready().messages
    assert isinstance(reply, AppendResponse) and reply.term == 5


entries = st.builds(
    Entry,
    index=st.integers(-2, 8),
    term=st.integers(-1, 6),
    kind=st.just(EntryKind.NORMAL),
    data=st.binary(max_size=8),
)
messages = st.one_of(
    st.builds(
        AppendEntries,
        term=st.integers(0, 6),
        src=st.sampled_from(["a", "c", "x"]),
        dst=st.sampled_from(["b", "b", "q"]),
        prev_index=st.integers(-1, 8),
        prev_term=st.integers(-1, 6),
        entries=st.lists(entries, max_size=4).map(tuple),
        commit=st.integers(-1, 10),
    ),
    st.builds(
        AppendResponse,
        term=st.integers(0, 6),
        src=st.sampled_from(["a", "c", "x"]),
        dst=st.just("b"),
        success=st.booleans(),
        index=st.integers(-1, 10),
        hint_index=st.integers(-1, 10),
        hint_term=st.integers(-1, 6),
    ),
    st.builds(
        RequestVote,
        term=st.integers(0, 6),
        src=st.sampled_from(["a", "c", "x"]),
        dst=st.just("b"),
        last_index=st.integers(-1, 10),
        last_term=st.integers(-1, 6),
        pre_vote=st.booleans(),
        transfer=st.booleans(),
    ),
    st.builds(
        VoteResponse,
        term=st.integers(0, 6),
        src=st.sampled_from(["a", "c"]),
        dst=st.just("b"),
        granted=st.booleans(),
        pre_vote=st.booleans(),
    ),
    st.builds(
        Heartbeat,
        term=st.integers(0, 6),
        src=st.sampled_from(["a", "c"]),
        dst=st.just("b"),
        commit=st.integers(-1, 10),
        round=st.integers(-1, 5),
    ),
    st.builds(
        HeartbeatResponse,
        term=st.integers(0, 6),
        src=st.sampled_from(["a", "c", "x"]),
        dst=st.just("b"),
        round=st.integers(-1, 5),
    ),
    st.builds(
        ReadIndexRequest,
        term=st.integers(0, 6),
        src=st.sampled_from(["a", "c"]),
        dst=st.just("b"),
        context=st.integers(),
    ),
    st.builds(TimeoutNow, term=st.integers(0, 6), src=st.just("a"), dst=st.just("b")),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(messages, st.just("tick"), st.just("campaign")), max_size=40))
def test_no_sequence_of_inputs_raises(inputs: list) -> None:
    node = make("b")
    for item in inputs:
        if item == "tick":
            node.tick()
        elif item == "campaign":
            node.campaign()
        else:
            node.step(item)
        ready = node.ready()
        if ready.entries:
            node.persisted(ready.entries[-1].index, ready.entries[-1].term)
    assert node.commit <= node.log.last_index


def test_bootstrap_founds_a_cluster_once_and_persists_its_configuration() -> None:
    node = Node("a", random.Random(1))
    assert node.bootstrap({"b"}) is not None
    assert node.bootstrap({"a"}) is None
    ready = node.ready()
    assert ready.entries[0].data == Configuration.of(["a"]) and ready.hard_state.term == 1
    assert node.bootstrap({"a"}) == "already present"
    node.persisted(1, 1)
    node.campaign()
    assert node.role is Role.LEADER
    restarted = Node(
        "a", random.Random(1), hard_state=ready.hard_state, entries=ready.entries
    )
    assert restarted.config == Configuration.of(["a"])
    assert make("a").bootstrap({"a"}) == "already present"


def test_a_peer_added_back_while_still_tracked_starts_afresh() -> None:
    """Removed, then added back before the leader stopped tracking it (its directory may be
    new): the leader must not trust what it matched before, or it would ignore the new
    directory's rejections as stale and never send it the log."""
    leader = make("a")
    elect(leader)

    def ack(peer: str, index: int) -> None:
        leader.persisted(index, leader.term)
        leader.step(AppendResponse(leader.term, peer, "a", True, index))
        leader.ready()

    for peer in ("b", "c"):
        ack(peer, 1)
    assert leader.progress["c"].match == 1
    assert leader.propose_membership({"a", "b"}).accepted  # joint at 2, final at 3
    leader.ready()
    ack("b", 2)
    ack("b", 3)
    assert leader.config == Configuration.of(["a", "b"]) and leader.membership_stable
    assert "c" in leader.progress  # not told yet that its removal committed
    assert leader.propose_membership({"a", "b"}, {"c"}).accepted
    assert leader.progress["c"].match == 0

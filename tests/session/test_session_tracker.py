"""The light session's choice of peer, on a fake clock."""

from __future__ import annotations

import pytest

from zraft.session import LeaderTracker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def tracker() -> tuple[LeaderTracker, Clock]:
    clock = Clock()
    peers = ["a", "b", "c"]
    return LeaderTracker(peers, fail_timeout=1.0, election_timeout=0.5, clock=clock), clock


def test_failed_peers_are_skipped_for_fail_timeout() -> None:
    t, clock = tracker()
    assert t.choose() == "a"
    t.failed("a")
    assert t.choose() == "b" and t.peers == ["b", "c", "a"]
    t.failed("b")
    t.failed("c")
    assert t.choose() is None
    clock.now += 1.01
    assert t.choose() == "a"


def test_not_leader_moves_the_hint_to_the_head() -> None:
    t, clock = tracker()
    t.not_leader("a", "c")
    assert t.leader == "c" and t.choose() == "c"
    clock.now += 0.51
    t.succeeded("c")
    assert t.peers == ["c", "b", "a"]


def test_a_hint_naming_a_failed_peer_is_not_followed() -> None:
    # zraft_lib issue #33: followers keep naming the dead leader until a new one is elected.
    t, clock = tracker()
    t.failed("a")
    t.not_leader("b", "a")
    assert t.choose() == "c"
    t.not_leader("c", "a")
    assert t.choose() is None and not t.all_failed()
    assert t.wait_time() == pytest.approx(0.5)


def test_all_failed_and_wait_time() -> None:
    t, clock = tracker()
    for peer in "abc":
        t.failed(peer)
    assert t.choose() is None and t.all_failed()
    assert t.wait_time() == pytest.approx(1.0)
    clock.now += 0.6
    assert t.wait_time() == pytest.approx(0.4)


def test_membership_change_keeps_known_order() -> None:
    t, _ = tracker()
    t.succeeded("b")
    t.set_peers(["c", "b", "d"])
    assert t.peers == ["b", "c", "d"]


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("rejected", "Rejected"),
        ("not_supported", "NotSupported"),
        ("backend_error", "BackendError"),
        ("peers_changed", "PeersChanged"),
        ("not_stable", "NotStable"),
        ("already_present", "ClusterExists"),
    ],
)
def test_server_errors_become_the_documented_exceptions(code: str, error: str) -> None:
    import zraft.session as session_api
    from zraft.session.requests import interpret
    from zraft.transport import ClientReply

    t, _ = tracker()
    with pytest.raises(getattr(session_api, error)):
        interpret(t, "a", ClientReply(1, False, "why", code))


def test_not_leader_and_retry_are_retried_not_raised() -> None:
    from zraft.session.requests import TryAgain, interpret
    from zraft.transport import ClientReply

    t, _ = tracker()
    with pytest.raises(TryAgain):
        interpret(t, "a", ClientReply(1, False, None, "not_leader", "b"))
    assert t.leader == "b"
    with pytest.raises(TryAgain):
        interpret(t, "b", ClientReply(2, False, None, "retry"))
    assert interpret(t, "b", ClientReply(3, True, 42)) == 42


def test_dead_peers_at_the_head_do_not_hide_the_live_ones() -> None:
    # Each try at a dead peer costs 0.45 s, so with three dead peers in front the first
    # one's 1 s stamp expires before the third is tried; rotation must still reach "d".
    clock = Clock()
    t = LeaderTracker(["a", "b", "c", "d"], fail_timeout=1.0, election_timeout=0.5, clock=clock)
    tried = []
    for _ in range(4):
        peer = t.choose()
        assert peer is not None
        tried.append(peer)
        if peer == "d":
            break
        clock.now += 0.45
        t.failed(peer)
    assert tried[-1] == "d", tried


@pytest.mark.parametrize(
    "result",
    [
        None,
        [],
        {"config": {"voters": ["a"]}},  # no settled flag
        {"config": {"voters": ["a"]}, "settled": "yes"},
        {"config": {"voters": "a"}, "settled": True},
        {"config": {"voters": ["a"], "extra": []}, "settled": True},
        {"settled": True},
    ],
)
def test_malformed_members_replies_raise_malformed_reply(result: object) -> None:
    from zraft.session import MalformedReply, ZraftError
    from zraft.session.requests import members_from_reply

    with pytest.raises(MalformedReply) as raised:
        members_from_reply(result)
    assert isinstance(raised.value, ZraftError)


def test_members_replies_and_change_payloads() -> None:
    from zraft.core import Configuration
    from zraft.session import MalformedReply
    from zraft.session.requests import change_payload, members_from_reply, peers_from_status

    reply = {"config": {"voters": ["a", "b"], "learners": ["c"]}, "settled": False}
    config, settled = members_from_reply(reply)
    assert config == Configuration.of(["a", "b"], ["c"]) and settled is False
    assert change_payload("promote", config, "c") == {
        "voters": ["a", "b", "c"], "learners": [], "old": ["a", "b"]
    }  # fmt: skip
    assert change_payload("add_learner", config, "d")["learners"] == ["c", "d"]
    assert change_payload("remove", config, "a")["voters"] == ["b"]
    with pytest.raises(ValueError, match="unknown membership change"):
        change_payload("demote", config, "a")
    with pytest.raises(MalformedReply):
        peers_from_status(["not", "a", "status"], "a")
    with pytest.raises(MalformedReply):
        peers_from_status({"config": None}, "a")

"""The data directory's identity and the guard that keeps foundings apart (no processes)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from zraft.actors.founding import (
    REFUSED_OTHER_FOUNDING,
    REFUSED_REPLACED_PEER,
    DirectoryRefused,
    FounderResponder,
    FoundingVerdict,
    IdentityGuard,
    ask_founders,
    check_snapshots,
    founding_uuid,
    judge_founding,
    new_identity,
    open_identity,
    write_founding,
)
from zraft.core import (
    AppendResponse,
    Configuration,
    EntryKind,
    HardState,
    Heartbeat,
    SnapshotMeta,
    VoteResponse,
)
from zraft.session.founding import agreed_founding, peers_to_ask
from zraft.storage import HardStateFile, SegmentedLog
from zraft.storage.identity import CorruptIdentityError, DirectoryIdentity, IdentityFile
from zraft.transport import (
    ClientRequest,
    FrameError,
    decode_batch,
    encode,
    encode_batch,
)

A, B, C = "127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"


def test_identity_file_round_trips_and_refuses_what_it_did_not_write(tmp_path: Path) -> None:
    file = IdentityFile(tmp_path)
    assert file.load() is None
    identity = new_identity("zraft", A, [A, B, C])
    file.save(identity)
    assert file.load() == identity
    assert json.loads(Path(file.path).read_text())["founding"] == sorted([A, B, C])
    for bad in (b"{", b"[]", b'{"format": 99}', json.dumps({**identity.to_json(), "known": 1})):
        Path(file.path).write_bytes(bad if isinstance(bad, bytes) else bad.encode())
        with pytest.raises(CorruptIdentityError):
            file.load()


def test_founding_uuid_depends_on_the_cluster_and_its_voters_only() -> None:
    assert founding_uuid("zraft", [A, B, C]) == founding_uuid("zraft", [C, A, B, A])
    assert founding_uuid("zraft", [A]) != founding_uuid("zraft", [A, B, C])
    assert founding_uuid("other", [A, B, C]) != founding_uuid("zraft", [A, B, C])
    assert new_identity("zraft", A).cluster_uuid == ""  # a joiner learns it later
    assert new_identity("zraft", A).instance != new_identity("zraft", A).instance


def test_open_identity_refuses_another_cluster_another_peer_and_unlabelled_state(
    tmp_path: Path,
) -> None:
    file = IdentityFile(tmp_path)
    assert open_identity(file, cluster_id="zraft", peer_id=A, state_present=False) is None
    with pytest.raises(DirectoryRefused, match="no identity.json"):
        open_identity(file, cluster_id="zraft", peer_id=A, state_present=True)
    pending = new_identity("zraft", A, [A])
    file.save(pending)  # founding recorded, entry not durable yet: mended at the next start
    assert open_identity(file, cluster_id="zraft", peer_id=A, state_present=False) == pending
    with pytest.raises(DirectoryRefused, match="belongs to cluster 'zraft', not 'other'"):
        open_identity(file, cluster_id="other", peer_id=A, state_present=True)
    with pytest.raises(DirectoryRefused, match=f"belongs to peer {A}, not {B}"):
        open_identity(file, cluster_id="zraft", peer_id=B, state_present=True)
    assert open_identity(file, cluster_id="zraft", peer_id=A, state_present=True) is not None


def test_an_identity_whose_raft_state_was_deleted_is_refused(tmp_path: Path) -> None:
    """Log, hard state and snapshots removed, identity.json kept: the peer's votes and log
    are gone, as if wiped, though its instance is the same."""
    file = IdentityFile(tmp_path)
    founded = replace(new_identity("zraft", A, [A, B]), founding_pending=False)
    file.save(founded)
    with pytest.raises(DirectoryRefused, match="Raft state is gone"):
        open_identity(file, cluster_id="zraft", peer_id=A, state_present=False)
    joined = replace(new_identity("zraft", C), cluster_uuid="u", known={A: "a1"})
    file.save(joined)
    with pytest.raises(DirectoryRefused, match="Raft state is gone"):
        open_identity(file, cluster_id="zraft", peer_id=C, state_present=False)
    # A joiner that only learned its founding, and crashed before storing anything, is fine.
    file.save(replace(joined, known={}))
    assert open_identity(file, cluster_id="zraft", peer_id=C, state_present=False) is not None


def test_the_founding_entry_is_durable_and_written_again_after_a_crash(tmp_path: Path) -> None:
    with SegmentedLog(str(tmp_path / "log")) as raft_log:
        hard = HardStateFile(tmp_path / "hs")
        assert write_founding(raft_log, hard, [B, A]) == HardState(1, None, 1)
        entry = raft_log.entry(1)
        assert entry is not None and entry.kind is EntryKind.CONFIG
        assert entry.data == Configuration.of([A, B]) and entry.term == 1
    assert HardStateFile(tmp_path / "hs").load()[0] == HardState(1, None, 1)


def guard(tmp_path: Path, identity: DirectoryIdentity) -> tuple[IdentityGuard, IdentityFile]:
    file = IdentityFile(tmp_path)
    file.save(identity)
    return IdentityGuard(file, identity), file


BEAT = (Heartbeat(2, A, C, 0, 0),)  # what a leader sends


def test_the_guard_refuses_another_founding_and_a_replaced_member(tmp_path: Path) -> None:
    g, file = guard(tmp_path, new_identity("zraft", A, [A, B, C]))
    ours = g.cluster_uuid
    g.set_members(frozenset({A, B, C}))
    assert g.admit(B, (ours, "b1")) is None
    assert g.admit(B, (ours, "b1")) is None
    assert file.load().known == {B: "b1"}  # type: ignore[union-attr]
    assert g.admit(B, (ours, "b2")) is None  # its hello: heard, vouches for nothing
    # Its promises (a vote, an acknowledgement) are refused; what it says as a candidate or
    # leader is heard (votes go by the log), and records nothing.
    assert g.admit(B, (ours, "b2"), (VoteResponse(3, B, A, True),)) == REFUSED_REPLACED_PEER
    assert g.admit(B, (ours, "b2"), (AppendResponse(3, B, A, True, 5),)) == REFUSED_REPLACED_PEER
    assert g.admit(B, (ours, "b2"), (Heartbeat(3, B, A, 5, 1),)) is None
    assert g.known(B) == "b1"
    assert g.admit(C, (founding_uuid("zraft", [C]), "c1")) == REFUSED_OTHER_FOUNDING
    assert g.admit(C, ("", "c1")) is None  # a peer not founded yet: admitted...
    assert g.known(C) is None  # ...but its word does not record an instance
    assert g.describe(B) == {
        "cluster_uuid": ours,
        "instance": g.identity.instance,
        "known": "b1",
        "members": {B: "b1"},
        "founding": founding_uuid("zraft", [A, B, C]),
    }


def test_strangers_are_not_recorded_and_a_committed_removal_forgets(tmp_path: Path) -> None:
    g, file = guard(tmp_path, new_identity("zraft", A, [A, B, C]))
    ours = g.cluster_uuid
    applied = [10]
    g.applied_index = lambda: applied[0]
    g.set_members(frozenset({A, B}))
    assert g.admit(C, (ours, "c1")) is None and g.known(C) is None  # not a member: no record
    g.set_members(frozenset({A, B, C}))
    g.admit(C, (ours, "c1"))
    assert g.known(C) == "c1"
    g.committed(Configuration(frozenset({A, B}), frozenset({A, B, C})), 12)  # joint: not yet
    promise = (AppendResponse(3, C, A, True, 5),)
    assert g.admit(C, (ours, "c2"), promise) == REFUSED_REPLACED_PEER
    g.committed(Configuration.of([A, B]), 9)  # an older configuration, replayed: no effect
    assert g.known(C) == "c1"
    g.committed(Configuration.of([A, B]), 13)  # committed after we knew it: c may come back
    assert g.known(C) is None and C not in file.load().known  # type: ignore[union-attr]
    applied[0] = 20
    assert g.admit(C, (ours, "c2")) is None and g.known(C) == "c2"
    assert file.load().known_since == {C: 20}  # type: ignore[union-attr]
    g.snapshot_installed(SnapshotMeta(15, 2, Configuration.of([A, B, C])))
    assert g.known(C) == "c2"  # recorded after the snapshot's point
    g.snapshot_installed(SnapshotMeta(25, 2, Configuration.of([A, B, C])))
    assert g.known(C) is None  # a removal and re-adding may hide inside it


def test_a_joiner_learns_its_founding_from_a_leader_once_and_durably(tmp_path: Path) -> None:
    g, file = guard(tmp_path, new_identity("zraft", C))
    first = founding_uuid("zraft", [A, B])
    assert g.admit(B, (founding_uuid("zraft", [B]), "b1")) is None  # a hello: learns nothing
    assert g.cluster_uuid == ""
    assert g.admit(A, (first, "a1"), BEAT) is None
    assert g.cluster_uuid == first and file.load().cluster_uuid == first  # type: ignore[union-attr]
    assert g.admit(B, (founding_uuid("zraft", [B]), "b1"), BEAT) == REFUSED_OTHER_FOUNDING


def test_bootstrap_founding_records_the_voters(tmp_path: Path) -> None:
    g, file = guard(tmp_path, new_identity("zraft", A))
    g.founded([A])
    stored = file.load()
    assert stored is not None and stored.founding == (A,)
    # The uuid covers the founder's directory: founding again on a wiped one is another.
    uuid = founding_uuid("zraft", [A], {A: g.identity.instance})
    assert stored.cluster_uuid == uuid == g.cluster_uuid != founding_uuid("zraft", [A])
    assert stored.founding_pending
    g.committed(Configuration.of([A]), 1)  # the founding entry committed: no longer pending
    assert file.load().founding_pending is False  # type: ignore[union-attr]


def test_peer_frames_carry_an_origin_and_only_a_hello_is_empty() -> None:
    beat = Heartbeat(3, A, B, 7, 1)
    origin = ("u" * 32, "i" * 32)
    decoded = decode_batch(
        encode(beat, cluster_id="zraft", sender=A, origin=origin),
        cluster_id="zraft",
        max_frame_bytes=1 << 20,
    )
    assert decoded.origin == origin and decoded.messages == [beat]
    hello = encode_batch([], cluster_id="zraft", sender=A, origin=origin)
    assert decode_batch(hello, cluster_id="zraft", max_frame_bytes=1 << 20).messages == []
    with pytest.raises(FrameError, match="bad-batch"):
        decode_batch(encode_batch([], cluster_id="zraft", sender=A), cluster_id="zraft",
                     max_frame_bytes=1 << 20)  # fmt: skip
    client = encode(ClientRequest(1, "status"), cluster_id="zraft", sender="cli")
    assert decode_batch(client, cluster_id="zraft", max_frame_bytes=1 << 20).origin is None
    # A client's origin names the founding its requests are for, and no instance.
    pinned = encode(ClientRequest(1, "put"), cluster_id="zraft", sender="cli", origin=("u", ""))
    assert decode_batch(pinned, cluster_id="zraft", max_frame_bytes=1 << 20).origin == ("u", "")
    for bad in (("", ""), ("u" * 65, "i"), ("u",)):
        frame = encode_batch([beat], cluster_id="zraft", sender=A, origin=bad)  # type: ignore[arg-type]
        with pytest.raises(FrameError, match="bad-origin"):
            decode_batch(frame, cluster_id="zraft", max_frame_bytes=1 << 20)


LISTED = founding_uuid("zraft", [A, B, C])  # the founding list's id
RUNNING = founding_uuid("zraft", [A, B, C], {A: "a1", B: "b1", C: "c0"})


def judge(answers: dict[str, dict[str, Any] | None]) -> FoundingVerdict:
    return judge_founding("zraft", A, "a1", [A, B, C], answers)


def pristine(instance: str, listed: str = LISTED) -> dict[str, Any]:
    return {"cluster_uuid": "", "instance": instance, "known": None, "would_found": listed}


def founded(
    instance: str, known: str | None = None, members: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "cluster_uuid": RUNNING,
        "instance": instance,
        "known": known,
        "members": members or {},
        "founding": LISTED,
    }


def test_founding_waits_until_every_other_founder_has_answered() -> None:
    """A silent founder may be the only one that ran with this peer's wiped directory: with
    it down, an empty directory and a first start look the same to everyone else."""
    verdict = judge({B: pristine("b1"), C: None})
    assert not verdict.found and verdict.refused is None
    assert verdict.waiting_for == (C,)
    unsure = judge({B: pristine("b1"), C: {"unsure": "overloaded"}})
    assert unsure.waiting_for == (C,)
    # All answered, all pristine (or a listed joiner): found, recording each one's instance,
    # under a uuid of the list and the founders' directories.
    joiner = {"cluster_uuid": "", "instance": "c1", "known": None}
    verdict = judge({B: pristine("b1"), C: joiner})
    assert verdict.found and dict(verdict.instances) == {B: "b1", C: "c1"}
    assert verdict.cluster_uuid == founding_uuid("zraft", [A, B, C], {A: "a1", B: "b1", C: "c1"})


def test_a_founder_that_knows_this_directory_settles_it_with_what_it_knows() -> None:
    """It founded with our answer, so it heard every founder then: no need to wait for one
    that has gone down since; and what it knows of the others beats what they answer now
    (C's disk was replaced since the founding: C's new instance must not be vouched for)."""
    witness = founded("b1", known="a1", members={A: "a1", C: "c0"})
    for c_answer in (None, pristine("c1")):
        verdict = judge({B: witness, C: c_answer})
        assert verdict.found and verdict.cluster_uuid == RUNNING
        assert dict(verdict.instances) == {B: "b1", C: "c0"}


def test_founding_is_refused_when_any_answer_says_it_is_a_mistake() -> None:
    wiped = judge({B: founded("b1", known="a0"), C: None})
    assert wiped.refused is not None and "wiped or replaced" in wiped.refused
    # Founded without ever hearing this directory: it was removed, or never a founder.
    removed = judge({B: founded("b1"), C: pristine("c1")})
    assert removed.refused is not None and "without this data directory" in removed.refused
    other_list = dict(founded("b1", known="a1"), founding=founding_uuid("zraft", [A, B]))
    other = judge({B: other_list, C: None})
    assert other.refused is not None and "already runs a founding" in other.refused
    mismatched = judge({B: pristine("b1", founding_uuid("zraft", [B, C])), C: pristine("c1")})
    assert mismatched.refused is not None and "would found a founding" in mismatched.refused
    twice = dict(founded("c1", known="a1"), cluster_uuid=founding_uuid("zraft", [A, B, C], {}))
    split = judge({B: founded("b1", known="a1"), C: twice})
    assert split.refused is not None and "different foundings" in split.refused


def test_a_pending_founding_that_knows_its_fellows_is_not_taken_for_lost_state(
    tmp_path: Path,
) -> None:
    """A crash between recording the founders' instances and writing the founding entry:
    the next start writes the entry, it does not refuse the directory as wiped."""
    file = IdentityFile(tmp_path)
    pending = replace(new_identity("zraft", A, [A, B]), known={B: "b1"}, known_since={B: 0})
    file.save(pending)
    assert open_identity(file, cluster_id="zraft", peer_id=A, state_present=False) == pending


def test_founders_are_asked_through_their_routes() -> None:
    """Behind a proxy or NAT a founder is reached at its route, not at its id."""
    from zraft.local import free_ports

    listening, unreachable = (f"127.0.0.1:{port}" for port in free_ports(2))
    with FounderResponder("zraft", listening, "b1", LISTED, "127.0.0.1", None):
        routes = {unreachable: listening}
        answers = ask_founders("zraft", A, "a1", [A, unreachable], LISTED, None, routes)
        assert answers[unreachable] == pristine("b1")
        assert ask_founders("zraft", A, "a1", [A, unreachable], LISTED, None) == {
            unreachable: None
        }


def said(uuid: str, *members: str) -> dict[str, Any]:
    return {"cluster_uuid": uuid, "instance": "i", "members": dict.fromkeys(members, "x")}


def test_a_session_settles_on_a_live_founding_not_on_one_peers_claim() -> None:
    """``agreed_founding``: more than half of a founding's members (as they name them) back
    it, and more than half of them and the listed peers together do, or all of those
    answered and it has the most backers; ``peers_to_ask`` adds the members named."""
    D, E = "d:1", "e:1"
    listed = [A, B, C]
    assert agreed_founding({A: said("u1", B, C), B: said("u1", A, C)}, listed) == "u1"
    # A wiped peer that founded alone names nobody: it loses to the cluster it left...
    assert agreed_founding({A: said("u9"), B: said("u1", A, C), C: said("u1", A, B)},
                           listed) == "u1"  # fmt: skip
    # ...and settles nothing while others are silent, or answer "not founded" but some
    # listed peer is silent (it may belong to the real cluster).
    assert agreed_founding({A: said("u9")}, listed) is None
    assert agreed_founding({A: said("u9"), B: said("u1", A, C)}, listed) is None
    five = [A, B, C, D, E]
    assert agreed_founding({C: said("u9"), D: said(""), E: said("")}, five) is None
    # A cluster founded by one peer, growing: the others hold no state yet.
    growing = {A: said("u1"), B: said(""), C: said("")}
    assert agreed_founding(growing, listed) == "u1"
    assert agreed_founding({A: said("u1"), B: said("")}, listed) is None  # C may say more
    assert agreed_founding({A: said(""), B: said(""), C: said("")}, listed) is None
    # Two of a three-peer cluster listed, one of them down: the named third one settles it.
    assert agreed_founding({A: said("u1", B, C)}, [A, C]) is None
    assert peers_to_ask({A: said("u1", B, C)}, [A, C]) == [C, B]
    assert agreed_founding({A: said("u1", B, C), B: said("u1", A, C)}, [A, C]) == "u1"
    # (a silent listed peer no member names might be of another founding: not settled)
    assert agreed_founding({A: said("u1", B, C), B: said("u1", A, C)}, [A, D]) is None
    # Malformed answers count for nothing; one peer listed alone is believed.
    assert agreed_founding({A: "u1", B: None, C: said(7)}, listed) is None  # type: ignore[arg-type]
    assert agreed_founding({A: said("u1")}, [A]) == "u1"
    assert agreed_founding({A: said("u1", B, C)}, [A, A]) == "u1"  # its members silent


def test_snapshots_of_another_cluster_or_founding_or_too_old_are_refused() -> None:
    identity = replace(new_identity("zraft", A, [A, B, C]), cluster_uuid="u1")
    meta = SnapshotMeta(100, 3, Configuration.of([A, B, C]))
    ours = {"cluster_id": "zraft", "founding": "u1"}
    check_snapshots("snaps", identity, 101, (meta, ours))
    check_snapshots("snaps", identity, 1, None)  # nothing compacted: the log replays it all
    check_snapshots("snaps", identity, 90, (meta, {}))  # made before snapshots said whose
    refused = {
        "holds no snapshot, but the log starts at index 101": (101, None),
        "of cluster 'other'": (101, (meta, {**ours, "cluster_id": "other"})),
        "another founding": (101, (meta, {**ours, "founding": "u2"})),
        "older than the start of the log": (102, (meta, ours)),
    }
    for why, (first, latest) in refused.items():
        with pytest.raises(DirectoryRefused, match=why):
            check_snapshots("snaps", identity, first, latest)

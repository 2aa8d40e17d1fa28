"""CURVE: only authorized keys get in; peers find each other's server keys by peer id."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.transport.test_transport_support import Inbox, free_address, running, wait_until
from zraft.core.messages import Heartbeat
from zraft.transport import (
    ClientChannel,
    ClientReply,
    ClientRequest,
    CurveSettings,
    TransportError,
    TransportTimeout,
    ZmqTransport,
    generate_keys,
    key_name,
)

CLUSTER = "test-cluster"


def identity(root: Path, name: str, authorized: Path | None) -> CurveSettings:
    """A keypair in its own private directory; its public half copied into ``authorized``."""
    public, secret = generate_keys(root / "private" / name, name)
    assert public.name == f"{name}.key" and secret.name == f"{name}.key_secret"
    if authorized is not None:
        authorized.mkdir(parents=True, exist_ok=True)
        shutil.copy(public, authorized / public.name)
    return CurveSettings(secret, public, authorized or root / "authorized")


@pytest.mark.timeout(30)
def test_key_names_are_file_safe() -> None:
    assert key_name("127.0.0.1:7001") == "127.0.0.1_7001"
    assert key_name("[::1]:7001") == "___1__7001"
    assert key_name("a/../b:1") == "a_.._b_1"
    with pytest.raises(ValueError):
        key_name("..")


@pytest.mark.timeout(60)
def test_curve_peers_and_clients(tmp_path: Path) -> None:
    authorized = tmp_path / "authorized"
    a, b = free_address(), free_address()
    curve_a = identity(tmp_path, key_name(a), authorized)
    curve_b = identity(tmp_path, key_name(b), authorized)
    good = identity(tmp_path, "good-client", authorized)
    # Knows b's public key (so it can try), but its own key is not authorized.
    stranger_dir = tmp_path / "stranger-view"
    stranger_dir.mkdir()
    shutil.copy(authorized / f"{key_name(b)}.key", stranger_dir)
    stranger = identity(tmp_path, "stranger", None)
    stranger = CurveSettings(stranger.secret_key_file, stranger.public_key_file, stranger_dir)

    inbox_a, inbox_b = Inbox(), Inbox()
    holder: list[ZmqTransport] = []

    def echo(reqs: list[tuple[bytes, ClientRequest]]) -> None:
        inbox_b.on_client(reqs)
        holder[0].reply([(rid, ClientReply(r.request_id, True, r.payload)) for rid, r in reqs])

    tb = ZmqTransport(
        cluster_id=CLUSTER,
        peer_id=b,
        peers=[a, b],
        on_peer_messages=inbox_b.on_peer,
        on_client_requests=echo,
        curve=curve_b,
    )
    holder.append(tb)
    tb.start()
    try:
        with running(a, [a, b], inbox_a, curve=curve_a) as ta:
            # Peer to peer, encrypted both ways.
            def reached() -> bool:
                ta.send([Heartbeat(1, a, b, 0, 7)])
                return Heartbeat(1, a, b, 0, 7) in inbox_b.snapshot()

            assert wait_until(reached, step=0.05)

            def reached_back() -> bool:
                tb.send([Heartbeat(1, b, a, 0, 8)])
                return Heartbeat(1, b, a, 0, 8) in inbox_a.snapshot()

            assert wait_until(reached_back, step=0.05)

        with ClientChannel(CLUSTER, "good", curve=good) as channel:
            reply = channel.request(b, ClientRequest(1, "echo", b"secret"), 5.0)
            assert reply == ClientReply(1, True, b"secret")

        with (
            ClientChannel(CLUSTER, "stranger", curve=stranger) as channel,
            pytest.raises(TransportTimeout),
        ):
            channel.request(b, ClientRequest(2, "echo", b"let me in"), 1.0)
        assert wait_until(lambda: tb.stats().get("conn_auth_failed", 0) >= 1), tb.stats()

        with ClientChannel(CLUSTER, "plain") as channel, pytest.raises(TransportTimeout):
            channel.request(b, ClientRequest(3, "echo", b"no crypto"), 1.0)

        assert [r.request_id for _, r in inbox_b.requests] == [1]

        # A client that has no key for the server refuses to send in the clear.
        with (
            ClientChannel(CLUSTER, "lost", curve=stranger) as channel,
            pytest.raises(TransportError),
        ):
            channel.request(a, ClientRequest(4, "echo"), 1.0)
    finally:
        tb.close()


@pytest.mark.timeout(60)
def test_peer_without_a_key_is_counted_then_found_after_reload(tmp_path: Path) -> None:
    authorized = tmp_path / "authorized"
    a, b = free_address(), free_address()
    curve_a = identity(tmp_path, key_name(a), authorized)
    # b's public key is not in the authorized directory yet.
    curve_b = identity(tmp_path, key_name(b), None)
    curve_b = CurveSettings(curve_b.secret_key_file, curve_b.public_key_file, authorized)
    inbox_a, inbox_b = Inbox(), Inbox()
    with (
        running(b, [a, b], inbox_b, curve=curve_b),
        running(a, [a, b], inbox_a, curve=curve_a) as ta,
    ):
        ta.send([Heartbeat(1, a, b, 0, 1)])
        assert wait_until(lambda: ta.stats().get("dropped_no-key", 0) == 1)
        shutil.copy(Path(curve_b.public_key_file), authorized / f"{key_name(b)}.key")
        ta.set_peers([a, b])  # re-reads the keys: a can now reach b

        def reached() -> bool:
            ta.send([Heartbeat(1, a, b, 0, 2)])
            return Heartbeat(1, a, b, 0, 2) in inbox_b.snapshot()

        assert wait_until(reached, step=0.05)

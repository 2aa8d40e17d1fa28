"""CURVE keys: naming, generating and loading them, and setting up a client's socket."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth

_KEY_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def key_name(peer_id: str) -> str:
    """File stem of a peer's (or client's) certificate: unsafe characters become ``_``.

    ``"127.0.0.1:7001"`` → ``"127.0.0.1_7001"``; its public key is
    ``<authorized_keys_dir>/127.0.0.1_7001.key``.
    """
    name = _KEY_NAME_UNSAFE.sub("_", peer_id)
    if not name.strip("."):
        raise ValueError(f"cannot name a key after {peer_id!r}")
    return name


def generate_keys(directory: str | os.PathLike[str], name: str) -> tuple[Path, Path]:
    """Create a CURVE keypair: ``<name>.key`` (public) and ``<name>.key_secret``.

    For a peer pass ``key_name(peer_id)`` so other peers find its public key by id.
    Returns (public_key_file, secret_key_file).
    """
    Path(directory).mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(os.fspath(directory), name)
    return Path(public), Path(secret)


@dataclass(frozen=True, slots=True)
class CurveSettings:
    """CURVE encryption and authentication.

    ``authorized_keys_dir`` holds the public certificates (``*.key``) of every peer and
    client allowed to connect; peers' files are named ``key_name(peer_id) + ".key"`` so
    DEALERs find the server key of the peer they connect to.
    """

    secret_key_file: str | os.PathLike[str]
    public_key_file: str | os.PathLike[str]
    authorized_keys_dir: str | os.PathLike[str]

    def own_keys(self) -> tuple[bytes, bytes]:
        """(public, secret) of this process."""
        public, secret = zmq.auth.load_certificate(os.fspath(self.secret_key_file))
        if secret is None:
            raise ValueError(f"{self.secret_key_file} holds no secret key")
        own_public, _ = zmq.auth.load_certificate(os.fspath(self.public_key_file))
        if own_public != public:
            raise ValueError("public and secret key files do not belong together")
        return public, secret

    def server_key(self, peer_id: str) -> bytes | None:
        """The public key of ``peer_id`` from the authorized directory, or None."""
        path = Path(self.authorized_keys_dir) / f"{key_name(peer_id)}.key"
        try:
            public, _ = zmq.auth.load_certificate(os.fspath(path))
        except (OSError, ValueError):
            return None
        return public


def client_curve(sock: zmq.Socket[Any], curve: CurveSettings, server: str) -> bool:
    server_key = curve.server_key(server)
    if server_key is None:
        return False
    public, secret = curve.own_keys()
    sock.curve_publickey = public
    sock.curve_secretkey = secret
    sock.curve_serverkey = server_key
    return True

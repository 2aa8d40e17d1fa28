"""One peer's settings: defaults < TOML file < command-line flags < keyword arguments.

>>> settings = Settings.load("zraft.toml", args, peer_id="10.0.0.1:7000")  # doctest: +SKIP

Every key has one meaning in every source: durations are ints in milliseconds, sizes ints in
bytes, paths strings (relative paths are relative to the working directory, in every
source). ``log_dir`` and ``snapshot_dir`` default to ``data_dir``; ``request_timeout`` to
2 × ``election_timeout``; ``heartbeat_interval`` to ``election_timeout`` / 10 and
``tick_interval`` to ``heartbeat_interval``. The consensus core counts time in ticks:
``election_ticks = election_timeout // tick_interval`` and likewise ``heartbeat_ticks``.

Unknown keys and bad values raise :class:`SettingsError`, naming the key and where the
value came from. See ``docs/configuration.md`` for every key.

Why one module: every setting's key table, its validation and its sources (flags, TOML file,
defaults) must stay one list.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from zraft.core import NodeOptions

log = logging.getLogger(__name__)

__all__ = ["Settings", "SettingsError", "add_arguments", "parse_peer_id"]


class SettingsError(ValueError):
    """A setting is unknown or has a bad value. ``key`` and ``source`` say which and where."""

    def __init__(self, key: str, source: str, problem: str) -> None:
        super().__init__(f"{key} (from {source}): {problem}")
        self.key = key
        self.source = source
        self.problem = problem


# --------------------------------------------------------------------------- key table


@dataclass(frozen=True, slots=True)
class _Key:
    kind: str  # str, peer, peers, import, path, ms, int, bool, port
    help: str
    optional: bool = False  # None is a legal value
    derived: bool = False  # None means "derive from other keys"
    minimum: int = 0


_KEYS: dict[str, _Key] = {
    "cluster_id": _Key("str", "name of the cluster (keeps clusters apart)"),
    "peer_id": _Key("peer", "this peer's address host:port (required to serve)", optional=True),
    "peers": _Key("peers", "initial members, comma-separated host:port list"),
    "backend": _Key("import", "state machine class, package.module:Class"),
    "data_dir": _Key("path", "directory for the peer's data"),
    "log_dir": _Key("path", "directory for the Raft log (default: data_dir)", derived=True),
    "snapshot_dir": _Key("path", "directory for snapshots (default: data_dir)", derived=True),
    "election_timeout": _Key("ms", "election timeout in ms", minimum=1),
    "request_timeout": _Key(
        "ms",
        "client request timeout in ms (default: 2 x election_timeout)",
        derived=True,
        minimum=1,
    ),
    "heartbeat_interval": _Key(
        "ms",
        "leader heartbeat interval in ms (default: election_timeout / 10)",
        derived=True,
        minimum=1,
    ),
    "tick_interval": _Key(
        "ms",
        "consensus clock tick in ms (default: heartbeat_interval)",
        derived=True,
        minimum=1,
    ),
    "snapshot_listener_addr": _Key("str", "address receiving snapshots from a leader"),
    "snapshot_listener_port": _Key("port", "port receiving snapshots (0: any free port)"),
    "snapshot_backup": _Key("bool", "keep old snapshots in a backups directory"),
    "snapshot_backups_kept": _Key("int", "how many old snapshots to keep as backups"),
    "max_segment_size": _Key("int", "log segment size in bytes", minimum=1),
    "max_log_count": _Key("int", "entries applied between snapshots", minimum=1),
    "max_inflight": _Key("int", "append messages in flight per follower", minimum=1),
    "max_entries_per_message": _Key("int", "entries per append message", minimum=1),
    "max_bytes_per_message": _Key("int", "entry bytes per append message", minimum=1),
    "fsync": _Key("bool", "fsync the log and state (off only for tests)"),
    "log_thread": _Key(
        "bool", "write the log on a thread of its own (a slow disk then delays no heartbeats)"
    ),
    "pre_vote": _Key("bool", "ask for pre-votes before starting an election"),
    "check_quorum": _Key("bool", "a leader without a live quorum steps down"),
    "max_frame_bytes": _Key("int", "largest network frame accepted, in bytes", minimum=1),
    "max_client_requests": _Key(
        "int", "client requests in flight at a peer before new ones get 'overloaded'", minimum=1
    ),
    "max_results_per_client": _Key(
        "int",
        "results a client may leave unacknowledged before its writes get 'overloaded'",
        minimum=1,
    ),
    "curve_secret_key": _Key("path", "CurveZMQ secret key file", optional=True),
    "curve_public_key": _Key("path", "CurveZMQ public key file", optional=True),
    "curve_authorized_keys": _Key(
        "path", "directory of public keys allowed to connect", optional=True
    ),
    "metrics_port": _Key("port", "port serving metrics (unset: none)", optional=True),
    "routes": _Key(
        "routes", "connect to a peer through another address: id=host:port, comma-separated"
    ),
}

_DEFAULT_SOURCE = "default"
_IMPORT_RE = re.compile(
    r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$", re.ASCII
)
_HOST_RE = re.compile(r"^[A-Za-z0-9_.\-]+$", re.ASCII)


def parse_peer_id(text: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6addr]:port`` for IPv6) into host and port; ValueError if bad."""
    if not isinstance(text, str):
        raise ValueError(f"a peer id is a 'host:port' string, not {type(text).__name__}")
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise ValueError(f"{text!r} is not '[ipv6]:port'")
        host, port_text = text[1:close], text[close + 2 :]
        if not host or not all(c in "0123456789abcdefABCDEF:." for c in host):
            raise ValueError(f"{text!r} has a bad IPv6 address")
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not 'host:port'")
        if not _HOST_RE.match(host):
            raise ValueError(f"{text!r} has a bad host name")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"{text!r} has a bad port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"{text!r}: port must be 1..65535")
    return host, port


# --------------------------------------------------------------------------- the object


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """A peer's validated settings (see the module docstring and docs/configuration.md)."""

    cluster_id: str = "zraft"
    peer_id: str | None = None
    peers: tuple[str, ...] = ()
    backend: str = "zraft.backends.kv:KeyValueBackend"
    data_dir: Path = Path("./data")
    log_dir: Path | None = None
    snapshot_dir: Path | None = None
    election_timeout: int = 500
    request_timeout: int | None = None
    heartbeat_interval: int | None = None
    tick_interval: int | None = None
    snapshot_listener_addr: str = "0.0.0.0"
    snapshot_listener_port: int = 0
    snapshot_backup: bool = False
    snapshot_backups_kept: int = 3
    max_segment_size: int = 10485760
    # 10,000, not the Erlang original's 1,000: at 15k writes/s that was 15 snapshots a second,
    # ~12% of the servers' CPU per write (docs/benchmarks.md); replaying 10k entries is quick.
    max_log_count: int = 10_000
    max_inflight: int = 64
    max_entries_per_message: int = 512
    max_bytes_per_message: int = 1 << 20
    fsync: bool = True
    # The log is written on the peer actor's thread: a write crosses two threads fewer.
    log_thread: bool = False
    pre_vote: bool = True
    check_quorum: bool = True
    max_frame_bytes: int = 64 << 20
    max_client_requests: int = 10_000
    max_results_per_client: int = 4_096
    curve_secret_key: Path | None = None
    curve_public_key: Path | None = None
    curve_authorized_keys: Path | None = None
    metrics_port: int | None = None
    routes: tuple[str, ...] = ()
    # Where each explicitly given value came from (key -> "TOML file x", "flag --y", ...).
    _sources: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)
    _derived: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    KEYS: ClassVar[tuple[str, ...]] = tuple(_KEYS)

    # ------------------------------------------------------------------ validation

    def __post_init__(self) -> None:
        object.__setattr__(self, "_sources", dict(self._sources))
        for name, spec in _KEYS.items():
            value = getattr(self, name)
            if value is None and (spec.optional or spec.derived):
                continue
            object.__setattr__(self, name, self._coerce(name, spec, value))
        derived: set[str] = set()

        def derive(name: str, value: Any, how: str) -> None:
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
                self._sources[name] = how
                derived.add(name)

        derive("log_dir", self.data_dir, "the default log_dir = data_dir")
        derive("snapshot_dir", self.data_dir, "the default snapshot_dir = data_dir")
        derive(
            "request_timeout",
            2 * self.election_timeout,
            "the default request_timeout = 2 x election_timeout",
        )
        derive(
            "heartbeat_interval",
            self.election_timeout // 10,
            "the default heartbeat_interval = election_timeout / 10",
        )
        derive(
            "tick_interval",
            self.heartbeat_interval,
            "the default tick_interval = heartbeat_interval",
        )
        object.__setattr__(self, "_derived", frozenset(derived))
        self._check_relations()

    def source_of(self, key: str) -> str:
        """Where ``key``'s value came from: a file, a flag, a keyword argument, default."""
        if key not in _KEYS:
            raise KeyError(key)
        return self._sources.get(key, _DEFAULT_SOURCE)

    def _source(self, name: str) -> str:
        if name in self._sources:
            return self._sources[name]
        if getattr(self, name) != _default(name):
            return f"keyword argument {name}"
        return _DEFAULT_SOURCE

    def _error(self, name: str, problem: str) -> SettingsError:
        return SettingsError(name, self._source(name), problem)

    def _coerce(self, name: str, spec: _Key, value: Any) -> Any:
        kind = spec.kind
        if kind == "bool":
            if not isinstance(value, bool):
                raise self._error(name, f"must be true or false, not {_show(value)}")
            return value
        if kind in ("ms", "int", "port"):
            if type(value) is not int:
                unit = " (milliseconds)" if kind == "ms" else ""
                raise self._error(name, f"must be an integer{unit}, not {_show(value)}")
            top = 65535 if kind == "port" else None
            if value < spec.minimum or (top is not None and value > top):
                bound = f"{spec.minimum}..{top}" if top is not None else f">= {spec.minimum}"
                raise self._error(name, f"must be {bound}, got {value}")
            return value
        if kind == "path":
            if isinstance(value, str):
                if not value or "\0" in value:
                    raise self._error(name, "must be a non-empty path without NUL characters")
                return Path(value)
            if isinstance(value, os.PathLike):
                return Path(value)
            raise self._error(name, f"must be a path string, not {_show(value)}")
        if kind == "routes":
            return self._coerce_routes(name, value)
        if not isinstance(value, str) and kind != "peers":
            raise self._error(name, f"must be a string, not {_show(value)}")
        if kind == "str":
            if not value.strip() or value != value.strip():
                raise self._error(name, f"must be non-empty without surrounding spaces: {value!r}")
            return value
        if kind == "import":
            if not _IMPORT_RE.match(value):
                raise self._error(name, f"{value!r} is not of the form 'package.module:Class'")
            return value
        if kind == "peer":
            try:
                parse_peer_id(value)
            except ValueError as exc:
                raise self._error(name, f"unparsable peer id: {exc}") from None
            return value
        # peers
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise self._error(name, f"must be a list of 'host:port' strings, not {_show(value)}")
        seen: set[str] = set()
        for item in value:
            try:
                parse_peer_id(item)
            except ValueError as exc:
                raise self._error(name, f"unparsable peer id: {exc}") from None
            if item in seen:
                raise self._error(name, f"{item!r} is listed twice")
            seen.add(item)
        return tuple(value)

    def _coerce_routes(self, name: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise self._error(name, f"must be a list of 'id=host:port' strings, not {_show(value)}")
        for item in value:
            peer, sep, address = str(item).partition("=")
            try:
                if not sep:
                    raise ValueError(f"{item!r} has no '='")
                parse_peer_id(peer)
                parse_peer_id(address)
            except ValueError as exc:
                raise self._error(name, f"bad route: {exc}") from None
        return tuple(value)

    def route_map(self) -> dict[str, str]:
        """Peer id -> the address to connect to (a proxy, a NAT), where it differs."""
        return dict(item.partition("=")[::2] for item in self.routes)

    def _check_relations(self) -> None:
        election = self.election_timeout
        heartbeat, tick = self._ms("heartbeat_interval"), self._ms("tick_interval")
        if heartbeat < 1:
            raise self._error(
                "heartbeat_interval",
                f"comes out as {heartbeat} ms; set election_timeout >= 10 ms "
                "or heartbeat_interval explicitly",
            )
        if heartbeat >= election:
            raise self._error(
                "heartbeat_interval",
                f"{heartbeat} ms must be less than election_timeout ({election} ms, from "
                f"{self._source('election_timeout')})",
            )
        if tick > heartbeat:
            raise self._error(
                "tick_interval",
                f"{tick} ms must not exceed heartbeat_interval ({heartbeat} ms, from "
                f"{self._source('heartbeat_interval')})",
            )
        if self.heartbeat_ticks >= self.election_ticks:
            raise self._error(
                "tick_interval",
                f"{tick} ms gives heartbeat_ticks {self.heartbeat_ticks} >= election_ticks "
                f"{self.election_ticks}; use a shorter tick",
            )
        for name, value in (("election_timeout", election), ("heartbeat_interval", heartbeat)):
            if value % tick:
                log.warning(
                    "%s %d ms is not a multiple of tick_interval %d ms; using %d ms",
                    name,
                    value,
                    tick,
                    value - value % tick,
                )
        if self.max_bytes_per_message >= self.max_frame_bytes:
            raise self._error(
                "max_bytes_per_message",
                f"{self.max_bytes_per_message} must be less than max_frame_bytes "
                f"({self.max_frame_bytes}, from {self._source('max_frame_bytes')})",
            )
        secret, public = self.curve_secret_key, self.curve_public_key
        if (secret is None) != (public is None):
            given, missing = (
                ("curve_secret_key", "curve_public_key")
                if secret is not None
                else ("curve_public_key", "curve_secret_key")
            )
            raise self._error(given, f"needs {missing} too (CurveZMQ uses a key pair)")
        if self.curve_authorized_keys is not None and secret is None:
            raise self._error(
                "curve_authorized_keys", "needs curve_secret_key and curve_public_key"
            )
        if self.peer_id is not None and self.peers and self.peer_id not in self.peers:
            log.info("peer %s is not among the initial peers (joining later?)", self.peer_id)

    def _ms(self, name: str) -> int:
        value = getattr(self, name)
        assert isinstance(value, int)
        return value

    # ------------------------------------------------------------------ derived values

    @property
    def election_ticks(self) -> int:
        return self.election_timeout // self._ms("tick_interval")

    @property
    def heartbeat_ticks(self) -> int:
        return self._ms("heartbeat_interval") // self._ms("tick_interval")

    def node_options(self) -> NodeOptions:
        """The consensus core's options for these settings."""
        return NodeOptions(
            election_ticks=self.election_ticks,
            heartbeat_ticks=self.heartbeat_ticks,
            max_entries_per_message=self.max_entries_per_message,
            max_bytes_per_message=self.max_bytes_per_message,
            max_inflight=self.max_inflight,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
        )

    def require_peer_id(self) -> str:
        """The peer id; SettingsError if it was not set (serving needs it)."""
        if self.peer_id is None:
            raise SettingsError("peer_id", _DEFAULT_SOURCE, "is required to serve (host:port)")
        return self.peer_id

    def replace(self, **changes: Any) -> Settings:
        """A copy with ``changes`` (as keyword arguments); derived values are derived again."""
        values: dict[str, Any] = {}
        for name in _KEYS:
            if name not in self._derived:
                values[name] = getattr(self, name)
        sources = {k: v for k, v in self._sources.items() if k not in self._derived}
        for name, value in changes.items():
            _check_known(name, f"keyword argument {name}")
            values[name] = value
            sources[name] = f"keyword argument {name}"
        return Settings(**values, _sources=sources)

    def as_dict(self) -> dict[str, Any]:
        """Every key's effective value, paths as strings (e.g. for logging)."""
        out: dict[str, Any] = {}
        for name in _KEYS:
            value = getattr(self, name)
            out[name] = str(value) if isinstance(value, Path) else value
        out["peers"] = list(self.peers)
        return out

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        toml_path: str | os.PathLike[str] | None = None,
        args: argparse.Namespace | None = None,
        **overrides: Any,
    ) -> Settings:
        """Defaults, then the TOML file, then flags (from ``add_arguments``), then kwargs.

        Without ``toml_path``, a ``--config`` flag in ``args`` names the TOML file.
        """
        values: dict[str, Any] = {}
        sources: dict[str, str] = {}
        if toml_path is None and args is not None:
            toml_path = getattr(args, "zraft_config", None)
        if toml_path is not None:
            for name, value in _read_toml(Path(toml_path)).items():
                values[name] = value
                sources[name] = f"TOML file {os.fspath(toml_path)}"
        if args is not None:
            for name, value in _flag_values(args).items():
                values[name] = value
                sources[name] = f"flag {_flag(name)}"
        for name, value in overrides.items():
            _check_known(name, f"keyword argument {name}")
            values[name] = value
            sources[name] = f"keyword argument {name}"
        settings = cls(**values, _sources=sources)
        log.debug("settings: %s", settings.as_dict())
        return settings

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: Any) -> Settings:
        """``load`` with the TOML file named by ``--config`` (if given) and the flags."""
        return cls.load(None, args, **overrides)


def _default(name: str) -> Any:
    for f in fields(Settings):
        if f.name == name:
            return f.default
    raise KeyError(name)


def _show(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def _check_known(name: str, source: str) -> None:
    if name in _KEYS:
        return
    close = difflib.get_close_matches(name, list(_KEYS), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SettingsError(name, source, f"unknown setting{hint}")


def _read_toml(path: Path) -> dict[str, Any]:
    source = f"TOML file {os.fspath(path)}"
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError("config", source, "file not found") from None
    except OSError as exc:
        raise SettingsError("config", source, f"cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError("config", source, f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise SettingsError("config", source, "invalid TOML: not UTF-8") from None
    for name in raw:
        _check_known(name, source)
    return raw


# --------------------------------------------------------------------------- flags


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per key (``--election-timeout`` for election_timeout).

    Flags are stored under ``zraft_<key>`` and only when given, so ``Settings.from_args``
    knows which ones the user set. Optional keys accept ``none`` to unset a TOML value.
    """
    group = parser.add_argument_group("zraft settings")
    group.add_argument(
        "--config",
        dest="zraft_config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="TOML settings file",
    )
    for name, spec in _KEYS.items():
        dest = f"zraft_{name}"
        if spec.kind == "bool":
            group.add_argument(
                _flag(name),
                dest=dest,
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=spec.help,
            )
            continue
        metavar = {
            "ms": "MS",
            "int": "N",
            "port": "PORT",
            "path": "PATH",
            "peer": "HOST:PORT",
            "peers": "HOST:PORT,...",
            "import": "MODULE:CLASS",
        }.get(spec.kind, "TEXT")
        group.add_argument(
            _flag(name), dest=dest, metavar=metavar, default=argparse.SUPPRESS, help=spec.help
        )


def _flag_values(args: argparse.Namespace) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for name, spec in _KEYS.items():
        dest = f"zraft_{name}"
        if not hasattr(args, dest):
            continue
        raw = getattr(args, dest)
        if not isinstance(raw, str):
            found[name] = raw  # booleans, or values set programmatically
            continue
        text = raw.strip()
        source = f"flag {_flag(name)}"
        if (spec.optional or spec.derived) and text.lower() == "none":
            found[name] = None
        elif spec.kind in ("ms", "int", "port"):
            try:
                found[name] = int(text, 10)
            except ValueError:
                raise SettingsError(name, source, f"must be an integer, not {raw!r}") from None
        elif spec.kind in ("peers", "routes"):
            found[name] = [p.strip() for p in text.split(",")] if text else []
        else:
            found[name] = raw
    return found

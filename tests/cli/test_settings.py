"""Settings: defaults, TOML, flags, keyword arguments, validation and derived values."""

from __future__ import annotations

import argparse
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import REPO
from zraft.core import NodeOptions
from zraft.settings import Settings, SettingsError, add_arguments, parse_peer_id

DOCS = REPO / "docs" / "configuration.md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="test")
    add_arguments(p)
    return p


def flags(*argv: str) -> argparse.Namespace:
    return parser().parse_args(list(argv))


def toml(tmp_path: Path, text: str, name: str = "zraft.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error(**kwargs: Any) -> SettingsError:
    with pytest.raises(SettingsError) as info:
        Settings.load(**kwargs)
    return info.value


# --------------------------------------------------------------------------- defaults


@pytest.mark.timeout(10)
def test_defaults() -> None:
    s = Settings.load()
    assert s.cluster_id == "zraft"
    assert s.peer_id is None and s.peers == ()
    assert s.backend == "zraft.backends.kv:KeyValueBackend"
    assert s.data_dir == s.log_dir == s.snapshot_dir == Path("./data")
    assert s.election_timeout == 500
    assert s.request_timeout == 1000
    assert s.heartbeat_interval == 50
    assert s.tick_interval == 50
    assert (s.election_ticks, s.heartbeat_ticks) == (10, 1)
    assert s.snapshot_listener_addr == "0.0.0.0" and s.snapshot_listener_port == 0
    assert s.snapshot_backup is False and s.snapshot_backups_kept == 3
    assert s.max_segment_size == 10485760 and s.max_log_count == 10_000
    assert (s.max_inflight, s.max_entries_per_message, s.max_bytes_per_message) == (
        64, 512, 1 << 20)
    assert s.fsync and s.pre_vote and s.check_quorum
    assert s.max_frame_bytes == 64 << 20
    assert s.curve_secret_key is s.curve_public_key is s.curve_authorized_keys is None
    assert s.metrics_port is None
    assert s.source_of("cluster_id") == "default"
    assert s.source_of("request_timeout") == "the default request_timeout = 2 x election_timeout"
    assert Settings() == s


@pytest.mark.timeout(10)
def test_node_options() -> None:
    options = Settings.load(
        election_timeout=1000, tick_interval=20, heartbeat_interval=100, max_inflight=8,
        max_entries_per_message=16, max_bytes_per_message=4096, pre_vote=False,
        check_quorum=False,
    ).node_options()
    assert options == NodeOptions(
        election_ticks=50, heartbeat_ticks=5, max_entries_per_message=16,
        max_bytes_per_message=4096, max_inflight=8, pre_vote=False, check_quorum=False,
    )
    assert Settings.load().node_options() == NodeOptions(election_ticks=10, heartbeat_ticks=1)


@pytest.mark.timeout(10)
def test_derived_values_follow_their_inputs() -> None:
    s = Settings.load(election_timeout=2000, data_dir="/var/lib/zr")
    assert s.request_timeout == 4000 and s.heartbeat_interval == 200 and s.tick_interval == 200
    assert s.log_dir == s.snapshot_dir == Path("/var/lib/zr")
    s = Settings.load(election_timeout=2000, request_timeout=300, heartbeat_interval=150,
                      log_dir="/logs")
    assert s.request_timeout == 300 and s.heartbeat_interval == 150 and s.tick_interval == 150
    assert s.election_ticks == 13 and s.heartbeat_ticks == 1
    assert s.log_dir == Path("/logs") and s.snapshot_dir == Path("./data")
    # None for a derived key means "derive it".
    assert Settings.load(request_timeout=None).request_timeout == 1000


@pytest.mark.timeout(10)
def test_replace_derives_again() -> None:
    s = Settings.load(election_timeout=1000, data_dir="/a", snapshot_dir="/snap")
    t = s.replace(election_timeout=3000, data_dir="/b")
    assert (t.request_timeout, t.heartbeat_interval, t.tick_interval) == (6000, 300, 300)
    assert t.log_dir == Path("/b") and t.snapshot_dir == Path("/snap")
    assert t.source_of("snapshot_dir") == "keyword argument snapshot_dir"
    with pytest.raises(SettingsError, match="unknown setting"):
        s.replace(nope=1)


@pytest.mark.timeout(10)
def test_inexact_ticks_are_rounded_down_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zraft.settings"):
        s = Settings.load(election_timeout=500, heartbeat_interval=60, tick_interval=30)
    assert s.election_ticks == 16 and s.heartbeat_ticks == 2
    assert "election_timeout 500 ms is not a multiple of tick_interval 30 ms" in caplog.text


# --------------------------------------------------------------------------- sources


@pytest.mark.timeout(10)
def test_toml_file(tmp_path: Path) -> None:
    path = toml(tmp_path, """
        cluster_id = "prod"
        peer_id = "10.0.0.1:7000"
        peers = ["10.0.0.1:7000", "10.0.0.2:7000", "[::1]:7000"]
        data_dir = "/srv/zraft"
        election_timeout = 1000
        fsync = false
        metrics_port = 9100
        curve_secret_key = "keys/server.key_secret"
        curve_public_key = "keys/server.key"
    """.replace("\n        ", "\n"))
    s = Settings.load(path)
    assert s.cluster_id == "prod" and s.peer_id == "10.0.0.1:7000"
    assert s.peers == ("10.0.0.1:7000", "10.0.0.2:7000", "[::1]:7000")
    assert s.data_dir == s.log_dir == Path("/srv/zraft")
    assert s.election_timeout == 1000 and s.request_timeout == 2000
    assert s.fsync is False and s.metrics_port == 9100
    assert s.curve_secret_key == Path("keys/server.key_secret")
    assert s.source_of("election_timeout") == f"TOML file {path}"
    assert s.source_of("max_inflight") == "default"


@pytest.mark.timeout(10)
def test_flags() -> None:
    args = flags("--peer-id", "h:1", "--peers", "h:1, h:2,h:3", "--election-timeout", "800",
                 "--no-pre-vote", "--snapshot-backup", "--data-dir", "d", "--metrics-port",
                 "9000", "--request-timeout", "none")
    s = Settings.from_args(args)
    assert s.peer_id == "h:1" and s.peers == ("h:1", "h:2", "h:3")
    assert s.election_timeout == 800 and s.request_timeout == 1600
    assert s.pre_vote is False and s.snapshot_backup is True
    assert s.data_dir == Path("d") and s.metrics_port == 9000
    assert s.source_of("election_timeout") == "flag --election-timeout"
    assert Settings.from_args(flags()) == Settings.load()
    assert Settings.from_args(flags("--peers", "")).peers == ()


@pytest.mark.timeout(10)
def test_flags_do_not_clash_with_the_application() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--verbose", action="store_true")
    p.add_argument("positional")
    add_arguments(p)
    args = p.parse_args(["x", "--verbose", "--max-inflight", "4"])
    assert args.positional == "x" and args.verbose
    assert Settings.from_args(args).max_inflight == 4
    assert "zraft settings" in p.format_help()


@pytest.mark.timeout(10)
def test_precedence(tmp_path: Path) -> None:
    path = toml(tmp_path, 'election_timeout = 1000\nmax_inflight = 7\ncluster_id = "file"\n'
                          'metrics_port = 9100\n')
    args = flags("--config", str(path), "--election-timeout", "2000", "--cluster-id", "flag",
                 "--metrics-port", "none")
    s = Settings.from_args(args, cluster_id="kwarg")
    assert s.max_inflight == 7  # only in the file
    assert s.election_timeout == 2000  # flag beats file
    assert s.cluster_id == "kwarg"  # kwarg beats flag and file
    assert s.metrics_port is None  # a flag can unset a file's optional value
    assert s.source_of("max_inflight") == f"TOML file {path}"
    assert s.source_of("election_timeout") == "flag --election-timeout"
    assert s.source_of("cluster_id") == "keyword argument cluster_id"
    # An explicit toml_path wins over --config.
    other = toml(tmp_path, "max_inflight = 9\n", "other.toml")
    assert Settings.load(other, args).max_inflight == 9


# --------------------------------------------------------------------------- errors


@pytest.mark.timeout(10)
def test_unknown_keys_name_the_source(tmp_path: Path) -> None:
    path = toml(tmp_path, "election_timeout = 100\nelection_timout = 3\n")
    with pytest.raises(SettingsError) as info:
        Settings.load(path)
    assert info.value.key == "election_timout"
    assert info.value.source == f"TOML file {path}"
    assert "did you mean 'election_timeout'?" in str(info.value)
    e = error(maxinflight=3)
    assert (e.key, e.source) == ("maxinflight", "keyword argument maxinflight")
    assert str(e).startswith("maxinflight (from keyword argument maxinflight): unknown setting")
    assert "did you mean" not in str(error(completely_unrelated=1))


@pytest.mark.timeout(10)
def test_toml_file_problems(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    e = error(toml_path=missing)
    assert (e.key, e.source, e.problem) == ("config", f"TOML file {missing}", "file not found")
    broken = toml(tmp_path, "election_timeout = = 3\n", "broken.toml")
    assert "invalid TOML" in str(error(toml_path=broken))
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"\xff\xfe = 1")
    assert "invalid TOML" in str(error(toml_path=binary))
    assert "cannot be read" in str(error(toml_path=tmp_path))  # a directory
    nested = toml(tmp_path, "[peers]\na = 1\n", "nested.toml")
    e = error(toml_path=nested)
    assert e.key == "peers" and "must be a list" in e.problem


BAD_VALUES: list[tuple[str, Any, str]] = [
    ("election_timeout", "500", "must be an integer (milliseconds), not str '500'"),
    ("election_timeout", 500.0, "must be an integer (milliseconds), not float"),
    ("election_timeout", True, "must be an integer (milliseconds), not bool"),
    ("election_timeout", 0, "must be >= 1, got 0"),
    ("request_timeout", -5, "must be >= 1"),
    ("tick_interval", 0, "must be >= 1"),
    ("max_segment_size", -1, "must be >= 1, got -1"),
    ("max_log_count", 0, "must be >= 1"),
    ("max_inflight", 0, "must be >= 1"),
    ("max_entries_per_message", 0, "must be >= 1"),
    ("max_frame_bytes", 0, "must be >= 1"),
    ("snapshot_backups_kept", -1, "must be >= 0"),
    ("snapshot_listener_port", 65536, "must be 0..65535"),
    ("snapshot_listener_port", -1, "must be 0..65535"),
    ("metrics_port", "9100", "must be an integer"),
    ("fsync", "yes", "must be true or false, not str 'yes'"),
    ("fsync", 1, "must be true or false, not int"),
    ("cluster_id", "", "must be non-empty"),
    ("cluster_id", " x", "without surrounding spaces"),
    ("cluster_id", 3, "must be a string, not int"),
    ("snapshot_listener_addr", None, "must be a string, not NoneType"),
    ("backend", "zraft.backends.kv.KeyValueBackend", "is not of the form 'package.module:Class'"),
    ("peer_id", "localhost", "unparsable peer id: 'localhost' is not 'host:port'"),
    ("peer_id", "h:0", "port must be 1..65535"),
    ("peer_id", "h:99999", "port must be 1..65535"),
    ("peer_id", "h:port", "has a bad port"),
    ("peer_id", ":7000", "has a bad host name"),
    ("peer_id", "a b:7000", "has a bad host name"),
    ("peer_id", "[::1:7000", "is not '[ipv6]:port'"),
    ("peer_id", "[zz]:7000", "has a bad IPv6 address"),
    ("peer_id", 7000, "not int"),
    ("peers", "a:1,b:2", "must be a list of 'host:port' strings, not str"),
    ("peers", ["a:1", "b"], "unparsable peer id: 'b' is not 'host:port'"),
    ("peers", ["a:1", "a:1"], "'a:1' is listed twice"),
    ("peers", ["a:1", 5], "unparsable peer id"),
    ("data_dir", "", "must be a non-empty path"),
    ("data_dir", 5, "must be a path string, not int"),
    ("log_dir", "a\0b", "without NUL"),
    ("data_dir", None, "must be a path string, not NoneType"),
]


@pytest.mark.timeout(10)
@pytest.mark.parametrize(("key", "value", "problem"), BAD_VALUES)
def test_bad_values_from_kwargs(key: str, value: Any, problem: str) -> None:
    e = error(**{key: value})
    assert e.key == key
    assert e.source == f"keyword argument {key}"
    assert problem in e.problem
    assert str(e).startswith(f"{key} (from keyword argument {key}): ")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("line", "key", "problem"),
    [
        ('election_timeout = "fast"', "election_timeout", "must be an integer"),
        ("election_timeout = 0.5", "election_timeout", "not float"),
        ("max_segment_size = -10", "max_segment_size", "must be >= 1"),
        ('fsync = "false"', "fsync", "must be true or false"),
        ('peers = ["a:1", "nope"]', "peers", "unparsable peer id"),
        ('peer_id = "h:70000"', "peer_id", "port must be 1..65535"),
        ("data_dir = 3", "data_dir", "must be a path string"),
    ],
)
def test_bad_values_from_toml(tmp_path: Path, line: str, key: str, problem: str) -> None:
    path = toml(tmp_path, line + "\n")
    e = error(toml_path=path)
    assert (e.key, e.source) == (key, f"TOML file {path}")
    assert problem in e.problem


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("argv", "key", "problem"),
    [
        (["--election-timeout", "fast"], "election_timeout", "must be an integer, not 'fast'"),
        (["--election-timeout", "-3"], "election_timeout", "must be >= 1"),
        (["--max-inflight", "1.5"], "max_inflight", "must be an integer"),
        (["--peers", "a:1,,b:2"], "peers", "unparsable peer id"),
        (["--peer-id", "nohost"], "peer_id", "unparsable peer id"),
        (["--backend", "nocolon"], "backend", "package.module:Class"),
        (["--election-timeout", "none"], "election_timeout", "must be an integer"),
    ],
)
def test_bad_values_from_flags(argv: list[str], key: str, problem: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_args(flags(*argv))
    flag = "--" + key.replace("_", "-")
    assert (info.value.key, info.value.source) == (key, f"flag {flag}")
    assert problem in info.value.problem


@pytest.mark.timeout(10)
def test_timeouts_out_of_order(tmp_path: Path) -> None:
    path = toml(tmp_path, "election_timeout = 300\n")
    with pytest.raises(SettingsError) as info:
        Settings.load(path, heartbeat_interval=300)
    assert info.value.key == "heartbeat_interval"
    assert info.value.source == "keyword argument heartbeat_interval"
    assert f"less than election_timeout (300 ms, from TOML file {path})" in str(info.value)

    e = error(heartbeat_interval=50, tick_interval=60)
    assert e.key == "tick_interval"
    assert "must not exceed heartbeat_interval (50 ms, from keyword argument" in e.problem

    e = error(election_timeout=100, heartbeat_interval=60, tick_interval=60)
    assert e.key == "tick_interval" and "heartbeat_ticks 1 >= election_ticks 1" in e.problem

    e = error(election_timeout=9)
    assert e.key == "heartbeat_interval"
    assert e.source == "the default heartbeat_interval = election_timeout / 10"
    assert "comes out as 0 ms" in e.problem

    e = error(max_bytes_per_message=64 << 20)
    assert e.key == "max_bytes_per_message"
    assert "less than max_frame_bytes (67108864, from default)" in e.problem


@pytest.mark.timeout(10)
def test_curve_keys_come_in_pairs() -> None:
    e = error(curve_secret_key="s")
    assert e.key == "curve_secret_key" and "needs curve_public_key" in e.problem
    e = error(curve_public_key="p")
    assert e.key == "curve_public_key" and "needs curve_secret_key" in e.problem
    e = error(curve_authorized_keys="dir")
    assert e.key == "curve_authorized_keys"
    s = Settings.load(curve_secret_key="s", curve_public_key=Path("p"),
                      curve_authorized_keys="dir")
    assert s.curve_public_key == Path("p") and s.curve_authorized_keys == Path("dir")


@pytest.mark.timeout(10)
def test_peer_id_required_to_serve() -> None:
    with pytest.raises(SettingsError, match="peer_id .* is required to serve"):
        Settings.load().require_peer_id()
    assert Settings.load(peer_id="[fe80::1]:7000").require_peer_id() == "[fe80::1]:7000"


@pytest.mark.timeout(10)
def test_parse_peer_id() -> None:
    assert parse_peer_id("example.com:80") == ("example.com", 80)
    assert parse_peer_id("[::1]:7000") == ("::1", 7000)
    assert parse_peer_id("10.0.0.1:65535") == ("10.0.0.1", 65535)
    for bad in ("h:+80", "h:٣", "h:", "[::1]", "h:80 "):
        with pytest.raises(ValueError):
            parse_peer_id(bad)


@pytest.mark.timeout(10)
def test_settings_are_frozen() -> None:
    s = Settings.load()
    with pytest.raises(AttributeError):
        s.election_timeout = 3  # type: ignore[misc]


@pytest.mark.timeout(10)
def test_every_key_has_a_flag_and_is_documented() -> None:
    help_text = parser().format_help()
    docs = DOCS.read_text()
    for key in Settings.KEYS:
        assert "--" + key.replace("_", "-") in help_text, key
        assert re.search(rf"^\| `{key}` \|", docs, re.MULTILINE), f"{key} not in {DOCS}"
    assert Settings.load().as_dict().keys() == set(Settings.KEYS)


@pytest.mark.timeout(10)
def test_example_toml_in_the_docs_loads(tmp_path: Path) -> None:
    example = re.search(r"```toml\n(.*?)```", DOCS.read_text(), re.DOTALL)
    assert example is not None
    s = Settings.load(toml(tmp_path, example.group(1)))
    assert s.source_of("election_timeout").startswith("TOML file")
    assert (s.election_ticks, s.heartbeat_ticks, s.request_timeout) == (20, 2, 2000)

"""The Prometheus endpoint serves the peer's counters."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from zraft.actors.runtime import PeerRuntime
from zraft.local import free_ports
from zraft.settings import Settings


@pytest.mark.timeout(60)
def test_metrics_endpoint_reports_the_peer(tmp_path: Path) -> None:
    port, metrics_port = free_ports(2)
    peer = f"127.0.0.1:{port}"
    settings = Settings.load(
        peer_id=peer,
        peers=[peer],
        data_dir=tmp_path,
        metrics_port=metrics_port,
        election_timeout=200,
    )
    runtime = PeerRuntime(settings).start()
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 10
        text = ""
        while time.monotonic() < deadline and f'zraft_is_leader{{peer="{peer}"}} 1' not in text:
            time.sleep(0.1)
            text = urllib.request.urlopen(url, timeout=2).read().decode()
        assert f'zraft_is_leader{{peer="{peer}"}} 1' in text
        assert f'zraft_commit{{peer="{peer}"}}' in text
        assert "zraft_log_fsyncs" in text and "zraft_transport_rejected" in text
    finally:
        runtime.stop()

"""The cluster under test: local peer processes whose links all go through proxies.

``ChaosCluster`` wraps a :class:`~zraft.local.LocalCluster` (one process per peer on
127.0.0.1) and :class:`~zraft.chaos.proxy.ProxiedLinks` (a proxy per ordered pair of
peers, so partitions are real). It remembers what the suite did to each peer (paused,
removed from the configuration, started with a failing disk), so that nemeses do not
trip over each other and ``heal`` can bring everything back: every peer running, every
link open, all peers voters again.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from zraft.core import Configuration
from zraft.local import ClusterError, LocalCluster
from zraft.session import LightSession, ZraftError

from .proxy import ProxiedLinks

log = logging.getLogger(__name__)


class ChaosCluster:
    def __init__(
        self,
        root: Path,
        *,
        size: int = 5,
        backend: str,
        election_timeout_ms: int = 500,
        max_log_count: int = 500,
        cluster_id: str = "chaos",
    ) -> None:
        self.root = Path(root)
        self.local = LocalCluster(
            size,
            self.root / "peers",
            cluster_id=cluster_id,
            election_timeout=election_timeout_ms,
            extra_args=["--backend", backend, "--max-log-count", str(max_log_count)],
            log_level="INFO",
        )
        self.peers: list[str] = list(self.local.peers)
        self.links = ProxiedLinks(self.peers)
        for peer in self.peers:
            self.local.peer_args[peer] = self.links.routes_for(peer)
        self.election_timeout = election_timeout_ms / 1000
        self.lock = threading.RLock()  # nemeses run one at a time, heal takes it too
        self.busy: set[str] = set()  # peers some nemesis is acting on
        self.paused: set[str] = set()
        self.removed: set[str] = set()  # left out of the configuration by the suite
        self.start_members: dict[str, list[str]] = {}  # how a peer was (re)started: [] = empty
        self._retired = 0
        self._admin: LightSession | None = None

    # ------------------------------------------------------------------ life cycle

    def start(self, timeout: float = 30.0) -> str:
        self.local.start()
        return self.local.wait_for_leader(timeout)

    def close(self) -> None:
        """Kill every process and close every proxy, whatever state the run left."""
        for peer in list(self.paused):
            self.local.signal(peer, signal.SIGCONT)
        self.paused.clear()
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        try:
            self.local.close()
        finally:
            self.links.close()

    def __enter__(self) -> ChaosCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ peers

    @property
    def cluster_id(self) -> str:
        return self.local.cluster_id

    def data_dir(self, peer: str) -> Path:
        return self.local.data_dir(peer)

    def alive(self, peer: str) -> bool:
        return self.local.alive(peer)

    def members(self) -> list[str]:
        """Peers the suite believes are voters (not removed)."""
        return [p for p in self.peers if p not in self.removed]

    def free(self) -> list[str]:
        """Voters no nemesis is acting on, in a stable order (for seeded choices)."""
        return [p for p in self.members() if p not in self.busy]

    def leader(self) -> str | None:
        return self.local.leader([p for p in self.members() if p not in self.paused])

    def kill(self, peer: str) -> None:
        self.local.kill(peer)

    def restart(self, peer: str, disk_faults: list[str] | None = None) -> None:
        """(Re)start a peer that is down, the way it was first started; with
        ``disk_faults`` (flags of zraft.chaos.faulty_peer) on a failing disk."""
        self.local.kill(peer)  # reaps an exited process; no-op when none
        if disk_faults:
            self.local.peer_launch[peer] = ["zraft.chaos.faulty_peer", *disk_faults]
        else:
            self.local.peer_launch.pop(peer, None)
        self.local.start_peer(peer, self.start_members.get(peer))

    def pause(self, peer: str) -> None:
        self.local.signal(peer, signal.SIGSTOP)
        self.paused.add(peer)

    def resume(self, peer: str) -> None:
        self.local.signal(peer, signal.SIGCONT)
        self.paused.discard(peer)

    def exit_code(self, peer: str) -> int | None:
        process: subprocess.Popen[bytes] | None = self.local.processes.get(peer)
        return None if process is None else process.poll()

    def status(self, peer: str, timeout: float = 1.0) -> dict[str, Any] | None:
        return self.local.status(peer, timeout)

    def wipe_for_rejoin(self, peer: str) -> None:
        """Stop a removed peer, keep its log file aside, and empty its data directory."""
        self.local.kill(peer)
        data = self.data_dir(peer)
        logfile = data / "peer.log"
        if logfile.exists():
            retired = self.root / "retired"
            retired.mkdir(parents=True, exist_ok=True)
            self._retired += 1
            shutil.move(str(logfile), retired / f"{peer.replace(':', '_')}-{self._retired}.log")
        shutil.rmtree(data, ignore_errors=True)

    # ------------------------------------------------------------------ membership

    def admin(self) -> LightSession:
        """A session for membership changes (used by one thread at a time, under ``lock``)."""
        if self._admin is None:
            self._admin = LightSession(
                self.peers, cluster_id=self.cluster_id, election_timeout=self.election_timeout
            )
        return self._admin

    def configuration(
        self, timeout: float = 10.0, *, settled: bool = False
    ) -> Configuration | None:
        """The leader's configuration (with ``settled``, once no change is under way), or
        None if there is none within ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return self.admin().members(max(0.5, deadline - time.monotonic()), settled=settled)
            except ZraftError as error:
                log.debug("reading the configuration: %s", error)
                time.sleep(0.2)
        return None

    def remove(self, peer: str, timeout: float = 10.0) -> None:
        """Take ``peer`` out of the voters (raises ZraftError if the change fails)."""
        self.admin().remove(peer, timeout=timeout)
        self.removed.add(peer)
        # A removed peer stops itself once it learns the change committed; give it time.
        with contextlib.suppress(ClusterError):
            self.local.wait_for(lambda: not self.alive(peer), 5.0, f"{peer} to stop")

    def rejoin(self, peer: str, timeout: float = 30.0) -> None:
        """Bring a removed peer back: empty, as a learner, caught up, then a voter."""
        self.wipe_for_rejoin(peer)
        self.start_members[peer] = []
        self.local.start_peer(peer, [])
        admin = self.admin()
        deadline = time.monotonic() + timeout
        config = admin.members()
        if peer not in config.learners and peer not in config.voters:
            admin.add_learner(peer, timeout=max(1.0, deadline - time.monotonic()))
        target = admin.status()["commit"]
        self.local.wait_for(
            lambda: (self.status(peer, 0.5) or {}).get("applied", 0) >= target,
            max(1.0, deadline - time.monotonic()),
            f"{peer} to catch up",
        )
        if peer not in admin.members().voters:
            admin.promote(peer, timeout=max(1.0, deadline - time.monotonic()))
        self.removed.discard(peer)

    # ------------------------------------------------------------------ healing

    def heal(self, timeout: float = 60.0) -> list[str]:
        """Undo every fault: links, pauses, dead peers, failing disks, removed voters.
        Returns what it had to do, for the report."""
        done: list[str] = []
        with self.lock:
            self.links.heal()
            for peer in sorted(self.paused):
                self.resume(peer)
                done.append(f"resumed {peer}")
            for peer in self.peers:
                if peer in self.removed:
                    continue
                if self.local.peer_launch.get(peer) or not self.alive(peer):
                    self.restart(peer)
                    done.append(f"restarted {peer}")
            self.busy.clear()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                # Settled: a change still under way (say a removal proposed before the
                # partition healed) would otherwise land after the cluster looked whole.
                left = max(1.0, deadline - time.monotonic())
                config = self.configuration(timeout=left, settled=True)
                if config is None:
                    break
                outside = [p for p in self.peers if p not in config.voters]
                self.removed = set(outside)
                if not outside:
                    return done
                for peer in outside:
                    try:
                        self.rejoin(peer, timeout=max(1.0, deadline - time.monotonic()))
                        done.append(f"re-added {peer}")
                    except (ZraftError, ClusterError) as error:
                        log.warning("re-adding %s while healing: %s", peer, error)
                        time.sleep(0.5)
        raise ClusterError(f"could not heal the cluster in {timeout:.0f}s (did: {done})")

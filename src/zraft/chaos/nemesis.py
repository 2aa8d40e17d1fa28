"""Nemeses: the faults the suite injects, and the seeded schedule that drives them.

Each nemesis ``begin``s a fault (choosing its targets with the schedule's random generator)
and ``end``s it (healing what it did). The :class:`Schedule` alternates fault windows and
quiet windows; a window holds one nemesis, or two different ones at once ("mixed"). Every
fault is recorded as a :class:`FaultEvent` with its start and end on the history clock.

The seed fixes the schedule (which nemesis, which targets by position, how long); the
peers themselves are real processes, so which peer leads, and so the exact interleaving,
can differ between two runs with one seed.
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import json
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from zraft.local import ClusterError
from zraft.session import ZraftError

from .cluster import ChaosCluster
from .storage_faults import INJECTED_FSYNC_FAILURE

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FaultEvent:
    """One fault: what, on whom, when (history clock, ns), and what happened."""

    nemesis: str
    description: str
    start: int
    end: int | None = None
    notes: list[str] = field(default_factory=list)
    anomalies: list[str] = field(default_factory=list)  # what the fault showed to be unsafe

    def to_json(self, origin: int) -> dict[str, Any]:
        return {
            "nemesis": self.nemesis,
            "description": self.description,
            "start_s": round((self.start - origin) / 1e9, 3),
            "end_s": None if self.end is None else round((self.end - origin) / 1e9, 3),
            "notes": self.notes,
            "anomalies": self.anomalies,
        }


class Nemesis(abc.ABC):
    name: ClassVar[str]

    def __init__(self, cluster: ChaosCluster) -> None:
        self.cluster = cluster
        self.target = ""  # the peer a per-peer fault acts on
        self.targets: list[str] = []

    @abc.abstractmethod
    def begin(self, rng: random.Random, event: FaultEvent) -> bool:
        """Start the fault (describe it in ``event``); False if there was nothing to do."""

    @abc.abstractmethod
    def end(self, event: FaultEvent) -> None:
        """Heal it."""

    def _pick(self, rng: random.Random, prefer_leader: float = 0.5) -> str | None:
        """A free voter: the leader with probability ``prefer_leader``, else any."""
        want_leader, position = rng.random() < prefer_leader, rng.random()
        free = self.cluster.free()
        if not free:
            return None
        if want_leader:
            leader = self.cluster.leader()
            if leader in free:
                return leader
        return free[int(position * len(free))]


class KillNemesis(Nemesis):
    """kill -9 a peer (often the leader), or now and then a majority at once (what was
    acknowledged must then come back from the disks alone); restart them from their disks
    when the window ends."""

    name = "kill"
    MAJORITY = 0.25  # chance that a window kills a majority of the peers

    def begin(self, rng: random.Random, event: FaultEvent) -> bool:
        majority, order = rng.random() < self.MAJORITY, rng.random()
        first = self._pick(rng)
        if first is None:
            return False
        victims = [first]
        if majority:
            others = [p for p in self.cluster.free() if p != first]
            need = len(self.cluster.peers) // 2  # with the first: a majority
            if len(others) >= need:
                start = int(order * len(others))
                victims += [others[(start + i) % len(others)] for i in range(need)]
        for peer in victims:
            self.cluster.busy.add(peer)
            self.cluster.kill(peer)
        self.targets = victims
        event.description = f"kill -9 {', '.join(victims)}"
        return True

    def end(self, event: FaultEvent) -> None:
        for peer in self.targets:
            self.cluster.restart(peer)
            self.cluster.busy.discard(peer)
        event.notes.append(f"restarted {len(self.targets)}")


class PauseNemesis(Nemesis):
    """SIGSTOP a peer (often the leader) for the window, then SIGCONT: the schedule keeps
    windows longer than the election timeout, so the others elect a new leader meanwhile."""

    name = "pause"

    def begin(self, rng: random.Random, event: FaultEvent) -> bool:
        peer = self._pick(rng, prefer_leader=0.6)
        if peer is None:
            return False
        self.cluster.busy.add(peer)
        self.cluster.pause(peer)
        self.target = peer
        event.description = f"SIGSTOP {peer}"
        return True

    def end(self, event: FaultEvent) -> None:
        self.cluster.resume(self.target)
        self.cluster.busy.discard(self.target)


class PartitionNemesis(Nemesis):
    """Cut peer links at the proxies: majority/minority halves, a bridge (two halves that
    only one peer joins), or the leader alone. Clients still reach every peer."""

    name = "partition"
    MODES = ("halves", "bridge", "isolate-leader")

    def begin(self, rng: random.Random, event: FaultEvent) -> bool:
        peers = list(self.cluster.peers)
        rng.shuffle(peers)
        mode = self.MODES[int(rng.random() * len(self.MODES))]
        if mode == "isolate-leader":
            leader = self.cluster.leader()
            if leader is None:
                mode = "halves"
            else:
                self.cluster.links.isolate(leader)
                event.description = f"isolate leader {leader}"
                return True
        half = len(peers) // 2
        if mode == "halves":
            minority, majority = peers[:half], peers[half:]
            self.cluster.links.cut(_between(minority, majority))
            event.description = f"partition {_names(minority)} | {_names(majority)}"
        else:
            bridge, rest = peers[0], peers[1:]
            left, right = rest[: len(rest) // 2], rest[len(rest) // 2 :]
            self.cluster.links.cut(_between(left, right))
            event.description = f"bridge {_names(left)} <{bridge}> {_names(right)}"
        return True

    def end(self, event: FaultEvent) -> None:
        self.cluster.links.heal()


class MembershipNemesis(Nemesis):
    """Remove a voter (sometimes the leader) by a configuration change; when the window
    ends, wipe it and add it back as a learner, let it catch up, promote it."""

    name = "membership"

    def begin(self, rng: random.Random, event: FaultEvent) -> bool:
        if len(self.cluster.members()) <= len(self.cluster.peers) // 2 + 1:
            return False  # keep enough voters for a majority of the original size
        peer = self._pick(rng, prefer_leader=0.3)
        if peer is None:
            return False
        self.cluster.busy.add(peer)
        self.target = peer
        event.description = f"remove {peer} from the voters"
        try:
            self.cluster.remove(peer, timeout=8.0)
            event.notes.append("removal committed")
        except ZraftError as error:
            # It may still commit later: heal() reads the configuration and repairs it.
            event.notes.append(f"removal not confirmed: {type(error).__name__}: {error}")
        return True

    def end(self, event: FaultEvent) -> None:
        # Settled: while the removal is still under way its peer may yet stay a voter.
        config = self.cluster.configuration(timeout=5.0, settled=True)
        if config is None:
            self.cluster.removed.add(self.target)  # heal() reads it again and repairs
            self.cluster.busy.discard(self.target)
            event.notes.append("configuration did not settle in time: left to healing")
            return
        if self.target in config.voters:
            self.cluster.busy.discard(self.target)
            event.notes.append("still a voter: nothing to add back")
            return
        try:
            self.cluster.rejoin(self.target, timeout=20.0)
            event.notes.append("added back as learner, caught up, promoted")
        except (ZraftError, ClusterError) as error:
            self.cluster.removed.add(self.target)  # heal() finishes the job
            event.notes.append(f"re-adding failed: {type(error).__name__}: {error}")
        self.cluster.busy.discard(self.target)


class FsyncNemesis(Nemesis):
    """Restart a peer on a disk whose syncs fail after a few writes (through
    ``python -m zraft.chaos.faulty_peer --fail-sync-after N``): the peer must stop rather
    than acknowledge what is not durable. When the window ends it restarts with a good
    disk."""

    name = "fsync"
    fired_before = 0  # failures the peer's log reported before this window

    def begin(self, rng: random.Random, event: FaultEvent) -> bool:
        peer = self._pick(rng, prefer_leader=0.3)
        if peer is None:
            return False
        self.cluster.busy.add(peer)
        self.target = peer
        self.fired_before = _mentions(self.cluster.data_dir(peer) / "peer.log")
        after = int(rng.random() * 40)
        self.cluster.kill(peer)
        self.cluster.restart(peer, disk_faults=["--fail-sync-after", str(after)])
        event.description = f"fsync fails on {peer} after {after} syncs"
        return True

    def end(self, event: FaultEvent) -> None:
        logfile = self.cluster.data_dir(self.target) / "peer.log"
        fired = _mentions(logfile) > self.fired_before
        if fired:  # it fired: give the peer a moment to finish stopping
            with contextlib.suppress(ClusterError):
                self.cluster.local.wait_for(
                    lambda: self.cluster.exit_code(self.target) is not None, 5.0, "exit"
                )
        code = self.cluster.exit_code(self.target)
        if fired:
            event.notes.append(
                "fsync failed; the peer stopped itself"
                if code is not None
                else "fsync failed but the peer is still running"
            )
        else:
            event.notes.append("the failure did not fire within the window")
        self.cluster.restart(self.target)
        self.cluster.busy.discard(self.target)


class OperatorNemesis(Nemesis):
    """Restart a peer (often the leader) the way an operator gets it wrong: with another
    ``--peers`` (itself alone, a subset, one peer too many, none), on its directory under
    another ``--cluster-id``, or on a wiped directory under its old id. The peers lists
    must change nothing (the configuration comes from the log: the peer rejoins, warning
    once); the other two must be refused at start. Any of them splitting the cluster shows
    as an anomaly of the workloads' histories; a wrong cluster id that is not refused is
    reported here. The window ends with the peer restarted as it should be, on its own
    directory."""

    name = "operator"
    MISTAKES = ("peers-alone", "peers-subset", "peers-extra", "peers-none", "cluster-id", "wiped")
    REFUSAL_S = 10.0  # a refused start exits well within this
    mistake = ""
    saved_args: list[str] = []  # the peer's own extra flags, while a mistake replaces them

    def begin(self, rng: random.Random, event: FaultEvent) -> bool:
        mistake = self.MISTAKES[int(rng.random() * len(self.MISTAKES))]
        position = rng.random()
        peer = self._pick(rng, prefer_leader=0.5)
        if peer is None:
            return False
        cluster, local = self.cluster, self.cluster.local
        self.cluster.busy.add(peer)
        self.target, self.mistake = peer, mistake
        local.stop_peer(peer)  # SIGTERM, as an operator's restart does
        members = list(cluster.peers)
        if mistake == "peers-alone":
            members = [peer]
        elif mistake == "peers-subset":
            others = [p for p in members if p != peer]
            members.remove(others[int(position * len(others))])
        elif mistake == "peers-extra":
            members.append("127.0.0.1:1")
        elif mistake == "peers-none":
            members = []
        elif mistake == "cluster-id":
            self.saved_args = list(local.peer_args.get(peer, []))
            local.peer_args[peer] = [*self.saved_args, "--cluster-id", "not-" + cluster.cluster_id]
        else:  # wiped: its directory put aside (the disk "came back" when the window ends)
            shutil.move(str(cluster.data_dir(peer)), str(self._aside(peer)))
        local.start_peer(peer, members)
        event.description = f"restart {peer} with {mistake}: --peers {_names(members)}"
        return True

    def end(self, event: FaultEvent) -> None:
        cluster, peer = self.cluster, self.target
        refused = self.mistake in ("cluster-id", "wiped")
        if refused:
            with contextlib.suppress(ClusterError):
                cluster.local.wait_for(
                    lambda: cluster.exit_code(peer) is not None, self.REFUSAL_S, "refusal"
                )
            code = cluster.exit_code(peer)
            if code not in (None, 0):
                event.notes.append(f"refused at start (exit {code})")
            elif self.mistake == "cluster-id":
                event.anomalies.append(
                    f"{peer} served its directory under another cluster id (exit {code})"
                )
            elif _founded(cluster.data_dir(peer)):
                event.anomalies.append(f"{peer} founded again on a wiped directory")
            else:  # a listed peer it must hear from was cut off: it still waits to found
                event.notes.append(f"wiped start still waiting to found (exit {code})")
        elif not cluster.alive(peer):
            event.anomalies.append(f"{peer} did not run with {self.mistake}")
        cluster.local.kill(peer)
        if self.mistake == "cluster-id":
            cluster.local.peer_args[peer] = self.saved_args
        if self.mistake == "wiped":
            shutil.rmtree(cluster.data_dir(peer), ignore_errors=True)
            shutil.move(str(self._aside(peer)), str(cluster.data_dir(peer)))
        cluster.restart(peer)
        cluster.busy.discard(peer)

    def _aside(self, peer: str) -> Path:
        return self.cluster.root / "aside" / peer.replace(":", "_")


def _founded(data_dir: Path) -> bool:
    """Whether the peer serving ``data_dir`` founded a cluster there (its identity says so)."""
    try:
        identity = json.loads((data_dir / "identity.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return bool(identity.get("founding")) and bool(identity.get("cluster_uuid"))


def _mentions(path: Path) -> int:
    """How many injected fsync failures a peer's log file reports."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return 0
    return sum(INJECTED_FSYNC_FAILURE in line and "stopping" in line for line in text.splitlines())


def _between(a: list[str], b: list[str]) -> list[tuple[str, str]]:
    return [(x, y) for x in a for y in b] + [(y, x) for x in a for y in b]


def _names(peers: list[str]) -> str:
    return "{" + ",".join(p.rsplit(":", 1)[1] for p in sorted(peers)) + "}"


NEMESES: dict[str, type[Nemesis]] = {
    cls.name: cls
    for cls in (
        KillNemesis, PauseNemesis, PartitionNemesis, MembershipNemesis, FsyncNemesis,
        OperatorNemesis,
    )
}  # fmt: skip


# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True, slots=True)
class ScheduleOptions:
    fault_seconds: tuple[float, float] = (2.0, 4.0)  # > the election timeout (0.5 s)
    quiet_seconds: tuple[float, float] = (1.0, 2.5)
    mixed: float = 0.35  # chance that a window holds two different nemeses


class Schedule:
    """Runs fault windows on a thread until stopped; records every fault.

    The nemeses come in seeded shuffled rounds (each one once per round, so a short run
    still sees every kind); a mixed window takes the next two. Each window draws its
    choices from its own generator, seeded by (seed, window number): what one window did
    (a target that was busy, say) never shifts the choices of the next ones.
    """

    def __init__(
        self,
        cluster: ChaosCluster,
        nemeses: list[str],
        seed: int,
        clock: Callable[[], int] = time.monotonic_ns,
        options: ScheduleOptions | None = None,
    ) -> None:
        unknown = sorted(set(nemeses) - set(NEMESES))
        if unknown:
            raise ValueError(f"unknown nemeses {unknown}; known: {sorted(NEMESES)}")
        self.cluster = cluster
        self.names = list(dict.fromkeys(nemeses))
        self.seed = seed
        self.rng = random.Random(f"nemesis-{seed}")
        self.clock = clock
        self.options = options or ScheduleOptions()
        self.events: list[FaultEvent] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        """Stop after the current window (its faults are ended)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.errors.append("the nemesis thread did not finish its window in time")

    def windows(self) -> Iterator[tuple[float, list[str], float, random.Random]]:
        """(quiet seconds before, nemeses, seconds held, the window's generator), forever."""
        options = self.options
        queue: list[str] = []
        for number in itertools.count():
            quiet = self.rng.uniform(*options.quiet_seconds)
            count = 2 if len(self.names) > 1 and self.rng.random() < options.mixed else 1
            chosen: list[str] = []
            while len(chosen) < count:
                if not queue:
                    queue = list(self.names)
                    self.rng.shuffle(queue)
                name = queue.pop(0)
                if name in chosen:  # a round boundary can repeat one: try it next window
                    queue.insert(1, name)
                    continue
                chosen.append(name)
            hold = self.rng.uniform(*options.fault_seconds)
            yield quiet, chosen, hold, random.Random(f"{self.seed}-window-{number}")

    def _run(self) -> None:
        if not self.names:
            return
        for quiet, chosen, hold, window_rng in self.windows():
            if self._stop.wait(quiet):
                return
            active: list[tuple[Nemesis, FaultEvent]] = []
            for name in chosen:
                nemesis = NEMESES[name](self.cluster)
                event = FaultEvent(name, name, self.clock())
                try:
                    with self.cluster.lock:
                        started = nemesis.begin(window_rng, event)
                except Exception as error:  # a fault that could not be made is reported
                    log.exception("nemesis %s", name)
                    self.errors.append(f"{name}: begin failed: {error!r}")
                    continue
                if started:
                    self.events.append(event)
                    active.append((nemesis, event))
                    log.info("fault: %s", event.description)
            self._stop.wait(hold)  # stopping cuts the window short, never leaves it open
            # Links first: a peer added back behind a partition could not catch up.
            ending = sorted(reversed(active), key=lambda pair: pair[1].nemesis != "partition")
            for nemesis, event in ending:
                try:
                    with self.cluster.lock:
                        nemesis.end(event)
                except Exception as error:
                    log.exception("nemesis %s", event.nemesis)
                    self.errors.append(f"{event.nemesis}: end failed: {error!r}")
                event.end = self.clock()
                log.info("healed: %s %s", event.description, "; ".join(event.notes))

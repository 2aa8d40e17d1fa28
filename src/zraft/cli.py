"""The ``zraft`` command line."""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from zraft.bench.cli import add_bench_command, run_bench
from zraft.chaos.cli import add_chaos_command, run_chaos
from zraft.core import NodeOptions
from zraft.sim import Cluster, LivenessFailure, SafetyViolation, ScheduleOptions, run_schedule

if TYPE_CHECKING:
    from zraft.actors.runtime import StorageOpener

log = logging.getLogger(__name__)


def _say(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _tick_until(cluster: Cluster, done, limit: int = 2000) -> int:  # type: ignore[no-untyped-def]
    start = cluster.time
    while not done():
        if cluster.time - start > limit:
            raise SystemExit("the simulated cluster made no progress (this is a bug)")
        cluster.tick()
    return cluster.time - start


def demo(seed: int, schedules: int) -> int:  # `zraft sim --narrate`
    """A narrated run of the production driver in the deterministic simulation."""
    options = NodeOptions(election_ticks=10)
    _say(f"zraft demo (seed {seed}): five peers' drivers and cores in one simulated network")
    peers = ["n1", "n2", "n3", "n4", "n5"]
    with Cluster(seed, peers, peers[:3], options=options) as cluster:
        _narrate(cluster)
    _say(f"- now {schedules} random schedules with crashes, partitions, loss and changes:")
    started = time.perf_counter()
    checks = elections = crashes = changes = 0
    for offset in range(schedules):
        result = run_schedule(seed + offset, ScheduleOptions(steps=300))
        checks += result.checks
        elections += result.elections
        crashes += result.crashes
        changes += result.membership_changes
    elapsed = time.perf_counter() - started
    _say(
        f"  {schedules} schedules in {elapsed:.1f}s: {elections} elections, {crashes} crashes, "
        f"{changes} membership changes, {checks} safety checks, no violation"
    )
    return 0


def _narrate(cluster: Cluster) -> None:
    ticks = _tick_until(cluster, lambda: cluster.leader() is not None)
    leader = cluster.leader()
    assert leader is not None and leader.node is not None
    _say(f"- {leader.id} elected leader of term {leader.node.term} after {ticks} ticks")

    client = cluster.client
    for batch in range(10):
        for i in range(10):
            client.write(leader.id, f"write-{batch}-{i}".encode())
    _tick_until(cluster, lambda: client.answered_writes >= 100)
    target = leader.node.commit
    _tick_until(cluster, lambda: all(p.applied_index >= target for p in _voters(cluster)))
    _say(f"- 100 exactly-once writes committed and applied on n1..n3 (index {target})")

    old = leader.id
    leader.crash()
    _say(f"- crashed the leader {old}")
    ticks = _tick_until(cluster, lambda: cluster.leader() is not None)
    leader = cluster.leader()
    assert leader is not None and leader.node is not None
    _say(f"- {leader.id} took over in term {leader.node.term} after {ticks} ticks")
    cluster.peers[old].start()

    client.change_members(leader.id, {"n1", "n2", "n3", "n4", "n5"}, set())
    _tick_until(
        cluster,
        lambda: (
            leader.node is not None
            and leader.node.membership_stable
            and len(leader.node.config.voters) == 5
        ),
    )
    _say(f"- joint consensus grew the cluster to {leader.node.config}")

    follower = next(p for p in cluster.peers.values() if p is not leader)
    cluster.begin_read(follower.id, "demo-read")
    _tick_until(cluster, lambda: "demo-read" not in cluster.read_started)
    _say(f"- a linearizable read on {follower.id} was forwarded and confirmed by the leader")


def _voters(cluster: Cluster) -> list:  # type: ignore[type-arg]
    return [p for p in cluster.peers.values() if p.node is not None and p.node.promotable]


def sim(seed: int, steps: int, schedules: int) -> int:
    """Run (or replay) random schedules; exits non-zero on the first violation."""
    for current in range(seed, seed + schedules):
        try:
            result = run_schedule(current, ScheduleOptions(steps=steps))
        except (SafetyViolation, LivenessFailure) as failure:
            _say(f"FAILED {failure}")
            return 1
        _say(
            f"seed {current}: ok, {result.proposals} writes ({result.answered} answered), "
            f"{result.committed} committed, "
            f"{result.reads} reads, {result.elections} elections, {result.crashes} crashes, "
            f"{result.membership_changes} membership changes, {result.checks} checks"
        )
    return 0


class _StopDuringStartUp(BaseException):
    """SIGTERM/SIGINT while the peer is starting: start-up is abandoned (and undone) at once,
    whatever it waits on. A BaseException, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def serve(args: argparse.Namespace, open_storage: StorageOpener | None = None) -> int:
    """Run one peer in this process until SIGTERM/SIGINT or a fatal error.

    ``open_storage`` (a ``zraft.actors.runtime.StorageOpener``) replaces the stores on disk;
    only the fault suite passes one (zraft.chaos.faulty_peer)."""
    stop = threading.Event()
    starting = True
    runtime: Any = None  # a PeerRuntime, once made

    def on_signal(signum: int, frame: object) -> None:
        nonlocal starting
        stop.set()
        if starting:
            starting = False  # once: a second signal must not cut the undo short
            raise _StopDuringStartUp(signum)

    # First of all: from here on a signal stops the peer cleanly, however far it got.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        try:
            from zraft.actors.runtime import PeerRuntime, StartupError
            from zraft.settings import Settings, SettingsError

            try:
                settings = Settings.from_args(args)
                runtime = PeerRuntime(settings, open_storage)
            except SettingsError as error:
                sys.stderr.write(f"zraft serve: {error}\n")
                return _leave(2)
            # A peer is a pipeline of threads handing work to each other; with CPython's
            # default 5 ms switch interval a runnable thread can wait that long for the GIL
            # at each hop.
            sys.setswitchinterval(0.0002)
            try:
                runtime.start()
            except StartupError as error:
                log.debug("start-up failed", exc_info=True)
                sys.stderr.write(f"zraft serve: {error}\n")
                return _leave(1)
        finally:
            starting = False  # a signal now only sets ``stop``
    except _StopDuringStartUp as stopped:
        if runtime is not None:
            runtime.stop()  # the signal may have come just after start() returned
        log.info("stopped by %s during start-up", stopped)
        return _leave(0)
    # What exists now (modules, settings, actors) lives as long as the process: freeze it,
    # so the collector stops scanning it. Measured: a full collection then takes ~2 ms
    # rather than 20-30 ms, a pause every few seconds under load on every peer. Young
    # objects are collected every 10,000 net allocations rather than 700: nearly all of a
    # write's objects die by reference counting first, so fewer passes scan less in all.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)
    while not (stop.wait(0.2) or runtime.failed.is_set() or runtime.removed.is_set()):
        pass
    if runtime.removed.is_set():
        # Removed from the cluster: linger one election timeout so our last messages (the
        # commit of the configuration, a TimeoutNow to our successor) get out.
        time.sleep(settings.election_timeout / 1000)
    runtime.stop()
    return _leave(1 if runtime.failed.is_set() else 0)


def _leave(code: int, grace: float = 5.0) -> int:
    """``code``, once no thread but daemons is left to keep the process from exiting.

    Actors run on non-daemon threads, which the interpreter waits for at exit: one that a
    start-up cut short never listed, or one that would not stop, would keep a peer that is
    done running for ever. Any actor left is stopped; a thread still running after
    ``grace`` seconds ends with the process.
    """
    import pykka

    pykka.ActorRegistry.stop_all(block=True, timeout=grace)
    deadline = time.monotonic() + grace
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in threading.enumerate() if t is not current and not t.daemon]
    if left:
        log.error("exiting with threads still running: %s", ", ".join(sorted(left)))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _client(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from zraft.transport import ClientChannel

    return ClientChannel(args.cluster_id, f"cli-{os.getpid()}")


def status(args: argparse.Namespace) -> int:
    from zraft.transport import ClientRequest, TransportTimeout

    with _client(args) as channel:
        try:
            reply = channel.request(args.peer, ClientRequest(1, "status"), args.timeout)
        except TransportTimeout:
            sys.stderr.write(f"{args.peer}: no answer within {args.timeout}s\n")
            return 1
    info = reply.result
    if args.json:
        _say(json.dumps(info, indent=2, sort_keys=True))
        return 0
    _say(
        f"{info['id']}: {info['role']} term {info['term']} leader {info['leader']} "
        f"commit {info['commit']} applied {info['applied']} last {info['last_index']} "
        f"snapshot {info['snapshot_index']}"
    )
    for peer, member in info["members"].items():
        _say(f"  {peer}: match {member['match']} lag {member['lag']} {member['state']}")
    return 0


def _request(args: argparse.Namespace, op: str) -> int:
    from zraft.transport import ClientRequest, TransportTimeout

    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as error:
        sys.stderr.write(f"payload is not JSON: {error}\n")
        return 2
    target = args.peer
    with _client(args) as channel:
        for attempt in range(5):
            request = ClientRequest(attempt + 1, op, payload, client_id=f"cli-{os.getpid()}", seq=1)
            try:
                reply = channel.request(target, request, args.timeout)
            except TransportTimeout:
                sys.stderr.write(f"{target}: no answer within {args.timeout}s\n")
                return 1
            if not reply.ok and reply.error == "not_leader" and reply.leader:
                target = reply.leader
                continue
            break
    if not reply.ok:
        sys.stderr.write(f"error: {reply.error}: {reply.result}\n")
        return 1
    _say(json.dumps(reply.result))
    return 0


def members(args: argparse.Namespace) -> int:
    """Show or change the membership (joint consensus) through any peer."""
    from zraft.session import LightSession, ZraftError

    try:
        with LightSession(args.peer, cluster_id=args.cluster_id, timeout=args.timeout) as s:
            if args.action == "list":
                config = s.members()
            elif args.action == "add-learner":
                config = s.add_learner(_one(args))
            elif args.action == "promote":
                config = s.promote(_one(args))
            elif args.action == "remove":
                config = s.remove(_one(args))
            else:
                config = s.set_new_conf([p for p in _one(args).split(",") if p])
    except (ZraftError, ValueError) as error:
        sys.stderr.write(f"zraft members: {type(error).__name__}: {error}\n")
        return 1
    _say(f"voters: {' '.join(sorted(config.voters))}")
    if config.outgoing:
        _say(f"outgoing voters: {' '.join(sorted(config.outgoing))}")
    if config.learners:
        _say(f"learners: {' '.join(sorted(config.learners))}")
    return 0


def _one(args: argparse.Namespace) -> str:
    if not args.target:
        raise ValueError(f"'{args.action}' needs a peer (HOST:PORT)")
    return str(args.target)


def transfer(args: argparse.Namespace) -> int:
    from zraft.session import LightSession, ZraftError

    try:
        with LightSession(args.peer, cluster_id=args.cluster_id, timeout=args.timeout) as s:
            leader = s.transfer_leadership(args.target)
    except ZraftError as error:
        sys.stderr.write(f"zraft transfer: {type(error).__name__}: {error}\n")
        return 1
    _say(f"{leader} leads")
    return 0


def cluster_demo(size: int, writes: int) -> int:
    """Start a local cluster of peer processes, write, kill the leader, show the takeover."""
    from zraft.backends import kv
    from zraft.local import LocalCluster

    root = tempfile.mkdtemp(prefix="zraft-demo-")
    _say(f"zraft demo: {size} peer processes on 127.0.0.1, data in {root}")
    try:
        with LocalCluster(size, root) as cluster:
            cluster.start()
            _say("- peers: " + ", ".join(cluster.peers))
            started = time.monotonic()
            leader = cluster.wait_for_leader()
            _say(f"- {leader} elected leader after {time.monotonic() - started:.2f}s")
            started = time.monotonic()
            for i in range(writes):
                cluster.write(kv.put(f"key-{i}", i))
            elapsed = time.monotonic() - started
            _say(f"- {writes} writes acknowledged one at a time in {elapsed:.2f}s")
            cluster.kill(leader)
            killed_at = time.monotonic()
            _say(f"- kill -9 {leader}")
            survivors = [p for p in cluster.peers if p != leader]
            new_leader = cluster.wait_for_leader(among=survivors)
            _say(f"- {new_leader} took over after {time.monotonic() - killed_at:.2f}s")
            missing = [
                i
                for i in range(writes)
                if cluster.query(new_leader, kv.get(f"key-{i}")).get("value") != i
            ]
            _say(f"- all {writes} acknowledged writes readable on the new leader: {not missing}")
            cluster.write(kv.put("after-failover", True))
            cluster.start_peer(leader)
            _say(f"- restarted {leader}; it recovers from its directory and catches up")
            target = cluster.status(new_leader)["commit"]  # type: ignore[index]
            cluster.wait_for(
                lambda: (cluster.status(leader) or {}).get("applied", 0) >= target,
                20,
                "the restarted peer to catch up",
            )
            value = cluster.query(leader, kv.get("after-failover"), local=True)
            _say(
                f"- {leader} applied everything, including the write made while it was down: "
                f"{value}"
            )
            _say("- stopping the cluster")
            return 1 if missing else 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    from zraft.settings import add_arguments

    parser = argparse.ArgumentParser(prog="zraft", description="zraft: Raft for Python")
    parser.add_argument("--log-level", default="INFO")
    commands = parser.add_subparsers(dest="command", required=True)

    demo_cmd = commands.add_parser("demo", help="run a local 3-peer cluster and fail it over")
    demo_cmd.add_argument("--peers", type=int, default=3)
    demo_cmd.add_argument("--writes", type=int, default=100)
    demo_cmd.add_argument("what", nargs="?", choices=["raft", "casbin"], default="raft")

    serve_cmd = commands.add_parser("serve", help="run one peer")
    # No default of its own: ``zraft --log-level X serve`` keeps X.
    serve_cmd.add_argument("--log-level", default=argparse.SUPPRESS)
    add_arguments(serve_cmd)

    for name, text in (
        ("status", "show a peer's view of the cluster"),
        ("write", "send a write (JSON) through a peer"),
        ("query", "send a linearizable query (JSON) to a peer"),
    ):
        cmd = commands.add_parser(name, help=text)
        cmd.add_argument("--peer", required=True, help="HOST:PORT of any peer")
        cmd.add_argument("--cluster-id", default="zraft")
        cmd.add_argument("--timeout", type=float, default=3.0)
        if name == "status":
            cmd.add_argument("--json", action="store_true")
        else:
            cmd.add_argument("payload", help="the command, as JSON")

    members_cmd = commands.add_parser("members", help="show or change the membership")
    members_cmd.add_argument("--peer", required=True, help="HOST:PORT of any peer")
    members_cmd.add_argument("--cluster-id", default="zraft")
    members_cmd.add_argument("--timeout", type=float, default=20.0)
    members_cmd.add_argument(
        "action", choices=["list", "add-learner", "promote", "remove", "set"], default="list"
    )
    members_cmd.add_argument("target", nargs="?", help="a peer, or for set: A,B,C")

    transfer_cmd = commands.add_parser("transfer", help="hand leadership to a peer")
    transfer_cmd.add_argument("--peer", required=True, help="HOST:PORT of any peer")
    transfer_cmd.add_argument("--cluster-id", default="zraft")
    transfer_cmd.add_argument("--timeout", type=float, default=10.0)
    transfer_cmd.add_argument("target", help="HOST:PORT of the new leader")

    add_bench_command(commands)
    add_chaos_command(commands)

    sim_cmd = commands.add_parser("sim", help="run or replay simulation schedules")
    sim_cmd.add_argument("--seed", type=int, default=1)
    sim_cmd.add_argument("--steps", type=int, default=300)
    sim_cmd.add_argument("--schedules", type=int, default=1)
    sim_cmd.add_argument("--narrate", action="store_true", help="a narrated tour of the core")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "demo":
        if args.what == "casbin":
            from zraft.casbin.demo import run_demo

            return run_demo()
        return cluster_demo(args.peers, args.writes)
    if args.command == "serve":
        return serve(args)
    if args.command == "status":
        return status(args)
    if args.command in ("write", "query"):
        return _request(args, args.command)
    if args.command == "bench":
        return run_bench(args)
    if args.command == "chaos":
        return run_chaos(args)
    if args.command == "members":
        return members(args)
    if args.command == "transfer":
        return transfer(args)
    # The simulated peers run the production driver, which logs as a peer would (elections,
    # removals, snapshots): thousands of lines per schedule. A violation is reported anyway.
    logging.getLogger("zraft").setLevel(logging.ERROR)
    if args.narrate:
        return demo(args.seed, args.schedules)
    return sim(args.seed, args.steps, args.schedules)


if __name__ == "__main__":
    raise SystemExit(main())

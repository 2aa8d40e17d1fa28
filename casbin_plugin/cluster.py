"""One PyCasbin enforcer kept in agreement with a zraft cluster: the two ways to run.

Side-car / client: the application talks to a running cluster (peers started with
``--backend zraft.casbin.backend:CasbinBackend``)::

    e = casbin.SyncedEnforcer("model.conf")            # no adapter needed
    node = zraft.casbin.connect(e, ["10.0.0.1:7001", "10.0.0.2:7001", "10.0.0.3:7001"])
    e.add_policy("alice", "data1", "read")             # through Raft, applied here on return

Embedded: the application process hosts one of the peers::

    node = zraft.casbin.embedded(e, Settings.load(peer_id="10.0.0.1:7001", peers=[...],
                                                   data_dir="./raft"))

Either way every instance applies every change in the same order (``PolicySync``), and
``close()`` stops following (and, embedded, stops the peer).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from zraft.session import LightSession, Rejected, Session, ZraftError

from . import commands as c
from .commands import MODEL_MISMATCH
from .dispatcher import Dispatcher, set_dispatcher
from .local_model import LocalModel, core_enforcer
from .persist import AdapterPersister, load_adapter_policy
from .shape import model_shape, rule_fits
from .sync import PolicySync, SessionFeed, Waker, WatchWaker

log = logging.getLogger(__name__)

__all__ = ["BACKEND", "CasbinNode", "connect", "embedded"]

BACKEND = "zraft.casbin.backend:CasbinBackend"


class ModelMismatch(ValueError):
    """``connect``: the cluster's policy model is another than this enforcer's."""


class CasbinNode:
    """An enforcer, its dispatcher and its sync, talking to ``peers``."""

    def __init__(
        self,
        enforcer: Any,
        peers: Sequence[str],
        *,
        feed_peer: str | None = None,
        waker: Waker | None = None,
        session_timeout: float = 10.0,
        apply_timeout: float = 10.0,
        start_timeout: float = 20.0,
        runtime: Any = None,
        adapter: Any = None,
        persist: bool | Callable[[], bool] = False,
        use_watches: bool = False,
        redefine: bool = False,
        **session_options: Any,
    ) -> None:
        """``adapter``: the user's casbin adapter; a cluster that never had a change starts
        from its policy, and with ``persist`` (True, or a callable saying when this
        instance is the one that writes) every change is written to it (``persist.py``).
        ``use_watches``: idle, wake on the cluster's one-shot watches instead of polling
        (``WatchWaker``, through a session of its own); ``waker`` chooses any other way.
        ``redefine``: make this enforcer's model the cluster's even if another is declared
        (else ``ModelMismatch``)."""
        self.enforcer = enforcer
        self.peers = list(peers)
        self.runtime = runtime
        self._session_options = session_options
        self._session_timeout = session_timeout
        self._temporary: Session | None = None
        self._temporary_lock = threading.Lock()
        self.writer = LightSession(self.peers, **session_options)
        # One writer session per calling thread: a session sends one call at a time.
        self._writers = threading.local()
        self._all_writers: list[LightSession] = [self.writer]
        self._writers.session = self.writer
        self.model = LocalModel(enforcer)
        self._watch_session: Session | None = None
        if use_watches and waker is None:
            self._watch_session = Session(self.peers, session_timeout=session_timeout,
                                          **session_options)
            waker = WatchWaker(self._watch_session)
        feed = SessionFeed(self.peers, peer=feed_peer, **session_options)
        self.sync = PolicySync(self.model, feed, waker)
        self.dispatcher = Dispatcher(
            self._write, self.sync, write_temporary=self._write_temporary,
            apply_timeout=apply_timeout,
        )
        self.persister: AdapterPersister | None = None
        deadline = time.monotonic() + start_timeout
        try:
            model = core_enforcer(enforcer).model
            # The cluster refuses from now on any rule this model cannot hold; an enforcer
            # of another model than the one declared is refused, unless told to replace it.
            self._declare(model_shape(model), redefine, deadline)
            if adapter is not None:
                initial = _fitting(load_adapter_policy(adapter, model), model)
                self._start_write(c.seed(initial), deadline)
            self.sync.start(timeout=max(0.0, deadline - time.monotonic()))
        except BaseException:
            self.writer.close()
            feed.close()
            if self._watch_session is not None:
                self._watch_session.close()
            raise
        set_dispatcher(enforcer, self.dispatcher)
        if adapter is not None and persist:
            is_active = persist if callable(persist) else (lambda: True)
            self.persister = AdapterPersister(self.sync, adapter, is_active).start()

    def _declare(self, shape: Any, redefine: bool, deadline: float) -> None:
        try:
            self._start_write(c.define(shape, replace=redefine), deadline)
        except Rejected as error:
            if MODEL_MISMATCH not in str(error):
                raise
            raise ModelMismatch(
                f"{error}: connect with the cluster's model, or pass redefine=True to make "
                "this one the cluster's (instances on the old model then skip what does "
                "not fit theirs)"
            ) from None

    def _start_write(self, command: dict[str, Any], deadline: float) -> None:
        """Write ``command`` (idempotent: ``define`` and ``seed``), retrying while the cluster
        cannot answer yet (peers starting, no leader) until ``deadline``."""
        while True:
            try:
                self.writer.write(command, timeout=max(0.1, deadline - time.monotonic()))
                return
            except Rejected:
                raise
            except ZraftError as error:
                if time.monotonic() >= deadline:
                    raise
                log.debug("starting: %s: %s; retrying", type(error).__name__, error)
                time.sleep(0.1)

    def metrics(self) -> dict[str, int]:
        """This instance's counters (``PolicySync.metrics``)."""
        return self.sync.metrics()

    def _write(self, command: dict[str, Any]) -> dict[str, Any]:
        session = getattr(self._writers, "session", None)
        if session is None:
            session = self._writers.session = LightSession(self.peers, **self._session_options)
            with self._temporary_lock:
                self._all_writers.append(session)
        return session.write(command)  # type: ignore[no-any-return]

    def _write_temporary(self, command: dict[str, Any]) -> dict[str, Any]:
        with self._temporary_lock:
            if self._temporary is None:
                self._temporary = Session(
                    self.peers, session_timeout=self._session_timeout, **self._session_options
                )
            session = self._temporary
        return session.write(command, temporary=True)  # type: ignore[no-any-return]

    def add_temporary_policy(self, *params: Any) -> bool:
        """A ``p`` rule that lives while this node's session does (see ``end_session``)."""
        rule = list(params[0]) if len(params) == 1 and isinstance(params[0], list) else list(params)
        return bool(self.dispatcher.add_temporary_policies("p", "p", [rule]))

    def add_temporary_grouping_policy(self, *params: Any) -> bool:
        rule = list(params[0]) if len(params) == 1 and isinstance(params[0], list) else list(params)
        return bool(self.dispatcher.add_temporary_policies("g", "g", [rule]))

    def end_session(self) -> None:
        """End this node's session now: its temporary rules vanish from every instance."""
        with self._temporary_lock:
            session, self._temporary = self._temporary, None
        if session is not None:
            session.close()

    def is_leader_here(self) -> bool:
        """Does this process host the leader? (Embedded mode: who persists.)"""
        if self.runtime is None:
            return False
        try:
            status = self.writer.status(peer=self.runtime.peer_id, timeout=1.0)
        except Exception:  # our own peer not answering: certainly not acting as leader
            return False
        return status.get("role") == "leader"

    def close(self) -> None:
        self.end_session()
        if self.persister is not None:
            self.persister.stop()
        self.sync.stop()
        with self._temporary_lock:
            writers, self._all_writers = self._all_writers, []
        for writer in writers:
            writer.close()
        if self._watch_session is not None:
            self._watch_session.close()
        if self.runtime is not None:
            self.runtime.stop()

    def __enter__(self) -> CasbinNode:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fitting(policy: list[list[Any]], model: Any) -> list[list[Any]]:
    """The adapter's rules the model can hold: the cluster would refuse the others."""
    out = []
    for sec, ptype, rules in policy:
        kept = [rule for rule in rules if rule_fits(model, sec, ptype, rule)]
        if len(kept) != len(rules):
            log.warning("the adapter holds %d %s/%s rule(s) the model cannot hold: not seeded",
                        len(rules) - len(kept), sec, ptype)
        out.append([sec, ptype, kept])
    return out


def connect(enforcer: Any, peers: Sequence[str], **options: Any) -> CasbinNode:
    """Side-car mode: keep ``enforcer`` in agreement with the cluster at ``peers``."""
    return CasbinNode(enforcer, peers, **options)


def embedded(enforcer: Any, settings: Any, **options: Any) -> CasbinNode:
    """Embedded mode: start a peer in this process (``settings``: ``zraft.settings.Settings``;
    the backend is set to the Casbin backend) and keep ``enforcer`` current from it."""
    from zraft.actors.runtime import PeerRuntime

    if settings.backend != BACKEND:
        settings = settings.replace(backend=BACKEND)
    runtime = PeerRuntime(settings).start()
    node: CasbinNode | None = None

    def leader_here() -> bool:  # the persisting instance is the one hosting the leader
        return node is not None and node.is_leader_here()

    if options.get("persist") is True:
        options["persist"] = leader_here
    try:
        node = CasbinNode(enforcer, list(settings.peers), feed_peer=settings.peer_id,
                          runtime=runtime, cluster_id=settings.cluster_id, **options)
        return node
    except BaseException:
        runtime.stop()
        raise

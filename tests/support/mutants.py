"""Deliberately broken cores: each breaks one Raft rule, and the simulation must notice."""

from __future__ import annotations

import dataclasses

from zraft.actors.driver import PeerDriver
from zraft.core import EntryKind, Node, Ready


class CommitsOldTermByCounting(Node):
    """Commits any entry a majority holds, even one from an earlier term (figure 8)."""

    def _may_commit_at(self, index: int) -> bool:
        return True


class VotesWithoutLogCheck(Node):
    """Grants votes without the 'candidate's log is at least as up-to-date' check."""

    def _log_allows_vote(self, last_index: int, last_term: int) -> bool:
        return True


class ConfigOnCommit(Node):
    """Lets a configuration take effect only once it commits, not when it is appended."""

    def _on_appended(self, entries: list) -> None:
        return

    def ready(self) -> Ready:
        ready = super().ready()
        for entry in ready.committed:
            if entry.kind is EntryKind.CONFIG:
                self._config_history.append((entry.index, entry.data))
                self._set_config(entry.data)
        return ready


MUTANTS = [CommitsOldTermByCounting, VotesWithoutLogCheck, ConfigOnCommit]


# Broken drivers: each breaks one rule of carrying out a Ready, and the simulation, which
# runs the production driver, must notice.


class SendsBeforePersist(PeerDriver):
    """Sends votes and acknowledgements at once, before what they promise is durable."""

    def _persist(self, ready: Ready) -> None:
        early = list(ready.messages_after_persist)
        if early:
            self.edges.send(early)
        super()._persist(dataclasses.replace(ready, messages_after_persist=[]))


class AppliesBeforeCommit(PeerDriver):
    """Hands appended entries to the state machine as soon as they arrive, committed or not."""

    def _carry_out(self, ready: Ready) -> None:
        last = ready.committed[-1].index if ready.committed else 0
        early = [e for e in ready.entries if e.index > last]
        if early:
            ready = dataclasses.replace(ready, committed=[*ready.committed, *early])
        super()._carry_out(ready)


class AnswersReadBeforeApply(PeerDriver):
    """Serves a confirmed read at once, without waiting for the state machine to apply its
    index."""

    def _reads(self, ready: Ready) -> None:
        states = [dataclasses.replace(s, index=0) for s in ready.read_states]
        super()._reads(dataclasses.replace(ready, read_states=states))


DRIVER_MUTANTS = [SendsBeforePersist, AppliesBeforeCommit, AnswersReadBeforeApply]

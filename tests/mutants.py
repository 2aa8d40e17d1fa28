"""Deliberately broken cores: each breaks one Raft rule, and the simulation must notice."""

from __future__ import annotations

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

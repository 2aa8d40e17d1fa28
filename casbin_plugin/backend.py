"""The Casbin policy as a zraft state machine (``zraft.casbin.backend:CasbinBackend``).

State: per (sec, ptype) a table of rules (tuples of str) with their position in the policy,
and per field position an index value -> rules, so adding, removing and checking one rule
and a filtered removal cost the same at 100 rules and at 100,000 (a filtered removal walks
only the smallest index bucket its filter names). Policy order is casbin's: new rules go to
the end, an update keeps the replaced rule's place.

Every command that changes something appends numbered *changes* to a bounded change feed
(the last ``max_feed_changes`` changes, at most ``max_feed_rules`` rules in them), which
is how instances keep a local enforcer current: ``changes_since(seq)`` answers the changes
after ``seq`` in order, or the whole policy when ``seq`` is older than the feed. Results
carry the change counter after the command, so a writer knows when its local copy has it.

The model's shape (``define``: the field count of each ptype the instances' model has): once
declared, a write whose rules do not fit it is refused, identically on every peer, so a rule
no instance could apply never enters the policy (see ``commands.fits``). Until a shape is
declared (a cluster written by an older version, say) rules of any shape are accepted, and
instances skip those that do not fit their model.

Temporary rules: ``add`` through ``apply_session`` makes the added rules belong to the
session; ``expire_session`` removes them (one change per ptype) and names what changed.
Trigger keys (watches): ``casbin/seq`` (any change), ``casbin/ptype/{sec}/{ptype}``,
``casbin/subject/{value}`` (field 0 of a rule, and for grouping rules field 1 too) and
``casbin/rule/{sec}/{ptype}/{json of the rule}``.

Why one module: the replicated policy's commands, their validation against the declared
model shape and the store are one backend, as kv.py is.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Final

from zraft.backends.base import (
    ApplyResult,
    Backend,
    CommandRejected,
    InvalidSnapshot,
    QueryResult,
    SnapshotWriter,
)

from .commands import (
    MODEL_MISMATCH,
    SESSION_OPS,
    Parsed,
    Rule,
    fits,
    parse_command,
    parse_query,
)
from .snapshot_file import read_objects, write_objects

log = logging.getLogger(__name__)

__all__ = ["SNAPSHOT_FILE", "CasbinBackend", "rule_key", "subject_key", "ptype_key", "SEQ_KEY"]

SNAPSHOT_FILE: Final = "casbin.msgpack"
_MAGIC: Final = b"ZRCB"
_VERSION: Final = 2  # 2: the header holds the model's shape
_READABLE_VERSIONS: Final = (1, 2)
SEQ_KEY: Final = "casbin/seq"
MESSAGES_KEY: Final = "casbin/messages"  # watcher notifications
DEFAULT_CHANGES_LIMIT: Final = 1_000
_REPLY_RULES: Final = 50_000  # a changes_since answer stops adding changes past this
MAX_SHOWN_FIELDS: Final = 8  # of a refused rule, in the error

Key = tuple[str, str]  # (sec, ptype)


def ptype_key(sec: str, ptype: str) -> str:
    return f"casbin/ptype/{sec}/{ptype}"


def subject_key(subject: str) -> str:
    return f"casbin/subject/{subject}"


def rule_key(sec: str, ptype: str, rule: Iterable[str]) -> str:
    return f"casbin/rule/{sec}/{ptype}/{json.dumps(list(rule), ensure_ascii=False)}"


class _Table:
    """The rules of one (sec, ptype): rule -> position key, plus per-field indexes."""

    __slots__ = ("rules", "next_order", "index")

    def __init__(self) -> None:
        self.rules: dict[Rule, int] = {}
        self.next_order = 0
        self.index: list[dict[str, dict[Rule, None]]] = []

    def add(self, rule: Rule, order: int | None = None) -> None:
        if order is None:
            order = self.next_order
            self.next_order += 1
        self.rules[rule] = order
        while len(self.index) < len(rule):
            self.index.append({})
        for position, value in enumerate(rule):
            self.index[position].setdefault(value, {})[rule] = None

    def remove(self, rule: Rule) -> int:
        order = self.rules.pop(rule)
        for position, value in enumerate(rule):
            bucket = self.index[position][value]
            del bucket[rule]
            if not bucket:
                del self.index[position][value]
        return order

    def matching(self, field_index: int, values: Rule) -> list[Rule]:
        """Rules matching a casbin filter ("" matches anything), in policy order."""
        candidates: Iterable[Rule] | None = None
        for offset, value in enumerate(values):
            if value == "":
                continue
            position = field_index + offset
            bucket = self.index[position].get(value, {}) if position < len(self.index) else {}
            if candidates is None or len(bucket) < len(candidates):  # type: ignore[arg-type]
                candidates = bucket
        if candidates is None:
            candidates = self.rules
        found = [
            rule
            for rule in candidates
            if len(rule) >= field_index + len(values)
            and all(v == "" or rule[field_index + i] == v for i, v in enumerate(values))
        ]
        found.sort(key=self.rules.__getitem__)
        return found

    def ordered(self) -> list[Rule]:
        return sorted(self.rules, key=self.rules.__getitem__)


class CasbinBackend(Backend):
    """The replicated Casbin policy (see the module docstring)."""

    max_feed_changes: int = 10_000
    max_feed_rules: int = 200_000

    def __init__(self) -> None:
        self._tables: dict[Key, _Table] = {}
        self._seq = 0
        self._feed: deque[dict[str, Any]] = deque()
        self._feed_rules = 0
        self._owner: dict[tuple[str, str, Rule], str] = {}
        self._owned: dict[str, dict[tuple[str, str, Rule], None]] = {}
        # (sec, ptype) -> (fields, priority field or -1); empty: nothing declared
        self._shape: dict[Key, tuple[int, int]] = {}

    # ------------------------------------------------------------------ protocol

    def init(self, peer_id: str) -> None:
        log.debug("casbin backend ready on %s", peer_id)

    def apply(self, command: Any) -> ApplyResult:
        return self._write(parse_command(command), None)

    def apply_session(self, command: Any, session_id: str) -> ApplyResult:
        if not isinstance(session_id, str) or not session_id:
            raise CommandRejected("session id must be a non-empty str")
        cmd = parse_command(command)
        if cmd.op not in SESSION_OPS:
            raise CommandRejected(f"{cmd.op} through a session: send it as a plain write")
        return self._write(cmd, session_id)

    def expire_session(self, session_id: str) -> frozenset[str]:
        owned = self._owned.pop(session_id, None)
        if not owned:
            return frozenset()
        keys: set[str] = set()
        by_ptype: dict[Key, list[tuple[int, Rule]]] = {}
        for sec, ptype, rule in owned:
            del self._owner[(sec, ptype, rule)]
            order = self._tables[(sec, ptype)].rules[rule]
            by_ptype.setdefault((sec, ptype), []).append((order, rule))
        for sec, ptype in sorted(by_ptype):  # canonical order: not the dict's
            table = self._tables[(sec, ptype)]
            rules = [rule for _, rule in sorted(by_ptype[(sec, ptype)])]
            for rule in rules:
                table.remove(rule)
            self._record("remove", sec, ptype, rules)
            keys |= _trigger_keys(sec, ptype, rules)
        log.debug("session %s expired: %d temporary rules removed", session_id, len(owned))
        return frozenset(keys | {SEQ_KEY})

    def query(self, query: Any) -> QueryResult:
        q = parse_query(query)
        if q.op == "policy":
            return QueryResult({"seq": self._seq, "policy": self._everything()},
                               frozenset({SEQ_KEY}))
        if q.op == "changes_since":
            return QueryResult(self._changes_since(q.seq, q.limit), frozenset({SEQ_KEY}))
        if q.op == "subject":
            return QueryResult(self._subject(q.subject), frozenset({subject_key(q.subject)}))
        table = self._tables.get((q.sec, q.ptype))
        if q.op == "has":
            found = table is not None and q.rules[0] in table.rules
            return QueryResult(found, frozenset({rule_key(q.sec, q.ptype, q.rules[0])}))
        rules = [] if table is None else table.matching(q.field_index, q.field_values)
        return QueryResult([list(r) for r in rules], frozenset({ptype_key(q.sec, q.ptype)}))

    def snapshot(self) -> SnapshotWriter:
        # Rules are tuples of str (immutable): copying the containers is a private copy.
        tables = [
            (sec, ptype, table.next_order, list(table.rules.items()))
            for (sec, ptype), table in sorted(self._tables.items())
        ]
        owners = dict(self._owner)
        feed = list(self._feed)
        seq = self._seq
        shape = dict(self._shape)
        return SnapshotWriter(
            lambda directory: _write_snapshot(Path(directory), seq, tables, owners, feed,
                                              shape),
            background=True,
        )

    def install(self, directory: Path) -> None:
        seq, tables, owner, feed, shape = _read_snapshot(Path(directory) / SNAPSHOT_FILE)
        owned: dict[str, dict[tuple[str, str, Rule], None]] = {}
        for item, session in owner.items():
            owned.setdefault(session, {})[item] = None
        self._seq, self._tables, self._owner, self._owned = seq, tables, owner, owned
        self._shape = shape
        self._feed = deque(feed)
        self._feed_rules = sum(_change_size(change) for change in feed)
        log.info("installed casbin snapshot: %d rules, change %d", len(self), seq)

    # ------------------------------------------------------------------ introspection

    def __len__(self) -> int:
        return sum(len(table.rules) for table in self._tables.values())

    @property
    def seq(self) -> int:
        """The change counter: the number of changes applied so far."""
        return self._seq

    @property
    def shape(self) -> dict[Key, tuple[int, int]]:
        """The declared model shape, (sec, ptype) -> (fields, priority field or -1)."""
        return dict(self._shape)

    def owner(self, sec: str, ptype: str, rule: Iterable[str]) -> str | None:
        """The session owning a temporary rule (None: persistent or absent)."""
        return self._owner.get((sec, ptype, tuple(rule)))

    # ------------------------------------------------------------------ writing

    def _write(self, cmd: Parsed, session: str | None) -> ApplyResult:
        first_seq = self._seq
        if cmd.op == "clear":
            keys = self._clear()
            return self._result(bool(keys), [], [], keys, first_seq)
        if cmd.op == "define":
            return self._define(cmd, first_seq)
        if cmd.op in ("add", "update", "update_filtered"):
            self._check_fit(cmd.sec, cmd.ptype, cmd.rules)
        elif cmd.op == "seed":
            for sec, ptype, rules in cmd.seed:
                self._check_fit(sec, ptype, rules)
            return self._seed(cmd, first_seq)
        if cmd.op == "notify":
            self._seq += 1
            self._append({"seq": self._seq, "op": "message", "message": cmd.message})
            return self._result(True, [], [], {MESSAGES_KEY}, first_seq)
        table = self._tables.get((cmd.sec, cmd.ptype))
        if table is None:
            table = _Table()
        sec, ptype = cmd.sec, cmd.ptype
        if cmd.op == "add":
            rules = _distinct(cmd.rules)
            new = [rule for rule in rules if rule not in table.rules]
            if not new or (len(new) != len(rules) and not cmd.ex):
                return self._result(False, [], [], set(), first_seq)
            self._tables[(sec, ptype)] = table
            for rule in new:
                table.add(rule)
                if session is not None:
                    self._own(session, sec, ptype, rule)
            self._record("add", sec, ptype, new)
            return self._result(True, new, [], _trigger_keys(sec, ptype, new), first_seq)
        if cmd.op in ("remove", "remove_filtered"):
            complete = True
            if cmd.op == "remove" and cmd.ex:
                gone = [rule for rule in _distinct(cmd.rules) if rule in table.rules]
            elif cmd.op == "remove":
                gone, complete = _leading_present(cmd.rules, table)
            else:
                gone = table.matching(cmd.field_index, cmd.field_values)
            if not gone:
                return self._result(False, [], [], set(), first_seq)
            self._remove(table, sec, ptype, gone)
            keys = _trigger_keys(sec, ptype, gone)
            return self._result(complete, gone, [], keys, first_seq)
        if cmd.op == "update":
            return self._update(table, cmd, first_seq)
        return self._update_filtered(table, cmd, first_seq)

    def _define(self, cmd: Parsed, first_seq: int) -> ApplyResult:
        shape = {(sec, ptype): (fields, priority) for sec, ptype, fields, priority in cmd.shape}
        changed = shape != self._shape
        if changed and self._shape and not cmd.replace:
            raise CommandRejected(
                f"{MODEL_MISMATCH}: the cluster's policy model is {_shape_text(self._shape)}, "
                f"this enforcer's is {_shape_text(shape)}"
            )
        if changed and self._shape:  # instances on two models: worth a line in every log
            log.warning("the casbin model's shape changes from %s to %s",
                        _shape_text(self._shape), _shape_text(shape))
        self._shape = shape
        return self._result(changed, [], [], set(), first_seq)

    def _check_fit(self, sec: str, ptype: str, rules: Iterable[Rule]) -> None:
        """Refuse rules the declared model cannot hold (nothing declared: accept)."""
        if not self._shape:
            return
        shape = self._shape.get((sec, ptype))
        if shape is None:
            raise CommandRejected(f"the model has no {sec}/{ptype}")
        fields, priority = shape
        for rule in rules:
            if not fits(sec, fields, rule, priority):
                need = f"{fields} fields" if sec == "p" else f"at least {fields} fields"
                if priority >= 0:
                    need += f", digits in field {priority} (the priority)"
                raise CommandRejected(f"a {sec}/{ptype} rule has {need}: "
                                      f"{list(rule)[:MAX_SHOWN_FIELDS]}")

    def _seed(self, cmd: Parsed, first_seq: int) -> ApplyResult:
        if self._seq != 0 or self._tables:  # only a cluster that never changed is seeded
            return self._result(False, [], [], set(), first_seq)
        keys: set[str] = set()
        for sec, ptype, rules in sorted(cmd.seed, key=lambda item: (item[0], item[1])):
            table = self._tables.setdefault((sec, ptype), _Table())
            added = [rule for rule in _distinct(rules) if rule not in table.rules]
            for rule in added:
                table.add(rule)
            if added:
                self._record("add", sec, ptype, added)
                keys |= _trigger_keys(sec, ptype, added)
        return self._result(True, [], [], keys, first_seq)

    def _update(self, table: _Table, cmd: Parsed, first_seq: int) -> ApplyResult:
        sec, ptype, old, new = cmd.sec, cmd.ptype, cmd.old_rules, cmd.rules
        replaced = set(old)
        ok = (
            len(replaced) == len(old)
            and len(set(new)) == len(new)
            and all(rule in table.rules for rule in old)
            and not any(rule in table.rules and rule not in replaced for rule in new)
        )
        if not ok:
            return self._result(False, [], [], set(), first_seq)
        pairs = [(o, n) for o, n in zip(old, new, strict=True) if o != n]
        if not pairs:  # casbin answers True for an update to the same rule
            return self._result(True, list(new), list(old), set(), first_seq)
        orders = [(table.remove(o), o, n) for o, n in pairs]  # all out first: new may be an old
        for order, o, n in orders:
            table.add(n, order)
            owner = self._owner.pop((sec, ptype, o), None)
            if owner is not None:  # a temporary rule stays temporary when updated
                del self._owned[owner][(sec, ptype, o)]
                self._own(owner, sec, ptype, n)
        self._record("update", sec, ptype, [n for _, n in pairs], [o for o, _ in pairs])
        keys = _trigger_keys(sec, ptype, [o for o, _ in pairs] + [n for _, n in pairs])
        return self._result(True, list(new), list(old), keys, first_seq)

    def _update_filtered(self, table: _Table, cmd: Parsed, first_seq: int) -> ApplyResult:
        sec, ptype = cmd.sec, cmd.ptype
        old = table.matching(cmd.field_index, cmd.field_values)
        if not old:
            return self._result(False, [], [], set(), first_seq)
        self._remove(table, sec, ptype, old)
        self._tables[(sec, ptype)] = table
        added = _distinct(cmd.rules)
        if any(rule in table.rules for rule in added):
            added = []  # casbin adds the new rules all or none
        for rule in added:
            table.add(rule)
        if added:
            self._record("add", sec, ptype, added)
        keys = _trigger_keys(sec, ptype, old + added)
        return self._result(True, added, old, keys, first_seq)

    def _remove(self, table: _Table, sec: str, ptype: str, rules: list[Rule]) -> None:
        for rule in rules:
            table.remove(rule)
            owner = self._owner.pop((sec, ptype, rule), None)
            if owner is not None:
                owned = self._owned[owner]
                del owned[(sec, ptype, rule)]
                if not owned:
                    del self._owned[owner]
        self._record("remove", sec, ptype, rules)

    def _clear(self) -> set[str]:
        keys: set[str] = set()
        for (sec, ptype), table in self._tables.items():
            keys |= _trigger_keys(sec, ptype, table.rules)
        self._tables = {}
        self._owner = {}
        self._owned = {}
        if keys:
            self._record("clear", "", "", [])
        return keys

    def _own(self, session: str, sec: str, ptype: str, rule: Rule) -> None:
        self._owner[(sec, ptype, rule)] = session
        self._owned.setdefault(session, {})[(sec, ptype, rule)] = None

    def _result(
        self, changed: bool, rules: list[Rule], old: list[Rule], keys: set[str], first_seq: int
    ) -> ApplyResult:
        if self._seq != first_seq:
            keys = keys | {SEQ_KEY}
        result = {
            "changed": changed,
            "rules": [list(r) for r in rules],
            "old": [list(r) for r in old],
            "seq": self._seq,
        }
        return ApplyResult(result, frozenset(keys))

    # ------------------------------------------------------------------ the change feed

    def _record(
        self, op: str, sec: str, ptype: str, rules: list[Rule], old: list[Rule] | None = None
    ) -> None:
        self._seq += 1
        change: dict[str, Any] = {"seq": self._seq, "op": op, "sec": sec, "ptype": ptype,
                                  "rules": [list(r) for r in rules]}
        if old is not None:
            change["old"] = [list(r) for r in old]
        self._append(change)

    def _append(self, change: dict[str, Any]) -> None:
        self._feed.append(change)
        self._feed_rules += _change_size(change)
        # Bounded by count and by rules, the same on every peer; the newest always stays.
        while len(self._feed) > 1 and (
            len(self._feed) > self.max_feed_changes or self._feed_rules > self.max_feed_rules
        ):
            self._feed_rules -= _change_size(self._feed.popleft())

    def _changes_since(self, since: int, limit: int | None) -> dict[str, Any]:
        if since >= self._seq:  # up to date (or ahead of a peer that lags behind)
            return {"seq": self._seq, "changes": [], "more": False}
        first = self._feed[0]["seq"] if self._feed else self._seq + 1
        if since < first - 1:
            return {"seq": self._seq, "full": self._everything()}
        limit = limit or DEFAULT_CHANGES_LIMIT
        changes: list[dict[str, Any]] = []
        rules = 0
        for change in itertools.islice(self._feed, since + 1 - first, None):
            if len(changes) >= limit or (changes and rules >= _REPLY_RULES):
                break
            changes.append(change)
            rules += _change_size(change)
        more = changes[-1]["seq"] < self._seq
        return {"seq": changes[-1]["seq"], "changes": changes, "more": more}

    # ------------------------------------------------------------------ reading

    def _everything(self) -> list[list[Any]]:
        return [
            [sec, ptype, [list(rule) for rule in table.ordered()]]
            for (sec, ptype), table in sorted(self._tables.items())
            if table.rules
        ]

    def _subject(self, subject: str) -> list[list[Any]]:
        out = []
        for (sec, ptype), table in sorted(self._tables.items()):
            rules = table.matching(0, (subject,))
            if sec == "g":
                rules += table.matching(1, (subject,))
                rules.sort(key=table.rules.__getitem__)
            out.extend([sec, ptype, list(rule)] for rule in rules)
        return out


def _shape_text(shape: dict[Key, tuple[int, int]]) -> str:
    return ", ".join(f"{sec}/{ptype}:{form[0]}" for (sec, ptype), form in sorted(shape.items()))


def _leading_present(rules: Iterable[Rule], table: _Table) -> tuple[list[Rule], bool]:
    """casbin's ``remove_policies``: the rules are removed in order until one is missing
    (or named twice); answers those and whether all were."""
    gone: dict[Rule, None] = {}
    for rule in rules:
        if rule in gone or rule not in table.rules:
            return list(gone), False
        gone[rule] = None
    return list(gone), True


def _distinct(rules: Iterable[Rule]) -> list[Rule]:
    return list(dict.fromkeys(rules))


def _change_size(change: dict[str, Any]) -> int:
    message = change.get("message")
    if message is not None:
        return len(message.get("NewRules") or ()) + len(message.get("OldRules") or ()) + 1
    return len(change["rules"]) + len(change.get("old", ())) + 1


def _trigger_keys(sec: str, ptype: str, rules: Iterable[Rule]) -> set[str]:
    keys = {ptype_key(sec, ptype)}
    for rule in rules:
        keys.add(rule_key(sec, ptype, rule))
        keys.add(subject_key(rule[0]))
        if sec == "g" and len(rule) > 1:
            keys.add(subject_key(rule[1]))
    return keys


# --------------------------------------------------------------------------- snapshot file
#
# casbin.msgpack (see snapshot_file.py for the header): the objects [seq, tables, feed
# length, shape] (version 1: no shape), then per table (sorted by sec, ptype) [sec, ptype,
# next_order, rule count] followed by one [rule, order, owner or None] per rule in policy
# order, then the feed's changes oldest first. Two peers with the same state write the same bytes.


def _write_snapshot(
    directory: Path,
    seq: int,
    tables: list[tuple[str, str, int, list[tuple[Rule, int]]]],
    owners: dict[tuple[str, str, Rule], str],
    feed: list[dict[str, Any]],
    shape: dict[Key, tuple[int, int]],
) -> None:
    def objects() -> Iterator[Any]:
        yield [seq, len(tables), len(feed),
               [[sec, ptype, *form] for (sec, ptype), form in sorted(shape.items())]]
        for sec, ptype, next_order, rules in tables:
            yield [sec, ptype, next_order, len(rules)]
            for rule, order in sorted(rules, key=lambda item: item[1]):
                yield [list(rule), order, owners.get((sec, ptype, rule))]
        yield from feed

    length = write_objects(directory / SNAPSHOT_FILE, _MAGIC, _VERSION, objects())
    log.debug("wrote casbin snapshot: change %d, %d bytes", seq, length)


def _read_snapshot(
    path: Path,
) -> tuple[
    int, dict[Key, _Table], dict[tuple[str, str, Rule], str], list[dict[str, Any]],
    dict[Key, tuple[int, int]],
]:
    version, objects = read_objects(path, _MAGIC, _READABLE_VERSIONS)
    position = 0

    def take(what: str) -> Any:
        nonlocal position
        if position >= len(objects):
            raise InvalidSnapshot(path, f"the file ends before {what}")
        position += 1
        return objects[position - 1]

    head = take("the header")
    counters = 3
    if not (isinstance(head, list) and len(head) == counters + (version >= 2)
            and all(type(x) is int for x in head[:counters])):
        raise InvalidSnapshot(path, "bad header object")
    seq, table_count, feed_count = head[:counters]
    shape = _shape_of(path, head[counters]) if version >= 2 else {}
    tables: dict[Key, _Table] = {}
    owners: dict[tuple[str, str, Rule], str] = {}
    for _ in range(table_count):
        sec, ptype, next_order, count = _table_header(path, take("a table"))
        if (sec, ptype) in tables:
            raise InvalidSnapshot(path, f"table {sec}/{ptype} appears twice")
        table = tables[(sec, ptype)] = _Table()
        table.next_order = next_order
        for _ in range(count):
            rule, order, owner = _rule_row(path, take("a rule"), next_order)
            if rule in table.rules:
                raise InvalidSnapshot(path, f"a rule of {sec}/{ptype} appears twice")
            table.add(rule, order)
            if owner is not None:
                owners[(sec, ptype, rule)] = owner
    feed = [take("a change") for _ in range(feed_count)]
    if position != len(objects):
        raise InvalidSnapshot(path, "trailing objects after the change feed")
    for change in feed:
        if not (isinstance(change, dict) and type(change.get("seq")) is int
                and (isinstance(change.get("rules"), list)
                     or isinstance(change.get("message"), dict))):
            raise InvalidSnapshot(path, "a change of the feed is malformed")
    if feed and [c["seq"] for c in feed] != list(range(seq - len(feed) + 1, seq + 1)):
        raise InvalidSnapshot(path, "the change feed is not the run of changes before seq")
    return seq, tables, owners, feed, shape


def _shape_of(path: Path, raw: Any) -> dict[Key, tuple[int, int]]:
    try:
        shape = parse_command({"op": "define", "shape": raw}).shape
    except CommandRejected as error:
        raise InvalidSnapshot(path, f"bad model shape: {error}") from None
    return {(sec, ptype): (fields, priority) for sec, ptype, fields, priority in shape}


def _table_header(path: Path, raw: Any) -> tuple[str, str, int, int]:
    if not (isinstance(raw, list) and len(raw) == 4):
        raise InvalidSnapshot(path, "bad table header")
    sec, ptype, next_order, count = raw
    if sec not in ("p", "g") or not isinstance(ptype, str) or not ptype.startswith(sec):
        raise InvalidSnapshot(path, f"bad table name {sec!r}/{ptype!r}")
    if type(next_order) is not int or type(count) is not int or count < 0:
        raise InvalidSnapshot(path, f"bad table counters for {sec}/{ptype}")
    return sec, ptype, next_order, count


def _rule_row(path: Path, raw: Any, next_order: int) -> tuple[Rule, int, str | None]:
    if not (isinstance(raw, list) and len(raw) == 3 and isinstance(raw[0], list)):
        raise InvalidSnapshot(path, "bad rule row")
    rule, order, owner = raw
    if not rule or not all(isinstance(value, str) for value in rule):
        raise InvalidSnapshot(path, "a rule is not a list of str")
    if type(order) is not int or not 0 <= order < next_order:
        raise InvalidSnapshot(path, "a rule's position is out of range")
    if owner is not None and (not isinstance(owner, str) or not owner):
        raise InvalidSnapshot(path, "a rule's owner is not a session id")
    return tuple(rule), order, owner

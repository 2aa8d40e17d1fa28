"""Casbin policy commands and queries: builders and the one validator both sides use.

A command is a small dict that travels as msgpack; every rule is a list of str::

    {"op": "add", "sec": "p", "ptype": "p", "rules": [[...], ...], "ex": False}
    {"op": "remove", "sec", "ptype", "rules", "ex"}
    {"op": "remove_filtered", "sec", "ptype", "field_index": i, "field_values": [...]}
    {"op": "update", "sec", "ptype", "old_rules": [...], "new_rules": [...]}
    {"op": "update_filtered", "sec", "ptype", "new_rules", "field_index", "field_values"}
    {"op": "clear"}
    {"op": "define", "shape": [[sec, ptype, fields, priority], ...]}

``define`` declares the shape of the model the instances use: how many fields a rule of each
(sec, ptype) has (a ``g`` rule: at least that many; conditional role managers append
parameters) and which field is an explicit priority (-1: none; it must be digits). From
then on the backend refuses a rule that does not fit (a ptype the model lacks, a wrong
field count) the same way on every peer; see :func:`fits`.

``ex=False`` is casbin's all-or-nothing batch (``add_policies``: nothing is added if one
rule exists); ``ex=True`` changes the rules it can (``add_policies_ex``, and Go's
``RemovePoliciesSelf``). Every result is ``{"changed": bool, "rules": [...], "old": [...],
"seq": n}``: the rules that were added or removed (for updates ``rules`` are the new and
``old`` the replaced ones) and the change counter after the command (a client that has
applied the change feed up to ``seq`` sees its write).

Queries: ``policy`` (everything), ``has``, ``filtered``, ``subject``, ``changes_since``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from zraft.backends.base import CommandRejected

__all__ = [
    "MAX_BATCH",
    "MAX_FIELD_BYTES",
    "MAX_FIELDS",
    "MESSAGE_METHODS",
    "Parsed",
    "Rule",
    "add",
    "changes_since",
    "clear",
    "define",
    "filtered",
    "fits",
    "has",
    "notify",
    "parse_command",
    "parse_query",
    "policy",
    "remove",
    "remove_filtered",
    "seed",
    "subject",
    "update",
    "update_filtered",
]

Rule = tuple[str, ...]

MAX_BATCH: Final = 100_000  # rules in one command
MAX_FIELDS: Final = 32  # values in one rule
MAX_FIELD_BYTES: Final = 4096
_PTYPE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")

_FIELDS: Final[dict[str, frozenset[str]]] = {
    # op: required fields besides "op"; "ex" is optional on add and remove
    "add": frozenset({"sec", "ptype", "rules"}),
    "remove": frozenset({"sec", "ptype", "rules"}),
    "remove_filtered": frozenset({"sec", "ptype", "field_index", "field_values"}),
    "update": frozenset({"sec", "ptype", "old_rules", "new_rules"}),
    "update_filtered": frozenset({"sec", "ptype", "new_rules", "field_index", "field_values"}),
    "clear": frozenset(),
    "define": frozenset({"shape"}),
    "seed": frozenset({"policy"}),
    "notify": frozenset({"message"}),
    # queries
    "policy": frozenset(),
    "has": frozenset({"sec", "ptype", "rule"}),
    "filtered": frozenset({"sec", "ptype", "field_index", "field_values"}),
    "subject": frozenset({"subject"}),
    "changes_since": frozenset({"seq"}),
}
_OPTIONAL: Final[dict[str, frozenset[str]]] = {
    "add": frozenset({"ex"}),
    "remove": frozenset({"ex"}),
    "changes_since": frozenset({"limit"}),
    "define": frozenset({"replace"}),
}
# How a ``define`` of another model than the declared one is refused (``connect`` reads it).
MODEL_MISMATCH: Final = "model mismatch"
WRITE_OPS: Final = frozenset({"add", "remove", "remove_filtered", "update", "update_filtered",
                              "clear", "define", "seed", "notify"})
READ_OPS: Final = frozenset({"policy", "has", "filtered", "subject", "changes_since"})
SESSION_OPS: Final = frozenset({"add"})  # temporary rules are created, never taken over


# --------------------------------------------------------------------------- builders


def _rules(rules: Sequence[Sequence[str]]) -> list[list[str]]:
    return [list(rule) for rule in rules]


def add(sec: str, ptype: str, rules: Sequence[Sequence[str]], ex: bool = False) -> dict[str, Any]:
    return _checked({"op": "add", "sec": sec, "ptype": ptype, "rules": _rules(rules), "ex": ex})


def remove(
    sec: str, ptype: str, rules: Sequence[Sequence[str]], ex: bool = False
) -> dict[str, Any]:
    return _checked(
        {"op": "remove", "sec": sec, "ptype": ptype, "rules": _rules(rules), "ex": ex}
    )


def remove_filtered(
    sec: str, ptype: str, field_index: int, field_values: Sequence[str]
) -> dict[str, Any]:
    return _checked({"op": "remove_filtered", "sec": sec, "ptype": ptype,
                     "field_index": field_index, "field_values": list(field_values)})


def update(
    sec: str, ptype: str, old_rules: Sequence[Sequence[str]], new_rules: Sequence[Sequence[str]]
) -> dict[str, Any]:
    return _checked({"op": "update", "sec": sec, "ptype": ptype,
                     "old_rules": _rules(old_rules), "new_rules": _rules(new_rules)})


def update_filtered(
    sec: str,
    ptype: str,
    new_rules: Sequence[Sequence[str]],
    field_index: int,
    field_values: Sequence[str],
) -> dict[str, Any]:
    return _checked({"op": "update_filtered", "sec": sec, "ptype": ptype,
                     "new_rules": _rules(new_rules), "field_index": field_index,
                     "field_values": list(field_values)})


def clear() -> dict[str, Any]:
    return {"op": "clear"}


def define(shape: Sequence[tuple[str, str, int, int]], replace: bool = True) -> dict[str, Any]:
    """The model's shape, ``[(sec, ptype, fields, priority), ...]`` (see :func:`fits`):
    replaces what the cluster held; later writes whose rules do not fit it are refused."""
    command = {"op": "define", "shape": [list(item) for item in shape]}
    if not replace:  # (absent, it replaces: what versions before it sent)
        command["replace"] = False
    return _checked(command)


def fits(sec: str, fields: int, rule: Sequence[Any], priority: int = -1) -> bool:
    """Does ``rule`` fit a ptype of ``fields`` fields? A policy rule has exactly that many
    (PyCasbin's ``enforce`` raises on any other count) and digits in its ``priority`` field
    (PyCasbin sorts by ``int`` of it, and fails to load a policy mixing numbers and words);
    a grouping rule at least that many fields (PyCasbin refuses fewer; more are a
    conditional role manager's parameters)."""
    if sec != "p":
        return len(rule) >= fields
    return len(rule) == fields and (priority < 0 or _digits(rule[priority]))


def _digits(value: Any) -> bool:
    return isinstance(value, str) and value.isascii() and value.isdigit()


def seed(policy: Sequence[tuple[str, str, Sequence[Sequence[str]]]]) -> dict[str, Any]:
    """The initial policy (e.g. the adapter's): applied only to a cluster that never had a
    change, so every instance may send it at start and the first one wins."""
    return _checked({"op": "seed", "policy": [[sec, ptype, _rules(rules)]
                                              for sec, ptype, rules in policy]})


def notify(message: dict[str, Any]) -> dict[str, Any]:
    """A watcher notification (Go redis-watcher fields): ordered by the log, delivered to
    every subscriber through the change feed; the policy itself is not changed."""
    return _checked({"op": "notify", "message": message})


def policy() -> dict[str, Any]:
    return {"op": "policy"}


def has(sec: str, ptype: str, rule: Sequence[str]) -> dict[str, Any]:
    return _checked({"op": "has", "sec": sec, "ptype": ptype, "rule": list(rule)}, READ_OPS)


def filtered(
    sec: str, ptype: str, field_index: int, field_values: Sequence[str]
) -> dict[str, Any]:
    return _checked({"op": "filtered", "sec": sec, "ptype": ptype, "field_index": field_index,
                     "field_values": list(field_values)}, READ_OPS)


def subject(name: str) -> dict[str, Any]:
    return _checked({"op": "subject", "subject": name}, READ_OPS)


def changes_since(seq: int, limit: int | None = None) -> dict[str, Any]:
    query: dict[str, Any] = {"op": "changes_since", "seq": seq}
    if limit is not None:
        query["limit"] = limit
    return _checked(query, READ_OPS)


def _checked(command: dict[str, Any], allowed: frozenset[str] = WRITE_OPS) -> dict[str, Any]:
    """Validate a built command now, so a mistake surfaces before a round trip."""
    _parse(command, allowed)
    return command


# --------------------------------------------------------------------------- validation


@dataclass(slots=True)
class Parsed:
    """A validated command or query; rules are tuples (hashable, immutable)."""

    op: str
    sec: str = ""
    ptype: str = ""
    rules: tuple[Rule, ...] = ()
    seed: tuple[tuple[str, str, tuple[Rule, ...]], ...] = ()
    shape: tuple[tuple[str, str, int, int], ...] = ()
    replace: bool = True  # define: False refuses it when another shape is declared
    message: dict[str, Any] | None = None
    old_rules: tuple[Rule, ...] = ()
    ex: bool = False
    field_index: int = 0
    field_values: Rule = ()
    seq: int = 0
    limit: int | None = None
    subject: str = ""


def parse_command(command: Any) -> Parsed:
    return _parse(command, WRITE_OPS)


def parse_query(query: Any) -> Parsed:
    return _parse(query, READ_OPS)


def _parse(raw: Any, allowed: frozenset[str]) -> Parsed:
    if not isinstance(raw, dict):
        raise CommandRejected(f"a casbin command is a dict, not {type(raw).__name__}")
    op = raw.get("op")
    if not isinstance(op, str) or op not in allowed:
        raise CommandRejected(f"unknown op {op!r}; expected one of {sorted(allowed)}")
    required, optional = _FIELDS[op], _OPTIONAL.get(op, frozenset())
    fields = set(raw) - {"op"}
    if not required <= fields:
        raise CommandRejected(f"{op}: missing {sorted(required - fields)}")
    if not fields <= required | optional:
        unknown = sorted(map(str, fields - required - optional))
        raise CommandRejected(f"{op}: unknown fields {unknown}")
    parsed = Parsed(op)
    if "sec" in raw:
        parsed.sec = _sec(raw["sec"])
        parsed.ptype = _ptype(raw["ptype"], parsed.sec)
    if "ex" in raw:
        if type(raw["ex"]) is not bool:
            raise CommandRejected("ex must be a bool")
        parsed.ex = raw["ex"]
    if op in ("add", "remove"):
        parsed.rules = _rule_list(raw["rules"], "rules", allow_empty=False)
    elif op == "update":
        parsed.old_rules = _rule_list(raw["old_rules"], "old_rules", allow_empty=False)
        parsed.rules = _rule_list(raw["new_rules"], "new_rules", allow_empty=False)
        if len(parsed.old_rules) != len(parsed.rules):
            raise CommandRejected("update: old_rules and new_rules differ in length")
    elif op == "update_filtered":
        parsed.rules = _rule_list(raw["new_rules"], "new_rules", allow_empty=True)
    elif op == "seed":
        parsed.seed = _seed(raw["policy"])
    elif op == "define":
        parsed.shape = _shape(raw["shape"])
        if "replace" in raw:
            if type(raw["replace"]) is not bool:
                raise CommandRejected("define: replace must be a bool")
            parsed.replace = raw["replace"]
    elif op == "notify":
        parsed.message = _message(raw["message"])
    elif op == "has":
        parsed.rules = (_rule(raw["rule"], "rule"),)
    elif op == "subject":
        parsed.subject = _field(raw["subject"], "subject")
    elif op == "changes_since":
        parsed.seq = _int(raw["seq"], "seq", 0)
        if "limit" in raw:
            parsed.limit = _int(raw["limit"], "limit", 1)
    if "field_index" in raw:
        parsed.field_index = _int(raw["field_index"], "field_index", 0, MAX_FIELDS - 1)
        # No values is casbin's "every rule" (remove_filtered_policy(0) removes them all).
        parsed.field_values = _rule(raw["field_values"], "field_values", allow_empty=True)
        if parsed.field_index + len(parsed.field_values) > MAX_FIELDS:
            raise CommandRejected(f"the filter reaches past field {MAX_FIELDS}")
    return parsed


def _seed(value: Any) -> tuple[tuple[str, str, tuple[Rule, ...]], ...]:
    if not isinstance(value, list | tuple) or len(value) > 1024:
        raise CommandRejected("seed: policy must be a list of [sec, ptype, rules]")
    out = []
    seen = set()
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 3:
            raise CommandRejected("seed: policy must be a list of [sec, ptype, rules]")
        sec = _sec(item[0])
        ptype = _ptype(item[1], sec)
        if (sec, ptype) in seen:
            raise CommandRejected(f"seed: {sec}/{ptype} appears twice")
        seen.add((sec, ptype))
        out.append((sec, ptype, _rule_list(item[2], "rules", allow_empty=True)))
    return tuple(out)


def _shape(value: Any) -> tuple[tuple[str, str, int, int], ...]:
    form = "define: shape must be a list of [sec, ptype, fields, priority]"
    if not isinstance(value, list | tuple) or len(value) > 1024:
        raise CommandRejected(form)
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for item in value:
        if not isinstance(item, list | tuple) or len(item) != 4:
            raise CommandRejected(form)
        sec = _sec(item[0])
        ptype = _ptype(item[1], sec)
        if (sec, ptype) in out:
            raise CommandRejected(f"define: {sec}/{ptype} appears twice")
        fields = _int(item[2], f"define: fields of {sec}/{ptype}", 1, MAX_FIELDS)
        priority = item[3]
        fields_with_priority = fields if sec == "p" else 0  # a grouping rule has none
        if type(priority) is not int or not -1 <= priority < fields_with_priority:
            raise CommandRejected(f"define: the priority of {sec}/{ptype} must be -1 (none) "
                                  f"or one of its fields")
        out[(sec, ptype)] = (fields, priority)
    return tuple((sec, ptype, fields, priority)
                 for (sec, ptype), (fields, priority) in sorted(out.items()))


_MESSAGE_FIELDS: Final = {
    "Method": str, "ID": str, "Sec": str, "Ptype": str, "OldRule": list, "OldRules": list,
    "NewRule": list, "NewRules": list, "FieldIndex": int, "FieldValues": list,
}


# What each Method needs besides Method and ID (Go redis-watcher's messages): a receiver
# must be able to act on every message it is handed, so a message lacking one is refused
# when it is published, never delivered to fail in every subscriber's callback.
_NEEDS: Final[dict[str, tuple[str, ...]]] = {
    "Update": (),
    "UpdateForSavePolicy": (),
    "UpdateForAddPolicy": ("Sec", "Ptype", "NewRule"),
    "UpdateForRemovePolicy": ("Sec", "Ptype", "NewRule"),
    "UpdateForAddPolicies": ("Sec", "Ptype", "NewRules"),
    "UpdateForRemovePolicies": ("Sec", "Ptype", "NewRules"),
    "UpdateForRemoveFilteredPolicy": ("Sec", "Ptype", "FieldIndex", "FieldValues"),
    "UpdateForUpdatePolicy": ("Sec", "Ptype", "OldRule", "NewRule"),
    "UpdateForUpdatePolicies": ("Sec", "Ptype", "OldRules", "NewRules"),
}
MESSAGE_METHODS: Final = frozenset(_NEEDS)


def _message(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not isinstance(value.get("Method"), str):
        raise CommandRejected("notify: a message is a dict with a Method")
    method = value["Method"]
    needs = _NEEDS.get(method)
    if needs is None:
        raise CommandRejected(f"notify: unknown Method {method[:60]!r}; "
                              f"expected one of {sorted(_NEEDS)}")
    for name, item in value.items():
        kind = _MESSAGE_FIELDS.get(name)
        if kind is None:
            raise CommandRejected(f"notify: unknown message field {str(name)[:40]!r}")
        if item is None:
            continue
        if not isinstance(item, kind) or (kind is int and type(item) is not int):
            raise CommandRejected(f"notify: {name} must be a {kind.__name__}")
        if name in ("OldRule", "NewRule"):
            _rule(item, f"notify: {name}")
        elif name == "FieldValues":
            _rule(item, f"notify: {name}", allow_empty=True)
        elif name in ("OldRules", "NewRules"):
            _rule_list(item, f"notify: {name}", allow_empty=True)  # add_policies([]) notifies
        elif kind is str:
            _field(item, name)
    missing = [name for name in needs if value.get(name) is None]
    if missing:
        raise CommandRejected(f"notify: a {method} message needs {', '.join(missing)} "
                              "(missing or null)")
    if "Sec" in needs:
        _ptype(value["Ptype"], _sec(value["Sec"]))
    if method == "UpdateForRemoveFilteredPolicy":
        _int(value["FieldIndex"], "notify: FieldIndex", 0, MAX_FIELDS - 1)
    if method == "UpdateForUpdatePolicies" and len(value["OldRules"]) != len(value["NewRules"]):
        raise CommandRejected("notify: OldRules and NewRules differ in length")
    return dict(value)


def _sec(value: Any) -> str:
    if value not in ("p", "g"):
        raise CommandRejected(f"sec must be 'p' or 'g', not {str(value)[:20]!r}")
    return str(value)


def _ptype(value: Any, sec: str) -> str:
    if not isinstance(value, str) or not _PTYPE.match(value):
        raise CommandRejected(f"ptype must be an identifier, not {str(value)[:70]!r}")
    if not value.startswith(sec):
        raise CommandRejected(f"ptype {value!r} does not belong to section {sec!r}")
    return value


def _int(value: Any, what: str, minimum: int, maximum: int = 2**63 - 1) -> int:
    if type(value) is not int or not minimum <= value <= maximum:
        raise CommandRejected(f"{what} must be an int in {minimum}..{maximum}")
    return value


def _field(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise CommandRejected(f"{what}: values are str, not {type(value).__name__}")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:
        raise CommandRejected(f"{what}: a value is not valid UTF-8") from None
    if size > MAX_FIELD_BYTES:
        raise CommandRejected(f"{what}: a value is longer than {MAX_FIELD_BYTES} bytes")
    return value


def _rule(value: Any, what: str, allow_empty: bool = False) -> Rule:
    if not isinstance(value, list | tuple):
        raise CommandRejected(f"{what} must be a list of str, not {type(value).__name__}")
    low = 0 if allow_empty else 1
    if not low <= len(value) <= MAX_FIELDS:
        raise CommandRejected(f"{what} must have {low}..{MAX_FIELDS} values")
    return tuple(_field(item, what) for item in value)


def _rule_list(value: Any, what: str, allow_empty: bool) -> tuple[Rule, ...]:
    if not isinstance(value, list | tuple):
        raise CommandRejected(f"{what} must be a list of rules, not {type(value).__name__}")
    if not (allow_empty or value) or len(value) > MAX_BATCH:
        low = 0 if allow_empty else 1
        raise CommandRejected(f"{what} must hold {low}..{MAX_BATCH} rules")
    return tuple(_rule(rule, what) for rule in value)

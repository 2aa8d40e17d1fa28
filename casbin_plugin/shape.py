"""Does a rule fit the model? Asked before a change is sent and before one is applied.

A rule that does not fit a PyCasbin model breaks the enforcer holding it: a grouping rule
with fewer fields than its role definition makes every role-link rebuild raise, a policy
rule with the wrong field count makes ``enforce`` raise ``invalid policy size``. Replicated,
such a rule would break every instance, so it is refused at the calling instance (with the
exception PyCasbin raises for it), refused by the backend once the model's shape is declared
(``commands.define``), and skipped by an instance that finds one in the log anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from .commands import fits

__all__ = ["check_rules", "fitter", "model_shape", "ptype_shape", "rule_fits"]

# PyCasbin's messages for the same mistakes (plain pycasbin raises these; code written for
# it may match on them).
NO_SECTION = "'NoneType' object is not subscriptable"  # model[sec] is None, then indexed
SHORT_GROUPING = "grouping policy elements do not meet role definition"
POLICY_SIZE = "invalid policy size"


def ptype_shape(model: Any, sec: str, ptype: str) -> tuple[int, int] | None:
    """(fields, priority field or -1) of ``sec``/``ptype`` in ``model`` (None: no such
    ptype). For ``g`` the field count is PyCasbin's own measure: the number of ``_`` in the
    role definition."""
    assertion = (model[sec] or {}).get(ptype) if sec in ("p", "g") else None
    if assertion is None:
        return None
    if sec == "g":
        return str(assertion.value).count("_"), -1
    tokens = list(assertion.tokens)
    priority = tokens.index(f"{ptype}_priority") if f"{ptype}_priority" in tokens else -1
    return len(tokens), priority


def model_shape(model: Any) -> list[tuple[str, str, int, int]]:
    """``[(sec, ptype, fields, priority), ...]`` of every ptype of ``model``
    (for ``commands.define``)."""
    shape = []
    for sec in ("p", "g"):
        for ptype in sorted(model[sec] or {}):
            form = ptype_shape(model, sec, ptype)
            if form is not None and form[0] > 0:
                shape.append((sec, ptype, *form))
    return shape


def rule_fits(model: Any, sec: str, ptype: str, rule: Sequence[Any]) -> bool:
    """Can ``model`` hold ``rule``? (Every value a str, the field count right, a priority
    of digits.)"""
    return fitter(model, sec, ptype)(rule)


def fitter(model: Any, sec: str, ptype: str) -> Callable[[Sequence[Any]], bool]:
    """``rule_fits`` for many rules of one ptype (the model looked up once)."""
    form = ptype_shape(model, sec, ptype)
    if form is None:
        return lambda rule: False
    fields, priority = form
    return lambda rule: (all(isinstance(value, str) for value in rule)
                         and fits(sec, fields, rule, priority))


def check_rules(model: Any, sec: str, ptype: str, rules: Iterable[Sequence[Any]]) -> None:
    """Raise what plain PyCasbin raises for a rule ``model`` cannot hold: ``KeyError(ptype)``
    for an unknown ptype, ``TypeError`` for a missing section, a value that is not a str or
    a grouping rule too short. Where PyCasbin takes the rule and fails later, raise then
    what it raises later: for a policy rule of the wrong length the ``RuntimeError`` its
    ``enforce`` raises on every request reaching it; for a priority that is not digits the
    ``ValueError`` of ``int()`` (its ``add_policy`` prints that one and goes on)."""
    if model[sec] is None:
        raise TypeError(NO_SECTION)
    form = ptype_shape(model, sec, ptype)
    if form is None:
        raise KeyError(ptype)
    fields, priority = form
    for rule in rules:
        ",".join(rule)  # PyCasbin's own TypeError, word for word, for a value that is no str
        if fits(sec, fields, rule, priority):
            continue
        if sec == "g":
            raise TypeError(SHORT_GROUPING)
        if len(rule) != fields:
            raise RuntimeError(POLICY_SIZE)
        raise ValueError(f"invalid literal for int() with base 10: {rule[priority]!r} "
                         f"(the priority of a {ptype} rule is digits)")

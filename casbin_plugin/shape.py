"""Does a rule fit the model? Asked before a change is sent and before one is applied.

A rule that does not fit a PyCasbin model breaks the enforcer holding it: a grouping rule
with fewer fields than its role definition makes every role-link rebuild raise, a policy
rule with the wrong field count makes ``enforce`` raise ``invalid policy size``. Replicated,
such a rule would break every instance, so it is refused at the calling instance (with the
exception PyCasbin raises for it), refused by the backend once the model's shape is declared
(``commands.define``), and skipped by an instance that finds one in the log anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .commands import fits

__all__ = ["check_rules", "model_shape", "ptype_fields", "rule_fits"]

# PyCasbin's messages for the same mistakes (plain pycasbin raises these; code written for
# it may match on them).
NO_SECTION = "'NoneType' object is not subscriptable"  # model[sec] is None, then indexed
SHORT_GROUPING = "grouping policy elements do not meet role definition"
POLICY_SIZE = "invalid policy size"


def ptype_fields(model: Any, sec: str, ptype: str) -> int | None:
    """How many fields a rule of ``sec``/``ptype`` has in ``model`` (None: no such ptype).
    For ``g``, PyCasbin's own measure: the number of ``_`` in the role definition."""
    assertion = (model[sec] or {}).get(ptype) if sec in ("p", "g") else None
    if assertion is None:
        return None
    return len(assertion.tokens) if sec == "p" else str(assertion.value).count("_")


def model_shape(model: Any) -> list[tuple[str, str, int]]:
    """``[(sec, ptype, fields), ...]`` of every ptype of ``model`` (for ``commands.define``)."""
    shape = []
    for sec in ("p", "g"):
        for ptype in sorted(model[sec] or {}):
            fields = ptype_fields(model, sec, ptype)
            if fields is not None and fields > 0:
                shape.append((sec, ptype, fields))
    return shape


def rule_fits(model: Any, sec: str, ptype: str, rule: Sequence[Any]) -> bool:
    """Can ``model`` hold ``rule``? (Every value a str, the field count right.)"""
    fields = ptype_fields(model, sec, ptype)
    return (
        fields is not None
        and all(isinstance(value, str) for value in rule)
        and fits(sec, fields, rule)
    )


def check_rules(model: Any, sec: str, ptype: str, rules: Iterable[Sequence[Any]]) -> None:
    """Raise what plain PyCasbin raises for a rule ``model`` cannot hold: ``KeyError(ptype)``
    for an unknown ptype, ``TypeError`` for a missing section, a value that is not a str or
    a grouping rule too short; for a policy rule of the wrong length, the ``RuntimeError``
    PyCasbin's ``enforce`` would raise on every request reaching it."""
    if model[sec] is None:
        raise TypeError(NO_SECTION)
    fields = ptype_fields(model, sec, ptype)
    if fields is None:
        raise KeyError(ptype)
    for rule in rules:
        ",".join(rule)  # PyCasbin's own TypeError, word for word, for a value that is no str
        if not fits(sec, fields, rule):
            if sec == "g":
                raise TypeError(SHORT_GROUPING)
            raise RuntimeError(POLICY_SIZE)

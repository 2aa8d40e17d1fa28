"""Model texts shared by the demo, the benchmark and the chaos workload."""

from __future__ import annotations

from typing import Final

# PyCasbin's RBAC example: subjects get permissions directly or through roles (g).
RBAC_MODEL: Final = """
[request_definition]
r = sub, obj, act

[policy_definition]
p = sub, obj, act

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && r.obj == p.obj && r.act == p.act
"""

"""Fault injection for real clusters: link proxies that partition peers on demand, and the
Jepsen-style fault suite built on them (``zraft chaos``: runner, nemeses, workloads,
checks and reports in the submodules, imported on demand)."""

from .proxy import LinkProxy, ProxiedLinks

__all__ = ["LinkProxy", "ProxiedLinks"]

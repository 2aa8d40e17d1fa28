"""Fault injection for real clusters: link proxies that partition peers on demand."""

from .proxy import LinkProxy, ProxiedLinks

__all__ = ["LinkProxy", "ProxiedLinks"]

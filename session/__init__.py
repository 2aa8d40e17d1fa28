"""Clients: cluster creation, light sessions and long-lived sessions."""

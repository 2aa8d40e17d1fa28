"""zraft: strongly consistent replicated state for Python, built on Raft."""

__version__ = "0.1.0"

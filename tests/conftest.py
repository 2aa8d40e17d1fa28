"""Shared test settings. ZRAFT_SOAK=1 turns bounded CI forms into long soaks."""

from __future__ import annotations

import os

SOAK = os.environ.get("ZRAFT_SOAK", "") not in ("", "0")

from tests.chaos_support import chaos_out  # noqa: E402,F401  (a fixture for the chaos tests)

"""Shared test settings. ZRAFT_SOAK=1 turns bounded CI forms into long soaks."""

from __future__ import annotations

import os

import pytest

SOAK = os.environ.get("ZRAFT_SOAK", "") not in ("", "0")

from tests.support.chaos_support import chaos_out  # noqa: E402,F401  (a fixture for the chaos tests)

# A failed end-to-end test shows what its peers logged last: CI keeps only the output.
LOG_TAIL_LINES = 15


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    if report.failed and call.when == "call":
        tmp_path = getattr(item, "funcargs", {}).get("tmp_path")
        if tmp_path is not None:
            for log_file in sorted(tmp_path.glob("**/peer.log"))[:8]:
                lines = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
                section = f"{log_file.parent.name}/peer.log (last {LOG_TAIL_LINES} lines)"
                report.sections.append((section, "\n".join(lines)))
    return report

"""A process that owns a long-lived session, for tests that kill or pause it.

    python -m tests.session_owner PEERS TIMEOUT KEY

Opens a session, writes KEY as temporary data, prints "ready"; then for each line "write"
on stdin tries a write and prints "ok" or "expired".
"""

from __future__ import annotations

import sys

from zraft.backends import kv
from zraft.session import Session, SessionExpired


def main() -> None:
    peers, timeout, key = sys.argv[1].split(","), float(sys.argv[2]), sys.argv[3]
    session = Session(peers, timeout=timeout)
    session.write(kv.put(key, "owned"), temporary=True)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    for line in sys.stdin:
        if line.strip() == "write":
            try:
                session.write(kv.put(f"{key}-again", 1), temporary=True)
                sys.stdout.write("ok\n")
            except SessionExpired:
                sys.stdout.write("expired\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

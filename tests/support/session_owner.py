"""A process that owns a long-lived session, for tests that kill or pause it.

    python -m tests.support.session_owner PEERS TIMEOUT KEY [watch]

Opens a session, writes KEY as temporary data (with "watch": also arms a watch on KEY that
prints "fired REASON"), prints "ready"; then for each line "write" on stdin tries a write
and prints "ok" or "expired".
"""

from __future__ import annotations

import sys
import threading

from zraft.backends import kv
from zraft.session import Session, SessionExpired

_output = threading.Lock()


def say(line: str) -> None:
    with _output:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def main() -> None:
    peers, timeout, key = sys.argv[1].split(","), float(sys.argv[2]), sys.argv[3]
    session = Session(peers, session_timeout=timeout)
    session.write(kv.put(key, "owned"), temporary=True)
    if sys.argv[4:] == ["watch"]:
        session.query(kv.get(key), watch=lambda event: say(f"fired {event.reason}"))
    say("ready")
    for line in sys.stdin:
        if line.strip() == "write":
            try:
                session.write(kv.put(f"{key}-again", 1), temporary=True)
                say("ok")
            except SessionExpired:
                say("expired")


if __name__ == "__main__":
    main()

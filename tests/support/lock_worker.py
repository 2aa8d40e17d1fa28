"""A process that takes a lock in a loop, for the lock recipe's fault test.

    python -m tests.support.lock_worker PEERS TIMEOUT NAME

Prints one line per event: "acquired T", "op T" (a fenced write to the shared resource
succeeded), "fenced T" (the resource had seen a newer token), "released T R" (R: the log
index of the release), "expired".
"""

from __future__ import annotations

import sys
import time

from zraft.backends import kv
from zraft.session import LightSession, RequestTimeout, Session, SessionExpired, ZraftError
from zraft.session.recipes import Lock

RESOURCE = "resource"


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def fenced_append(storage: LightSession, token: int, name: str) -> bool:
    """The protected resource: an append-only list that refuses tokens older than the
    newest it has seen (what a fencing-aware store does)."""
    while True:
        current = storage.query(kv.get(RESOURCE))
        entries = current["value"] if current["found"] else []
        if entries and entries[-1][0] > token:
            return False
        swapped = storage.write(kv.cas(RESOURCE, current["value"], [*entries, [token, name]]))
        if swapped["swapped"]:
            return True


def main() -> None:
    peers, timeout, name = sys.argv[1].split(","), float(sys.argv[2]), sys.argv[3]
    with Session(peers, session_timeout=timeout) as session, LightSession(peers) as storage:
        lock = Lock(session, "locks/test", holder=name)
        say("ready")
        while True:
            try:
                token = lock.acquire(timeout=30)
            except SessionExpired:
                say("expired")
                return
            except (RequestTimeout, ZraftError):
                continue
            say(f"acquired {token}")
            try:
                time.sleep(0.05)  # work before the write: where a pause hurts most
                if fenced_append(storage, token, name):
                    say(f"op {token}")
                else:
                    say(f"fenced {token}")
                released = lock.release()
            except SessionExpired:
                say("expired")
                return
            except ZraftError:
                continue  # unknown outcome: the lock goes with the session if not released
            if released is not None:
                say(f"released {token} {released}")


if __name__ == "__main__":
    main()

"""Fuzzes the key-value snapshot file (raw, and with recomputed checksums).

Run ``python fuzz/kv_snapshot.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main("kv_snapshot", ["kv-snapshot", "kv-snapshot-resealed"])

"""Fuzzes snapshot meta files (raw, and with recomputed checksums).

Run ``python fuzz/snapshot_meta.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main("snapshot_meta", ["snapshot-meta", "snapshot-meta-resealed"])

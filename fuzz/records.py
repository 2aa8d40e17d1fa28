"""Fuzzes on-disk log records (raw, and with recomputed checksums).

Run ``python fuzz/records.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main("records", ["records", "records-resealed"])

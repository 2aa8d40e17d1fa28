"""Fuzzes hard-state files (raw, and with recomputed checksums).

Run ``python fuzz/hard_state.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main("hard_state", ["hard-state", "hard-state-resealed"])

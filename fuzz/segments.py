"""Fuzzes log directories reopened after random damage (segment recovery).

Run ``python fuzz/segments.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main("segments", ["segments"])

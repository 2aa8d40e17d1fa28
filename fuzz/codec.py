"""Fuzzes the wire codec: raw bytes, byte-mutated frames, wrong-typed fields.

Run ``python fuzz/codec.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main("codec", ["codec", "codec-mutated", "codec-fields"])

"""Fuzzes the snapshot stream (control framing, headers, whole streams).

Run ``python fuzz/snapshot_stream.py -atheris_runs=N`` (see ``fuzz/_driver.py``).
"""

from _driver import main

if __name__ == "__main__":
    main(
        "snapshot_stream", ["snapshot-stream-control", "snapshot-stream-header", "snapshot-stream"]
    )

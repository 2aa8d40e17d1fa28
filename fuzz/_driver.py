"""The shared driver of the atheris harnesses in this folder (one script per decoder).

    python fuzz/codec.py -atheris_runs=100000          # libFuzzer flags pass through
    python fuzz/codec.py -max_total_time=3600 corpus/  # an existing corpus directory
    python fuzz/codec.py --replay crash-1234abcd       # re-check one input, no atheris

A script names the targets of ``fuzz/targets.py`` that cover its decoder; the first byte
of every input picks one of them, the rest is that target's input. Each input is checked
with ``targets.check``: a PropertyViolation (crash, unclear rejection, CPU time over
``ZRAFT_FUZZ_CPU_SECONDS`` (default 5), memory over the target's bound) is raised, so
atheris stops and writes the input to ``crash-<sha1>``. Memory is measured with
tracemalloc on every ``ZRAFT_FUZZ_MEMORY_EVERY``-th input (default 8; 0 turns it off),
because tracing every allocation slows the search down severalfold.

Without a corpus argument the seeds of the targets are written to
``$ZRAFT_FUZZ_CORPUS/<script>`` (default: the system temp directory) and used.
atheris is not a dependency of zraft: ``pip install atheris`` (Linux/macOS wheels).
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _targets(names: Sequence[str]) -> list[object]:
    from fuzz import targets

    return [targets.TARGETS[name] for name in names]


def _seed_corpus(script: str, names: Sequence[str]) -> Path:
    from fuzz.targets import Target

    base = Path(os.environ.get("ZRAFT_FUZZ_CORPUS", Path(tempfile.gettempdir()) / "zraft-fuzz"))
    corpus = base / script
    corpus.mkdir(parents=True, exist_ok=True)
    for choice, target in enumerate(_targets(names)):
        assert isinstance(target, Target)
        for seed in target.seeds():
            data = bytes([choice]) + seed
            (corpus / hashlib.sha1(data).hexdigest()).write_bytes(data)
    return corpus


def _checker(names: Sequence[str]) -> object:
    from fuzz.targets import Target, check, cleanup

    atexit.register(cleanup)  # the shared snapshot receiver and its directory

    chosen = _targets(names)
    cpu = float(os.environ.get("ZRAFT_FUZZ_CPU_SECONDS", "5"))
    every = int(os.environ.get("ZRAFT_FUZZ_MEMORY_EVERY", "8"))
    count = 0

    def one_input(data: bytes) -> None:
        nonlocal count
        count += 1
        if not data:
            return
        target = chosen[data[0] % len(chosen)]
        assert isinstance(target, Target)
        memory = every > 0 and count % every == 0
        check(target, data[1:], cpu_seconds=cpu, memory=memory)

    return one_input


def main(script: str, names: Sequence[str]) -> None:
    """Run the atheris fuzzer over ``names`` (or ``--replay FILE...`` without atheris)."""
    sys.path.insert(0, str(ROOT))
    logging.disable(logging.CRITICAL)  # decoders log every rejection; far too many here
    args = sys.argv[1:]
    if args[:1] == ["--replay"]:
        one_input = _checker(names)
        for path in args[1:]:
            one_input(Path(path).read_bytes())  # type: ignore[operator]
            print(f"{path}: no property violated")
        return
    try:
        import atheris
    except ImportError:
        sys.exit("atheris is not installed: pip install atheris (it is not a zraft dependency)")
    with atheris.instrument_imports(include=["zraft", "fuzz", "msgpack"]):
        one_input = _checker(names)
    argv = [sys.argv[0], *args]
    if not any(not arg.startswith("-") for arg in args):  # no corpus directory given
        argv.append(str(_seed_corpus(script, names)))
    atheris.Setup(argv, one_input)
    atheris.Fuzz()

"""A probe of this machine's speed, for reading benchmark results across hours and CPUs.

    .venv/bin/python -m bench.speed

Two things made figures of different sessions hard to compare (docs/benchmarks.md):
hours in which this shared VM ran at up to half its speed without anything showing in
``/proc/stat`` (no steal, no other process), and a change of CPU under the same name of
machine, on which ML-DSA-87 is cheaper relative to Python. So each probe times, on one
idle core, the three kinds of work the node's CPU goes to, in about a second:

* ``sha3_8k_us``: SHA3-256 of 8,300 bytes (a signed vertex copy: the node's hashing);
* ``verify_us``: one ML-DSA-87 verification of a realistic vertex signature;
* ``python_us``: a fixed piece of interpreted Python (dicts, tuples, bytes joins: the
  services' own code).

Each is the median of :data:`REPEATS` timed batches. Nothing here is judged against a
fixed reference: the figures are recorded beside a run's results (``bench.targets``
probes before its first run and after its last and says so when the two differ by more
than :data:`DRIFT`), so that a reader can set two results side by side.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cretoai.crypto import SEED_SIZE, get_backend
from cretoai.vertex import CONTEXT

REPEATS = 5
#: Before and after differing by more than this fraction: the machine's speed changed
#: during the run.
DRIFT = 0.2
#: CPU flags that change what the node's native code costs (OpenSSL's ML-DSA and SHA3).
FLAGS = ("avx2", "avx512f", "sha_ni", "bmi2")
#: The figures a probe measures, µs each.
FIGURES = ("sha3_8k_us", "verify_us", "python_us")


def _per_call_us(work: Callable[[], object], calls: int) -> float:
    """The median over :data:`REPEATS` batches of ``calls`` calls, in µs per call."""
    samples = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        for _ in range(calls):
            work()
        samples.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(samples)


def _python_work() -> bytes:
    """A fixed piece of interpreted code shaped like the services' own."""
    table: dict[int, tuple[int, bytes]] = {}
    for i in range(200):
        table[i] = (i * 7, i.to_bytes(4, "big"))
    return b"".join(v[1] for k, v in sorted(table.items()) if v[0] % 3)


def cpu() -> dict[str, Any]:
    """The CPU's model name and which of :data:`FLAGS` it has (Linux; empty elsewhere)."""
    model, flags = "", set[str]()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and not model:
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(value.split())
    return {"model": model, "flags": [f for f in FLAGS if f in flags]}


def probe() -> dict[str, Any]:
    """Time the three kinds of work (about a second on the development VM)."""
    backend = get_backend()
    key = backend.private_key_from_seed(os.urandom(SEED_SIZE))
    public_key = key.public_key
    message = os.urandom(3_700)
    signature = key.sign(message, context=CONTEXT)
    if not backend.verify(public_key, message, signature, context=CONTEXT):
        raise RuntimeError(f"the probe's signature does not verify ({backend.name})")
    copy = os.urandom(8_300)
    return {
        "sha3_8k_us": round(_per_call_us(lambda: hashlib.sha3_256(copy).digest(), 2_000), 2),
        "verify_us": round(
            _per_call_us(
                lambda: backend.verify(public_key, message, signature, context=CONTEXT),
                200,
            ),
            1,
        ),
        "python_us": round(_per_call_us(_python_work, 300), 1),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def drift(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str | None:
    """A line saying which figures changed by more than :data:`DRIFT` between two probes,
    or None (also when either is missing)."""
    if not before or not after:
        return None
    changed = []
    for name in FIGURES:
        b, a = before.get(name), after.get(name)
        if not (isinstance(b, int | float) and isinstance(a, int | float)) or b <= 0:
            continue
        if abs(a - b) / b > DRIFT:
            changed.append(f"{name} {b:g} -> {a:g}")
    if not changed:
        return None
    return "the machine's speed changed during the run: " + ", ".join(changed)


def describe(speed: dict[str, Any] | None) -> str:
    """One line for a table's heading."""
    if not speed:
        return "speed: not probed"
    parts = [f"{k} {speed[k]:g}" for k in FIGURES if k in speed]
    return "speed: " + ", ".join(parts)


def main() -> int:
    print(json.dumps({"cpu": cpu(), **probe()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

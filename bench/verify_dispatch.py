"""What handing ML-DSA-87 verifications to a thread pool costs in CPU, per verification.

    .venv/bin/python -m bench.verify_dispatch [--vertices 100] [--repeats 15] [--output F]
    .venv/bin/python -m bench.verify_dispatch --vertices 1 --repeats 200   # one signature

The consensus service verifies the vertices of a message on its verifier's threads
(``services.consensus.verify``). Each job handed to the pool costs the process a
future, a GIL hand-off and a wake-up of the event loop, beside the verification. This
measures the process's CPU time (user + system, all threads) per verification of
``--vertices`` realistic vertices (as ``bench.verify_bound`` signs them) in one event
loop, three ways:

* ``inline`` — verified one after the other on the event loop (the floor);
* ``job_per_vertex`` — one ``run_in_executor`` job per vertex on 2 threads (the
  verifier until 2026-12-02);
* ``verifier`` — ``Verifier.verify_vertices``: the vertices split into one job per
  thread, a single one verified inline.

Each way runs ``--repeats`` times, interleaved; the result has the median CPU µs per
verification and its ratio to ``inline`` measured in the same run (the machine is shared:
the ratios are what compare across runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.verify_bound import KEYS, PARENTS, PAYLOAD_BYTES
from cretoai.crypto import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import vertex_pb2
from cretoai.vertex import make_vertex, signed_digest, verify_vertex, vertex_hash
from services.consensus.verify import Verifier

THREADS = 2
WAYS = ("inline", "job_per_vertex", "verifier")


def sample(count: int, backend_name: str) -> list[vertex_pb2.Vertex]:
    backend = get_backend(backend_name)
    keys = [
        NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<bench>"))
        for _ in range(KEYS)
    ]
    now = int(time.time() * 1000)
    return [
        make_vertex(
            keys[i % KEYS],
            os.urandom(PAYLOAD_BYTES),
            [os.urandom(32) for _ in range(PARENTS)],
            now + i,
        )
        for i in range(count)
    ]


class _Ways:
    """The three ways, each with its threads started once (warm, as in the service)."""

    def __init__(self, backend_name: str) -> None:
        self.backend = get_backend(backend_name)
        self.pool = ThreadPoolExecutor(max_workers=THREADS)
        # cache_size 0: no verdict is kept, every call verifies
        self.verifier = Verifier(self.backend, threads=THREADS, cache_size=0)

    def close(self) -> None:
        self.pool.shutdown()
        self.verifier.close()

    async def cpu_us(self, way: str, vertices: list[vertex_pb2.Vertex]) -> float:
        """CPU µs per verification of ``vertices`` verified ``way``."""
        loop = asyncio.get_running_loop()
        copies = [signed_digest(v) for v in vertices]
        contents = [vertex_hash(v) for v in vertices]
        cpu = time.process_time()
        if way == "inline":
            verdicts = [verify_vertex(v, self.backend) for v in vertices]
        elif way == "job_per_vertex":
            verdicts = list(
                await asyncio.gather(
                    *(
                        loop.run_in_executor(self.pool, verify_vertex, v, self.backend)
                        for v in vertices
                    )
                )
            )
        else:
            verdicts = await self.verifier.verify_vertices(vertices, copies, contents)
        used = time.process_time() - cpu
        if not all(verdicts):
            raise RuntimeError(f"{way}: a freshly signed vertex did not verify")
        return used / len(vertices) * 1e6


async def _measure(
    vertices: list[vertex_pb2.Vertex], repeats: int, backend_name: str
) -> dict[str, list[float]]:
    ways = _Ways(backend_name)
    try:
        for way in WAYS:  # warm-up: the threads started, the public keys loaded
            await ways.cpu_us(way, vertices)
        runs: dict[str, list[float]] = {way: [] for way in WAYS}
        for _ in range(repeats):
            for way in WAYS:
                runs[way].append(await ways.cpu_us(way, vertices))
        return runs
    finally:
        ways.close()


def measure(count: int, repeats: int, backend_name: str) -> dict[str, Any]:
    vertices = sample(count, backend_name)
    runs = asyncio.run(_measure(vertices, repeats, backend_name))
    medians = {way: statistics.median(values) for way, values in runs.items()}
    return {
        "benchmark": "verify_dispatch",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parameters": {
            "vertices": count,
            "repeats": repeats,
            "threads": THREADS,
            "backend": backend_name,
        },
        "cpu_us_per_verification_median": {w: round(v, 1) for w, v in medians.items()},
        "ratio_to_inline": {w: round(v / medians["inline"], 3) for w, v in medians.items()},
        "runs_cpu_us": {w: [round(v, 1) for v in values] for w, values in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--vertices", type=int, default=100, help="per message (100)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backend", default="cryptography")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    result = measure(args.vertices, args.repeats, args.backend)
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What checking a peer's request bodies costs consensus's event loop, per body.

    .venv/bin/python -m bench.decode_costs [--bodies N] [--repeats R] [--output PATH]

A backup decodes every PRE-PREPARE's bodies on its event loop (``Driver._check``): each
body parsed, checked to be its vertex's canonical encoding, its signed digest computed
(the request hash the batch digest covers), then its content hash (admission's and the
DAG's identity). Three ways, on one envelope of realistic bodies (1 KB payload, two
parents, four client keys, as ``bench.cluster_load`` sends), CPU per body
(``time.process_time``, one thread), median of ``--repeats``:

* ``before`` — as the driver did until 2026-12-07: :func:`services.consensus.driver.request_hash`
  for each body while the envelope is decoded, then each useful body parsed again and its
  canonical encoding built again for :func:`cretoai.vertex.vertex_hash`;
* ``now`` — ``_Bodies``: one parse and one canonical encoding per body, both hashes from it;
* ``hash_floor`` — the two SHA3-256 hashes alone, over encodings built beforehand: what no
  decoding can go below.

The ratios (``now / before``, ``now / hash_floor``) are medians of ratios of samples taken
side by side in one run, so they compare across machines and hours where the
microseconds do not.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cretoai.crypto import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import pbft_pb2, vertex_pb2
from cretoai.vertex import (
    canonical_bytes,
    hash_of_canonical,
    make_vertex,
    signed_digest_of_canonical,
    vertex_hash,
)
from services.consensus.core.codec import envelope_from_pb
from services.consensus.core.messages import Envelope, Request, RequestsEnvelope
from services.consensus.driver import _Bodies, request_hash

RESULT = Path(__file__).resolve().parent / "results" / "decode_costs.json"


def envelope(bodies: int) -> bytes:
    """A ConsensusEnvelope of ``bodies`` realistic signed vertices from four clients."""
    backend = get_backend()
    keys = [
        NodeKey(private=backend.private_key_from_seed(os.urandom(32)), path=Path("<bench>"))
        for _ in range(4)
    ]
    vertices = [
        make_vertex(keys[i % 4], os.urandom(1024), [os.urandom(32), os.urandom(32)], 1_000 + i)
        for i in range(bodies)
    ]
    pb = pbft_pb2.ConsensusEnvelope(
        requests=pbft_pb2.Requests(bodies=[v.SerializeToString() for v in vertices])
    )
    return pb.SerializeToString()


def _requests(env: Envelope) -> tuple[Request, ...]:
    assert isinstance(env, RequestsEnvelope)
    return env.requests


def before(payload: bytes) -> list[bytes]:
    """Each body's request hash and content hash, decoded as before."""
    pb = pbft_pb2.ConsensusEnvelope.FromString(payload)
    requests = _requests(envelope_from_pb(pb, request_hash=request_hash))
    vertices = [vertex_pb2.Vertex.FromString(r.body) for r in requests]
    return [r.hash for r in requests] + [vertex_hash(v) for v in vertices]


def now(payload: bytes) -> list[bytes]:
    """The same, decoded as the driver does now."""
    bodies = _Bodies()
    pb = pbft_pb2.ConsensusEnvelope.FromString(payload)
    requests = _requests(envelope_from_pb(pb, request_hash=bodies.request_hash))
    return [r.hash for r in requests] + bodies.vertices_and_contents(requests)[1]


def hash_floor_of(payload: bytes) -> Callable[[bytes], object]:
    parsed = [
        vertex_pb2.Vertex.FromString(b)
        for b in pbft_pb2.ConsensusEnvelope.FromString(payload).requests.bodies
    ]
    prepared = [(canonical_bytes(v), v.signature) for v in parsed]

    def hashes(_: bytes) -> None:
        for canonical, signature in prepared:
            signed_digest_of_canonical(canonical, signature)
            hash_of_canonical(canonical)

    return hashes


def per_body_us(fn: Callable[[bytes], object], payload: bytes, bodies: int, loops: int) -> float:
    started = time.process_time()
    for _ in range(loops):
        fn(payload)
    return (time.process_time() - started) / (loops * bodies) * 1e6


def run(bodies: int, repeats: int, loops: int) -> dict[str, Any]:
    payload = envelope(bodies)
    if before(payload) != now(payload):  # the two must compute the same hashes
        raise AssertionError("the decoding measured does not give the hashes it replaced")
    ways: dict[str, Callable[[bytes], object]] = {
        "before": before,
        "now": now,
        "hash_floor": hash_floor_of(payload),
    }
    for fn in ways.values():  # warm up
        fn(payload)
    # Interleaved one envelope at a time, so that the three ways of one repeat run within
    # a few milliseconds of each other: this machine's speed swings by 2x from one second
    # to the next, and the ratios within a repeat are what stays comparable.
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            samples[name].append(per_body_us(fn, payload, bodies, loops))
    medians = {name: statistics.median(xs) for name, xs in samples.items()}

    def paired(a: str, b: str) -> float:
        return statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True))

    from bench.cluster_load import machine

    return {
        "benchmark": "decode_costs",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "parameters": {
            "bodies": bodies,
            "envelope_bytes": len(payload),
            "repeats": repeats,
            "envelopes_per_sample": loops,
        },
        "cpu_us_per_body_median": {k: round(v, 2) for k, v in medians.items()},
        "cpu_us_per_body_samples": {k: [round(x, 2) for x in xs] for k, xs in samples.items()},
        # the median of the per-repeat ratios (each of two samples taken side by side)
        "ratios": {
            "now_over_before": round(paired("now", "before"), 3),
            "now_over_hash_floor": round(paired("now", "hash_floor"), 3),
            "before_over_hash_floor": round(paired("before", "hash_floor"), 3),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=230, help="bodies in the envelope")
    parser.add_argument("--repeats", type=int, default=101, help="samples of each way")
    parser.add_argument("--loops", type=int, default=1, help="envelopes decoded per sample")
    parser.add_argument("--output", type=Path, default=RESULT)
    args = parser.parse_args(argv)
    if args.bodies < 1 or args.repeats < 1 or args.loops < 1:
        parser.error("--bodies, --repeats and --loops must be at least 1")
    result = run(args.bodies, args.repeats, args.loops)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    medians, ratios = result["cpu_us_per_body_median"], result["ratios"]
    print(
        "CPU per body, median of {r}: before {b} us, now {n} us, hash floor {f} us; "
        "median of paired ratios: now/before {nb}, now/floor {nf}".format(
            r=args.repeats,
            b=medians["before"],
            n=medians["now"],
            f=medians["hash_floor"],
            nb=ratios["now_over_before"],
            nf=ratios["now_over_hash_floor"],
        )
    )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

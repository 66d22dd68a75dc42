"""What a peer's large message costs on its way in, before and after copies were cut.

    .venv/bin/python -m bench.message_costs [--bodies N] [--repeats R] [--output PATH]

Two places, each measured the way it was until 2026-12-07 (``before``) and the way it is
now (``now``), CPU (``time.process_time``, one thread), on realistic bodies (1 KB payload,
two parents, four client keys, as ``bench.cluster_load`` sends; ``--bodies`` of them, 230
by default: a 2-MiB PRE-PREPARE):

**delivery** — the transport, per message: a peer's untraced envelope of that PRE-PREPARE
received and handed to consensus as an ``EnvelopeBatch``; ``before``: parsed at receipt,
parsed again into a batch message, the batch serialized; ``now``: recognized as a lone
payload field without a parse, the batch's bytes concatenated
(:func:`services.transport.node.envelope_batch_bytes`, passed on by the gRPC server as
they are). And a message consensus sends, encoded for the peer: ``Envelope(payload=…)``
serialized, against the field concatenated (``out_before``, ``out_now``).

**persist** — consensus, per batch: the voted batch's record (``VotedBatch``) and the
WriteState request that carries it to storage, as messages serialized (``before``) and
concatenated (``now``: :func:`services.consensus.core.durable.encode_batch`,
:func:`services.consensus.driver.persist_writes`).

**decode** — consensus's event loop, per body: a backup decodes every PRE-PREPARE's
bodies (``Driver._check``): each body parsed, checked to be its vertex's canonical
encoding, its signed digest computed (the request hash the batch digest covers), then its
content hash. ``before``: :func:`services.consensus.driver.request_hash` for each body,
then each useful body parsed again and its canonical encoding built again for
:func:`cretoai.vertex.vertex_hash`; ``now``: ``_Bodies``, one parse and one encoding per
body, both hashes from it; ``hash_floor``: the two SHA3-256 hashes alone, over encodings
built beforehand, what no decoding can go below.

Then each of delivery (a transport's round: the PRE-PREPARE and eight 4.7-KB messages
delivered to consensus, and each payload encoded again as if sent on) and persist, before
and now, in a process of its own under the services' allocator settings
(``MALLOC_ARENA_MAX=2``, glibc's dynamic thresholds): page faults and CPU per message.

Each group checks first that ``before`` and ``now`` give the same result. The ways of a
group are interleaved one message at a time and the ratios are medians of side-by-side
pairs: this machine's speed swings by 2x from one second to the next, and only ratios of
samples taken milliseconds apart compare across hours and machines. What the figures
leave out: in a service, glibc may hand a freed large buffer back to the kernel and fault
it in again at the next message (docs/benchmarks.md, "Page faults of the message
services"), which makes every large copy dearer than here, where the heap keeps them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from cretoai.crypto import get_backend
from cretoai.crypto.keys import NodeKey
from cretoai.v1 import pbft_pb2, storage_pb2, transport_pb2, vertex_pb2
from cretoai.vertex import (
    canonical_bytes,
    hash_of_canonical,
    make_vertex,
    signed_digest_of_canonical,
    vertex_hash,
)
from services.consensus.core.codec import envelope_from_pb
from services.consensus.core.durable import encode_batch
from services.consensus.core.messages import Envelope, Request, RequestsEnvelope
from services.consensus.core.ready import Record
from services.consensus.driver import _Bodies, persist_writes, request_hash
from services.transport.node import Delivery, envelope_batch_bytes, is_payload_only, payload_field

T = TypeVar("T")

RESULT = Path(__file__).resolve().parent / "results" / "message_costs.json"


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


#: The ids a delivery carries (this node's and the peer's: 64 hex digits each).
ME, PEER = "a" * 64, "b" * 64


def delivered_before(wire: bytes) -> bytes:
    """The EnvelopeBatch's bytes for consensus, as the transport made them before."""
    transport_pb2.Envelope().ParseFromString(wire)  # the check at receipt
    batch = transport_pb2.EnvelopeBatch()
    Delivery(wire, ME, PEER, None, len(wire)).write_to(batch.envelopes.add())
    return batch.SerializeToString()


def delivered_now(wire: bytes) -> bytes:
    """The same, as the transport makes them now."""
    if not is_payload_only(wire):
        transport_pb2.Envelope().ParseFromString(wire)
    return envelope_batch_bytes([Delivery(wire, ME, PEER, None, len(wire))])


def sent_before(payload: bytes) -> bytes:
    return transport_pb2.Envelope(payload=payload).SerializeToString()


def voted_requests(payload: bytes) -> tuple[Request, ...]:
    return _requests(
        envelope_from_pb(pbft_pb2.ConsensusEnvelope.FromString(payload), request_hash=request_hash)
    )


def persisted_before(requests: tuple[Request, ...]) -> bytes:
    """A voted batch's WriteState request, as consensus encoded it before."""
    voted = pbft_pb2.VotedBatch(
        request_hashes=[r.hash for r in requests], request_bodies=[r.body for r in requests]
    ).SerializeToString()
    return storage_pb2.WriteStateRequest(
        puts=[storage_pb2.StateEntry(key=b"batch/" + b"0" * 64, value=voted)]
    ).SerializeToString()


def persisted_now(requests: tuple[Request, ...]) -> bytes:
    """The same, as it does now."""
    (write,) = persist_writes([Record("batch/" + "0" * 64, encode_batch(requests))])
    return write


def compare(
    ways: dict[str, Callable[[T], object]],
    arg: T,
    repeats: int,
    per: float,
    unit: str,
    pairs: list[tuple[str, str]],
) -> dict[str, Any]:
    """CPU of each way on ``arg``, divided by ``per``, in ``unit`` (µs: 1e6, ms: 1e3),
    interleaved over ``repeats``; medians, and the medians of the side-by-side ratios of
    ``pairs``."""
    scale = 1e6 if unit == "us" else 1e3
    for fn in ways.values():  # warm up
        fn(arg)
    samples: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(repeats):
        for name, fn in ways.items():
            started = time.process_time()
            fn(arg)
            samples[name].append((time.process_time() - started) / per * scale)
    return {
        f"cpu_{unit}_median": {k: round(statistics.median(xs), 3) for k, xs in samples.items()},
        f"cpu_{unit}_samples": {k: [round(x, 3) for x in xs] for k, xs in samples.items()},
        "ratios": {
            f"{a}_over_{b}": round(
                statistics.median(x / y for x, y in zip(samples[a], samples[b], strict=True)), 3
            )
            for a, b in pairs
        },
    }


def run(bodies: int, repeats: int) -> dict[str, Any]:
    payload = envelope(bodies)
    if before(payload) != now(payload):  # the two must compute the same hashes
        raise AssertionError("the decoding measured does not give the hashes it replaced")
    wire = sent_before(payload)
    if payload_field(payload) != wire or transport_pb2.EnvelopeBatch.FromString(
        delivered_before(wire)
    ) != transport_pb2.EnvelopeBatch.FromString(delivered_now(wire)):
        raise AssertionError("the delivery measured does not give the batch it replaced")
    delivery = compare(
        {"before": delivered_before, "now": delivered_now},
        wire,
        repeats,
        1,
        "ms",
        [("now", "before")],
    )
    sending = compare(
        {"out_before": sent_before, "out_now": payload_field},
        payload,
        repeats,
        1,
        "ms",
        [("out_now", "out_before")],
    )
    delivery = {
        "cpu_ms_per_message_median": delivery["cpu_ms_median"] | sending["cpu_ms_median"],
        "cpu_ms_per_message_samples": delivery["cpu_ms_samples"] | sending["cpu_ms_samples"],
        "ratios": delivery["ratios"] | sending["ratios"],
    }
    requests = voted_requests(payload)
    if storage_pb2.WriteStateRequest.FromString(
        persisted_before(requests)
    ) != storage_pb2.WriteStateRequest.FromString(persisted_now(requests)):
        raise AssertionError("the persist measured does not give the request it replaced")
    persist = compare(
        {"before": persisted_before, "now": persisted_now},
        requests,
        repeats,
        1,
        "ms",
        [("now", "before")],
    )
    decode = compare(
        {"before": before, "now": now, "hash_floor": hash_floor_of(payload)},
        payload,
        repeats,
        bodies,
        "us",
        [("now", "before"), ("now", "hash_floor"), ("before", "hash_floor")],
    )
    from bench.cluster_load import machine

    return {
        "benchmark": "message_costs",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "parameters": {"bodies": bodies, "message_bytes": len(wire), "repeats": repeats},
        "delivery": delivery,
        "persist": {
            "cpu_ms_per_batch_median": persist["cpu_ms_median"],
            "cpu_ms_per_batch_samples": persist["cpu_ms_samples"],
            "ratios": persist["ratios"],
        },
        "decode": {
            "cpu_us_per_body_median": decode["cpu_us_median"],
            "cpu_us_per_body_samples": decode["cpu_us_samples"],
            "ratios": decode["ratios"],
        },
    }


#: The ways measured again each in a process of its own (:func:`fresh_process`).
FRESH_WAYS = ("delivery_before", "delivery_now", "persist_before", "persist_now")
#: Messages each of those processes handles after its warm-up.
FRESH_MESSAGES = 100


def _fresh_way(way: str, bodies: int) -> tuple[Callable[[Any], object], Any]:
    payload = envelope(bodies)
    if way.startswith("delivery"):
        wire = sent_before(payload)
        small = [sent_before(os.urandom(4700)) for _ in range(8)]  # PREPAREs, COMMITs
        encode = sent_before if way.endswith("before") else payload_field
        deliver = delivered_before if way.endswith("before") else delivered_now

        def both_ways(w: bytes) -> None:  # in, then out again: a transport's round
            for message in (w, *small):
                batch = transport_pb2.EnvelopeBatch.FromString(deliver(message))
                encode(batch.envelopes[0].payload)

        return both_ways, wire
    persist = persisted_before if way.endswith("before") else persisted_now
    return persist, voted_requests(payload)


def fresh_process_child(way: str, bodies: int) -> dict[str, Any]:
    """One way, in this process (a fresh one, under the services' allocator settings):
    minor page faults and CPU per message over :data:`FRESH_MESSAGES`."""
    fn, arg = _fresh_way(way, bodies)
    for _ in range(5):
        fn(arg)
    before_usage, started = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
    for _ in range(FRESH_MESSAGES):
        fn(arg)
    cpu = time.process_time() - started
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before_usage.ru_minflt
    return {
        "faults_per_message": round(faults / FRESH_MESSAGES, 1),
        "cpu_ms_per_message": round(cpu / FRESH_MESSAGES * 1e3, 3),
    }


def fresh_process(bodies: int) -> dict[str, Any]:
    """Each of :data:`FRESH_WAYS` in a process of its own, with ``MALLOC_ARENA_MAX=2`` as
    the supervisor starts the services and glibc's thresholds otherwise its defaults:
    there the freed buffers of each message may go back to the kernel and fault in again
    at the next, which the in-process figures (one heap, settled) do not show."""
    out: dict[str, Any] = {}
    env = {**os.environ, "MALLOC_ARENA_MAX": "2"}
    for var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        env.pop(var, None)
    for way in FRESH_WAYS:
        done = subprocess.run(
            [sys.executable, "-m", "bench.message_costs", "--child", way, "--bodies", str(bodies)],
            capture_output=True,
            text=True,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            timeout=300,
            check=True,
        )
        out[way] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=230, help="bodies in the PRE-PREPARE")
    parser.add_argument("--repeats", type=int, default=101, help="samples of each way")
    parser.add_argument("--output", type=Path, default=RESULT)
    parser.add_argument("--child", choices=FRESH_WAYS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bodies < 1 or args.repeats < 1:
        parser.error("--bodies and --repeats must be at least 1")
    if args.child:
        print(json.dumps(fresh_process_child(args.child, args.bodies)))
        return 0
    result = run(args.bodies, args.repeats)
    result["fresh_process"] = fresh_process(args.bodies)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    d, c = result["delivery"], result["decode"]
    dm, cm = d["cpu_ms_per_message_median"], c["cpu_us_per_body_median"]
    print(
        f"delivery of a {result['parameters']['message_bytes']}-byte message, median of "
        f"{args.repeats}: before {dm['before']} ms, now {dm['now']} ms "
        f"(paired ratio {d['ratios']['now_over_before']}); sent: before {dm['out_before']} ms, "
        f"now {dm['out_now']} ms ({d['ratios']['out_now_over_out_before']})"
    )
    pm = result["persist"]["cpu_ms_per_batch_median"]
    print(
        f"persist of the voted batch: before {pm['before']} ms, now {pm['now']} ms "
        f"(paired ratio {result['persist']['ratios']['now_over_before']})"
    )
    print(
        f"decode per body: before {cm['before']} us, now {cm['now']} us, hash floor "
        f"{cm['hash_floor']} us; paired ratios now/before {c['ratios']['now_over_before']}, "
        f"now/floor {c['ratios']['now_over_hash_floor']}"
    )
    for way, figures in result["fresh_process"].items():
        print(
            f"in a process of its own, {way}: {figures['faults_per_message']} page faults and "
            f"{figures['cpu_ms_per_message']} ms of CPU per message"
        )
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

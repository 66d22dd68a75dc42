"""Garbage in: never a 5xx, never a crash, always the JSON error shape (a bounded fuzz loop)."""

from __future__ import annotations

import json
import random
from typing import Any

from tests.gateway.support import Node

ROUNDS = 300
FIELDS = ["payload", "parents", "public_key", "signature", "timestamp_ms", "wait", ""]


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 2**64, 2**64 - 1, -(2**70), rng.randrange(-1000, 1000)])
    if kind == 3:
        return rng.choice([0.5, -1e308, 1e-300])
    if kind == 4:
        return "".join(
            rng.choice("0123456789abcdefXYZ=+/\u00e9\ud7ff") for _ in range(rng.randrange(70))
        )
    if kind == 5:
        return rng.randbytes(rng.randrange(40)).hex()
    if kind in (6, 7):
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(5))]
    return {rng.choice(FIELDS): random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def random_body(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 4:  # well-formed, but wrong lengths, unknown parents or bad signatures
        body = {
            "payload": "",
            "parents": [rng.randbytes(rng.choice([0, 31, 32, 33])).hex()],
            "public_key": rng.randbytes(rng.choice([1, 2592])).hex(),
            "signature": rng.randbytes(rng.choice([1, 4627])).hex(),
            "timestamp_ms": rng.randrange(2**64),
        }
        return json.dumps(body).encode()
    if kind == 0:
        return rng.randbytes(rng.randrange(200))
    if kind == 1:
        return json.dumps(random_value(rng)).encode()
    valid: dict[str, Any] = {"payload": "", "parents": []}  # a valid body, then mutated
    for _ in range(rng.randrange(1, 4)):
        valid[rng.choice(FIELDS)] = random_value(rng)
    text = json.dumps(valid).encode()
    if kind == 3 and text:  # and truncated or spliced
        cut = rng.randrange(len(text))
        text = text[:cut] + rng.randbytes(rng.randrange(3)) + text[cut + 1 :]
    return text


async def test_random_requests_never_fail_the_gateway(node: Node) -> None:
    rng = random.Random(20240607)
    seen: set[int] = set()
    for _ in range(ROUNDS):
        query = rng.choice(["", "?wait=false", "?wait=" + rng.choice(["x", "1", "%00", "true"])])
        if query == "?wait=1" or query == "?wait=true":
            query = ""  # a valid body would wait for finality; not what this test is about
        status, reply = await node.post("/v1/vertices" + query, data=random_body(rng))
        seen.add(status)
        assert status in (202, 400, 413, 422), (status, reply)
        if status >= 400:
            assert set(reply) == {"error"} and set(reply["error"]) == {"code", "message"}
    for _ in range(ROUNDS // 3):
        junk = "".join(
            rng.choice("0123456789abcdefABCDEF%-_.~xz") for _ in range(rng.randrange(90))
        )
        for path in (f"/v1/vertices/{junk}", f"/v1/finalized?from_seq={junk}&limit={junk}"):
            status, reply = await node.get(path)
            assert status in (200, 400, 404), (path, status, reply)
    assert {400, 422} <= seen
    assert await node.get("/healthz") == (200, {"status": "ok"})
    status, _ = await node.post("/v1/vertices", {"payload": ""})
    assert status == 202

"""The gateway's JSON writer (orjson, with the standard library as the fallback)."""

from __future__ import annotations

import json
import os

from services.gateway.codec import dumps, dumps_bytes


def _record(seq: int) -> dict[str, object]:
    return {
        "hash": os.urandom(32).hex(),
        "status": "finalized",
        "seq": seq,
        "height": None,
        "ready": True,
        "rtt_ms": 0.25,
        "big": 2**64 - 1,
        "vertex": {"payload": os.urandom(64).hex(), "parents": [os.urandom(32).hex()]},
        "certificate": {"view": 0, "commits": [os.urandom(100).hex()]},
    }


def test_an_ascii_document_is_written_byte_for_byte_as_the_standard_library_does() -> None:
    data = {"results": [_record(i) for i in range(8)], "rejected": []}
    assert dumps_bytes(data) == json.dumps(data, separators=(",", ":")).encode()
    assert dumps(data) == json.dumps(data, separators=(",", ":"))


def test_non_ascii_text_is_utf8_and_reads_back_the_same() -> None:
    data = {"message": "vertex café ✓ 𝄞", "n": [1, 2.5, None, True]}
    out = dumps_bytes(data)
    out.decode("utf-8")  # valid UTF-8
    assert json.loads(out) == data


def test_a_lone_surrogate_is_escaped_not_an_error() -> None:
    # json.loads accepts "\ud800" from a client; orjson refuses to write it
    data = {"message": json.loads('"field \\ud800"')}
    out = dumps_bytes(data)
    assert out == b'{"message":"field \\ud800"}'
    assert json.loads(out) == data

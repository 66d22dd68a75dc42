"""An HTTP/2 "rapid reset" client for tests: one cleartext connection that opens gRPC
streams and cancels each at once (HEADERS then RST_STREAM), in bursts, for a bounded time.

    python -m devkit.h2flood --port P [--method /cretoai.v1.Gateway/GetStatus] [--seconds 5]

Loopback only (``--host`` must be a 127.0.0.0/8 address). Prints the streams it opened
and whether the server closed the connection. Frames are written by hand (RFC 9113):
no HTTP/2 library does this on purpose.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import time

HEADERS, RST_STREAM, SETTINGS = 0x1, 0x3, 0x4
END_HEADERS = 0x4
CANCEL = 0x8
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(kind: int, flags: int, stream: int, payload: bytes = b"") -> bytes:
    return (
        struct.pack(">I", len(payload))[1:]
        + bytes([kind, flags])
        + struct.pack(">I", stream)
        + payload
    )


def _literal(name: str, value: str) -> bytes:
    """A header field as an HPACK literal without indexing (new name; lengths < 127)."""
    n, v = name.encode(), value.encode()
    return b"\x00" + bytes([len(n)]) + n + bytes([len(v)]) + v


def header_block(method: str, authority: str) -> bytes:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", method),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return b"".join(_literal(k, v) for k, v in fields)


def flood(host: str, port: int, method: str, seconds: float, burst: int = 200) -> tuple[int, bool]:
    """Open and cancel streams for ``seconds``; (streams opened, closed by the server)."""
    block = header_block(method, f"{host}:{port}")
    sock = socket.create_connection((host, port), timeout=5)
    sock.setblocking(False)
    pending = PREFACE + frame(SETTINGS, 0, 0)
    stream, opened, closed = 1, 0, False
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            if not pending:
                parts = []
                for _ in range(burst):
                    parts.append(frame(HEADERS, END_HEADERS, stream, block))
                    parts.append(frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL)))
                    stream += 2
                pending = b"".join(parts)
                opened += burst
            try:
                sent = sock.send(pending)
                pending = pending[sent:]
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                closed = True
                break
            try:  # read and drop the server's frames (settings, resets, window updates)
                if sock.recv(1 << 20) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            except OSError:
                closed = True
                break
    finally:
        sock.close()
    return opened, closed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--method", default="/cretoai.v1.Gateway/GetStatus")
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if not ipaddress.ip_address(args.host).is_loopback:
        parser.error("--host must be a loopback address")
    if not 0 < args.seconds <= 60:
        parser.error("--seconds must be in (0, 60]")
    opened, closed = flood(args.host, args.port, args.method, args.seconds)
    print(f"opened {opened} streams; closed by the server: {closed}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

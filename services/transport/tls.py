"""The throwaway TLS identity QUIC needs, and the channel binding taken from TLS.

aioquic cannot check client certificates and has no post-quantum key exchange,
so TLS here only gives an encrypted channel: each process makes an ephemeral
self-signed Ed25519 certificate at start, clients do not verify it, and peers
authenticate afterwards with ML-DSA-87 over a transcript that includes
:func:`channel_binding` — a value both ends of one TLS session derive from its
master secret and handshake transcript (like RFC 9266 ``tls-exporter``), which
no third party can know.
"""

from __future__ import annotations

import datetime
import ssl
from dataclasses import dataclass
from typing import Any

from aioquic.quic.configuration import QuicConfiguration
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

ALPN = "cretoai-transport/1"
SERVER_NAME = "cretoai-transport"
BINDING_LABEL = b"cretoai binding"


class ChannelBindingUnavailable(RuntimeError):
    """This aioquic does not expose what the binding is derived from (refuse to run)."""


@dataclass(frozen=True)
class TlsIdentity:
    certificate: x509.Certificate
    private_key: ed25519.Ed25519PrivateKey


def ephemeral_identity() -> TlsIdentity:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .sign(key, None)
    )
    return TlsIdentity(certificate=cert, private_key=key)


def quic_configuration(
    *,
    is_client: bool,
    identity: TlsIdentity | None,
    idle_timeout: float,
    max_datagram_size: int,
    flow_window: int,
) -> QuicConfiguration:
    config = QuicConfiguration(
        is_client=is_client,
        alpn_protocols=[ALPN],
        idle_timeout=idle_timeout,
        max_datagram_size=max_datagram_size,
        max_data=flow_window,
        max_stream_data=flow_window,
    )
    if is_client:
        config.verify_mode = ssl.CERT_NONE  # no PKI: peers authenticate with ML-DSA-87
        config.server_name = SERVER_NAME
    else:
        if identity is None:
            raise ValueError("a server configuration needs a TLS identity")
        config.certificate = identity.certificate
        config.private_key = identity.private_key
    return config


def channel_binding(quic: Any) -> bytes:
    """HKDF-Expand-Label(master secret, "cretoai binding", transcript hash), once handshaken.

    Taken from aioquic's TLS key schedule when the handshake completes: at that
    point both ends hold the master secret and have hashed ClientHello through
    the client's Finished, so both derive the same value.
    """
    schedule = getattr(getattr(quic, "tls", None), "key_schedule", None)
    derive = getattr(schedule, "derive_secret", None)
    if schedule is None or derive is None or getattr(schedule, "generation", None) != 3:
        raise ChannelBindingUnavailable(
            "cannot derive a TLS channel binding from this aioquic version"
        )
    value = derive(BINDING_LABEL)
    if not isinstance(value, bytes) or len(value) < 32:
        raise ChannelBindingUnavailable("unexpected TLS channel binding")
    return value

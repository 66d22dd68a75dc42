"""Mutual TLS between the services of one node (internal gRPC).

Each node has its own certificate authority, made by ``cretoai-node cluster init``
(:func:`generate_node_tls`): ``tls/ca.crt`` and one certificate for the node's
services, ``tls/node.crt`` with its key ``tls/node.key`` (0600). The CA's private
key is not kept: nobody can mint another certificate for the node. Every
internal service requires a client certificate signed by its node's CA, so a
caller without one, or with another node's, is refused during the handshake.

Certificates name the fixed host :data:`SERVER_NAME`; clients verify against it
whatever address they dial (a loopback port, a container name), so one
certificate serves every deployment of the node.
"""

from __future__ import annotations

import datetime
import ipaddress
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cretoai.files import foreign_problem, write_atomically

#: The name every internal certificate is issued to and every client checks.
SERVER_NAME = "cretoai-internal"
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "node.crt", "node.key"
#: The gateway's own client certificate: the internal services let its holder call only
#: what a gateway needs (cretoai.registry: ``gateway_may_call``), so the process that
#: faces the internet cannot write storage, take over the transport or ban peers.
GATEWAY_CERT_FILE, GATEWAY_KEY_FILE = "gateway.crt", "gateway.key"
GATEWAY_COMMON_NAME = "cretoai gateway"
VALIDITY = datetime.timedelta(days=3650)
#: Certificates are valid from this long before they are made: a host whose clock is
#: behind the one that ran ``cluster init`` (by more than the 5 minutes this was until an
#: audit, 2026-12-04) refused its own services' certificates as "not yet valid".
BACKDATE = datetime.timedelta(days=1)


class TlsError(Exception):
    """Internal TLS material that is missing, unreadable or unsafe; the message says which."""


@dataclass(frozen=True)
class InternalTls:
    """The node's CA and its services' certificate and key (PEM)."""

    ca: bytes
    cert: bytes
    key: bytes

    def server_credentials(self) -> grpc.ServerCredentials:
        """Serve with the node certificate; require a client certificate from the node's CA."""
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)], root_certificates=self.ca, require_client_auth=True
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    @staticmethod
    def channel_options() -> list[tuple[str, str]]:
        return [("grpc.ssl_target_name_override", SERVER_NAME)]


def load_internal_tls(ca: Path, cert: Path, key: Path) -> InternalTls:
    """Read the three files; the key must not be readable by group or others."""
    try:
        st = key.stat()
    except OSError as exc:
        raise TlsError(f"internal TLS key {key}: {exc.strerror or exc}") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TlsError(
            f"internal TLS key {key} is readable by group or others "
            f"(mode {stat.S_IMODE(st.st_mode):o}); run: chmod 600 {key}"
        )
    for path in (key, ca):  # the key and the CA decide whom the node's services trust
        foreign = foreign_problem(path)
        if foreign is not None:
            raise TlsError(f"internal TLS file {path} {foreign}")
    parts = []
    for what, path in (("CA certificate", ca), ("certificate", cert), ("key", key)):
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise TlsError(f"internal TLS {what} {path}: {exc.strerror or exc}") from None
        if b"-----BEGIN" not in data:
            raise TlsError(f"internal TLS {what} {path}: not a PEM file")
        parts.append(data)
    _check_pair(parts[0], parts[1], parts[2], ca=ca, cert=cert, key=key)
    return InternalTls(ca=parts[0], cert=parts[1], key=parts[2])


def _check_pair(
    ca_pem: bytes, cert_pem: bytes, key_pem: bytes, *, ca: Path, cert: Path, key: Path
) -> None:
    """The certificate is the key's and was issued by the CA: a mismatch was reported by
    gRPC as "cannot listen ... Failed to bind", and another CA's certificate as endless
    handshake failures of the node's own health checks, with no error (audit,
    2026-12-04)."""
    try:
        ca_cert = x509.load_pem_x509_certificate(ca_pem)
        certificate = x509.load_pem_x509_certificate(cert_pem)
        private_key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"internal TLS files {ca}, {cert}, {key}: unreadable ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    encoding = serialization.Encoding.DER
    if private_key.public_key().public_bytes(
        encoding, public
    ) != certificate.public_key().public_bytes(encoding, public):
        raise TlsError(
            f"internal TLS certificate {cert} is not the certificate of the key {key} "
            "(a file of another node or cluster?)"
        )
    now = datetime.datetime.now(datetime.UTC)
    for what, path, c in (("CA certificate", ca, ca_cert), ("certificate", cert, certificate)):
        if not c.not_valid_before_utc <= now <= c.not_valid_after_utc:
            stamp = "%Y-%m-%d %H:%M"
            raise TlsError(
                f"internal TLS {what} {path} is valid from "
                f"{c.not_valid_before_utc.strftime(stamp)} to "
                f"{c.not_valid_after_utc.strftime(stamp)} UTC, and this host's clock says "
                f"{now.strftime(stamp)} UTC: set the clock right (NTP), or make new "
                "certificates (cluster init --reuse-keys keeps them; remove the node's tls/ "
                "directory first)"
            )
    try:
        certificate.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise TlsError(
            f"internal TLS certificate {cert} was not issued by the CA {ca} (a file of "
            "another node or cluster?): the node's services would refuse each other"
        ) from None


def generate_node_tls(
    directory: Path, node_name: str, *, hostnames: Iterable[str] = ()
) -> tuple[Path, Path, Path]:
    """A new CA and service certificate for one node under ``directory``; their paths.

    ``hostnames``: more DNS names for the certificate (the names its services are
    reached by, e.g. container names), for tools that check the name they dial."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"cretoai {node_name} CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key, cert = _issue(
        ca_key,
        ca_name,
        f"cretoai {node_name} services",
        [
            x509.DNSName(SERVER_NAME),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
            *(x509.DNSName(h) for h in hostnames if h not in (SERVER_NAME, "localhost")),
        ],
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )
    # client only: a gateway serves no internal API
    gateway_key, gateway_cert = _issue(
        ca_key, ca_name, GATEWAY_COMMON_NAME, [], [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    ca_path, cert_path, key_path = (directory / n for n in (CA_FILE, CERT_FILE, KEY_FILE))
    write_atomically(ca_path, ca_cert.public_bytes(serialization.Encoding.PEM))
    for cert_file, key_file, issued, private in (
        (cert_path, key_path, cert, key),
        (directory / GATEWAY_CERT_FILE, directory / GATEWAY_KEY_FILE, gateway_cert, gateway_key),
    ):
        write_atomically(cert_file, issued.public_bytes(serialization.Encoding.PEM))
        # A new file of mode 0600 renamed over the old one: writing into an existing key
        # file (O_TRUNC) kept its mode, so a 0644 one held the new key readable a while.
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomically(key_file, pem, 0o600)
    return ca_path, cert_path, key_path


def _issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_name: x509.Name,
    common_name: str,
    names: list[x509.GeneralName],
    usages: list[x509.ObjectIdentifier],
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A new key and a certificate for it, signed by the node's CA."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback interface."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def is_loopback(address: str) -> bool:
    """Whether ``host:port`` binds only a loopback interface."""
    return is_loopback_host(address.rpartition(":")[0])

"""The two error families of the transport.

* :class:`TransportError` and its subclasses are raised for *our own* misuse or
  a request the local caller (consensus, an operator) got wrong; each is one of
  the shared :mod:`cretoai.errors` classes, so a call that raises it ends with
  that class's status.
* A *peer's* fault is never raised: it is a :class:`PeerFault` value that is
  counted, logged (rate limited) and answered by closing the connection with a
  :class:`CloseCode`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cretoai.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)


class TransportError(ServiceError):
    """A local error: bad request from the caller, or an impossible local state."""


class UnknownPeer(NotFound, TransportError):
    """The node id is not a member of the cluster."""


class InvalidRequest(InvalidArgument, TransportError):
    """The request cannot be carried out as given (e.g. sending to ourselves)."""


class PeerUnavailable(Unavailable, TransportError):
    """The peer is a member but not connected (or banned, or partitioned)."""


class PeerTimeout(DeadlineExceeded, TransportError):
    """The peer did not answer in time."""


class FaultInjectionDisabled(FailedPrecondition, TransportError):
    """Fault injection was requested but [fault_injection] enabled is false."""


class CloseCode(enum.IntEnum):
    """QUIC application error codes with which a transport closes a connection."""

    NO_ERROR = 0
    PROTOCOL_VIOLATION = 1
    AUTH_FAILED = 2
    NOT_MEMBER = 3
    BANNED = 4
    DUPLICATE = 5
    PEER_RESTARTED = 6
    HANDSHAKE_TIMEOUT = 7
    SHUTDOWN = 8
    PARTITIONED = 9
    KEEPALIVE_TIMEOUT = 10
    WRONG_PEER = 11
    UNSUPPORTED_VERSION = 12
    SELF_CONNECTION = 13
    #: This address failed to prove this member's key too often lately: try later.
    AUTH_COOLDOWN = 14
    #: A process of this member whose connection a newer process with the same key took
    #: is still alive and came back: two processes run with one member's key.
    IDENTITY_IN_USE = 15
    #: The peer runs with other cluster parameters (validator set order, PBFT limits):
    #: a configuration mistake on one side; the reason names what differs.
    PARAMETERS_DIFFER = 16


@dataclass(frozen=True, slots=True)
class PeerFault:
    """Something a remote endpoint did wrong. ``reason`` is a metric label."""

    reason: str
    detail: str
    close: CloseCode = CloseCode.PROTOCOL_VIOLATION

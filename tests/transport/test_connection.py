"""PeerConnection without sockets: two connections joined by an in-memory link.

Authentication (success, non-member, wrong key, wrong peer, refusal), frames
before authentication, oversized and garbage frames, extra streams, the
application window and keep-alive — all driven with an explicit clock.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

import pytest
import zstandard
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.packet import pull_quic_header
from aioquic.quic.rangeset import RangeSet

from cretoai.crypto import get_backend, node_id
from cretoai.crypto.backend import PrivateKey
from services.transport import auth
from services.transport.bounded_quic import (
    AUTHENTICATED_MAX_GAPS,
    LARGE_DATAGRAMS_FEATURE,
    LARGE_LOOPBACK_DATAGRAM_BYTES,
    UNAUTHENTICATED_RECEIVE_WINDOW,
    BoundedQuicConnection,
    GapSet,
)
from services.transport.connection import (
    MAX_CLUSTER_PARAMETERS,
    MAX_PARAMETER_CHARS,
    Authenticated,
    Closed,
    ConnectionEvent,
    ConnectionSettings,
    MessageReceived,
    PeerConnection,
    PongReceived,
    WindowOpened,
)
from services.transport.errors import CloseCode
from services.transport.framing import FrameType, encode_frame
from services.transport.tls import ephemeral_identity, quic_configuration

BACKEND = get_backend("cryptography")
SETTINGS = ConnectionSettings(
    max_frame_bytes=64 * 1024,
    inflight_max_bytes=8 * 1024,
    handshake_timeout=2.0,
    keepalive_interval=1.0,
    liveness_timeout=3.0,
    receive_window=1 << 20,
)
CLIENT_ADDR = ("127.0.0.1", 1001)
SERVER_ADDR = ("127.0.0.1", 1002)


def new_key() -> PrivateKey:
    return BACKEND.private_key_from_seed(os.urandom(32))


@dataclass
class FakeAuthority:
    key: PrivateKey
    members: dict[str, bytes]
    claimed_id: str = ""
    refused: dict[str, CloseCode] = field(default_factory=dict)
    boot_id: bytes = field(default_factory=lambda: os.urandom(auth.BOOT_ID_SIZE))

    @property
    def node_id(self) -> str:
        return self.claimed_id or node_id(self.key.public_key)

    def member_key(self, nid: str) -> bytes | None:
        return self.members.get(nid)

    def refusal(self, nid: str, address: object = None) -> CloseCode | None:
        return self.refused.get(nid)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message, context=auth.AUTH_CONTEXT)

    def verify(self, public_key: bytes, message: bytes, signature: bytes) -> bool:
        return BACKEND.verify(public_key, message, signature, context=auth.AUTH_CONTEXT)


def qconfig(*, is_client: bool, max_datagram_size: int = 1350) -> QuicConfiguration:
    return quic_configuration(
        is_client=is_client,
        identity=None if is_client else ephemeral_identity(),
        idle_timeout=30.0,
        max_datagram_size=max_datagram_size,
        flow_window=UNAUTHENTICATED_RECEIVE_WINDOW,  # as the node: opened once authenticated
    )


class Link:
    """A client and a server PeerConnection, pumped by hand with a fake clock."""

    def __init__(
        self,
        client: FakeAuthority,
        server: FakeAuthority,
        *,
        expected: str | None = None,
        client_settings: ConnectionSettings = SETTINGS,
        server_settings: ConnectionSettings = SETTINGS,
        max_datagram_size: int = 1350,
        addresses: tuple[tuple[str, int], tuple[str, int]] = (CLIENT_ADDR, SERVER_ADDR),
    ) -> None:
        self.now = 100.0
        self.client_addr, self.server_addr = addresses
        self.client = PeerConnection(
            quic=BoundedQuicConnection(
                configuration=qconfig(is_client=True, max_datagram_size=max_datagram_size)
            ),
            authority=client,
            settings=client_settings,
            now=self.now,
            expected_peer=expected if expected is not None else server.node_id,
        )
        self._server_auth = server
        self._server_settings = server_settings
        self._server_config = qconfig(is_client=False, max_datagram_size=max_datagram_size)
        self.server: PeerConnection | None = None
        self.events: dict[str, list[ConnectionEvent]] = {"client": [], "server": []}
        #: The size of every datagram each side sent.
        self.sizes: dict[str, list[int]] = {"client": [], "server": []}
        self.client.connect(self.server_addr, self.now)

    def pump(self, rounds: int = 400) -> None:
        """Exchange datagrams until quiet; short timers (pacing, delayed ACKs) are run."""
        for _ in range(rounds):
            if self._exchange():
                continue
            timers = [t for t in (self.client.get_timer(), self._server_timer()) if t is not None]
            soon = min(timers, default=None)
            if soon is None or soon > self.now + 0.2:
                break
            self.now = max(self.now, soon)
            self.client.handle_timer(self.now)
            if self.server is not None:
                self.server.handle_timer(self.now)
            self._drain()

    def _server_timer(self) -> float | None:
        return self.server.get_timer() if self.server is not None else None

    def _exchange(self) -> bool:
        moved = False
        for data, _ in self.client.datagrams_to_send(self.now):
            moved = True
            self.sizes["client"].append(len(data))
            if self.server is None:
                header = pull_quic_header(Buffer(data=data), host_cid_length=8)
                self.server = PeerConnection(
                    quic=BoundedQuicConnection(
                        configuration=self._server_config,
                        original_destination_connection_id=header.destination_cid,
                    ),
                    authority=self._server_auth,
                    settings=self._server_settings,
                    now=self.now,
                )
            self.server.receive_datagram(data, self.client_addr, self.now)
        if self.server is not None:
            for data, _ in self.server.datagrams_to_send(self.now):
                moved = True
                self.sizes["server"].append(len(data))
                self.client.receive_datagram(data, self.server_addr, self.now)
        self._drain()
        return moved

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.client.handle_timer(self.now)
        if self.server is not None:
            self.server.handle_timer(self.now)
        self.pump()

    def _drain(self) -> None:
        for side, conn in (("client", self.client), ("server", self.server)):
            while conn is not None and (event := conn.next_event()) is not None:
                self.events[side].append(event)

    def closed(self, side: str) -> Closed:
        found = [e for e in self.events[side] if isinstance(e, Closed)]
        assert len(found) == 1, self.events[side]
        return found[0]


def two_members() -> tuple[FakeAuthority, FakeAuthority]:
    a, b = new_key(), new_key()
    members = {node_id(a.public_key): a.public_key, node_id(b.public_key): b.public_key}
    return FakeAuthority(key=a, members=members), FakeAuthority(key=b, members=dict(members))


def test_members_authenticate_each_other() -> None:
    client, server = two_members()
    link = Link(client, server)
    link.pump()
    assert link.client.authenticated and link.server is not None and link.server.authenticated
    assert link.events["client"][0] == Authenticated(peer_id=server.node_id)
    assert link.events["server"][0] == Authenticated(peer_id=client.node_id)
    # a first PING goes out at once, so an RTT is known without waiting a keep-alive
    assert any(isinstance(e, PongReceived) for e in link.events["client"])
    assert not any(
        isinstance(e, Closed) for side in ("client", "server") for e in link.events[side]
    )
    assert link.server.peer_boot_id == client.boot_id
    assert link.client.peer_boot_id == server.boot_id


def test_message_frames_flow_in_order_and_the_window_opens() -> None:
    client, server = two_members()
    link = Link(client, server)
    link.pump()
    frames = [
        encode_frame(FrameType.MSG, b"%04d" % i + b"x" * 500, max_frame_bytes=1 << 16)
        for i in range(40)
    ]
    sent = 0
    while sent < len(frames):
        batch = []
        while sent < len(frames) and link.client.can_send(len(frames[sent])):
            batch.append(frames[sent])
            link.client.send_messages([frames[sent]])
            sent += 1
        assert batch, "the window must open again"
        assert link.client.inflight <= SETTINGS.inflight_max_bytes + len(frames[0])
        link.pump()
    got = [e.body[:4] for e in link.events["server"] if isinstance(e, MessageReceived)]
    assert got == [b"%04d" % i for i in range(40)]
    assert any(isinstance(e, WindowOpened) for e in link.events["client"])


def test_non_member_is_rejected_at_hello() -> None:
    client, server = two_members()
    stranger = FakeAuthority(key=new_key(), members=dict(client.members))
    stranger.members[stranger.node_id] = stranger.key.public_key
    link = Link(stranger, server)
    link.pump()
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "non_member"
    assert closed.code == CloseCode.NOT_MEMBER
    assert link.closed("client").code == CloseCode.NOT_MEMBER  # told why
    assert not any(isinstance(e, Authenticated) for e in link.events["server"])


def test_member_with_the_wrong_key_fails_the_signature() -> None:
    client, server = two_members()
    impostor = FakeAuthority(key=new_key(), members=dict(client.members), claimed_id=client.node_id)
    link = Link(impostor, server)
    link.pump()
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "bad_signature"
    assert closed.code == CloseCode.AUTH_FAILED
    assert not any(isinstance(e, Authenticated) for e in link.events["server"])


def test_server_with_the_wrong_key_fails_the_client_check() -> None:
    client, server = two_members()
    impostor = FakeAuthority(key=new_key(), members=dict(server.members), claimed_id=server.node_id)
    link = Link(client, impostor)
    link.pump()
    closed = link.closed("client")
    assert closed.fault is not None and closed.fault.reason == "bad_signature"
    assert not link.client.authenticated


def test_dialing_one_member_and_reaching_another_is_rejected() -> None:
    client, server = two_members()
    third = new_key()
    client.members[node_id(third.public_key)] = third.public_key
    link = Link(client, server, expected=node_id(third.public_key))
    link.pump()
    closed = link.closed("client")
    assert closed.fault is not None and closed.fault.reason == "wrong_peer"


def test_refused_peer_is_closed_with_the_refusal_code() -> None:
    client, server = two_members()
    server.refused[client.node_id] = CloseCode.BANNED
    link = Link(client, server)
    link.pump()
    assert link.closed("server").code == CloseCode.BANNED
    assert link.closed("client").code == CloseCode.BANNED


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        (FrameType.MSG, b"sneaky"),
        # a stranger cannot make a transport decompress anything either
        (FrameType.MSG_ZSTD, zstandard.ZstdCompressor().compress(b"\0" * 100_000)),
    ],
)
def test_frames_before_authentication_close_the_connection(kind: FrameType, body: bytes) -> None:
    client, server = two_members()
    link = Link(client, server)
    # finish only the QUIC handshake, then push a MSG frame instead of waiting for AUTH
    link.client.quic.send_stream_data(0, encode_frame(kind, body, max_frame_bytes=1024))
    link.pump()
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "unauthenticated_frame"
    assert not any(isinstance(e, MessageReceived) for e in link.events["server"])


def test_oversized_frame_after_auth_closes_with_a_fault_value() -> None:
    client, server = two_members()
    link = Link(client, server)
    link.pump()
    link.client.quic.send_stream_data(0, (SETTINGS.max_frame_bytes + 1).to_bytes(4, "big"))
    link.pump()
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "oversized_frame"
    assert closed.was_authenticated


def test_large_frame_before_auth_is_oversized() -> None:
    client, server = two_members()
    link = Link(client, server)
    link.client.quic.send_stream_data(0, (64 * 1024).to_bytes(4, "big"))
    link.pump()
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "oversized_frame"


def test_garbage_hello_is_a_fault() -> None:
    client, server = two_members()
    link = Link(client, server)
    # queued before the handshake completes, so it goes out ahead of the real HELLO
    link.client.quic.send_stream_data(0, b"\x00\x00\x00\x05\x01\xff\xff\xff\xff")
    link.pump()
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "malformed_hello"


@pytest.mark.parametrize(
    ("count", "chars", "accepted"),
    [
        (MAX_CLUSTER_PARAMETERS, MAX_PARAMETER_CHARS, True),
        (MAX_CLUSTER_PARAMETERS + 1, 8, False),
        (1, MAX_PARAMETER_CHARS + 1, False),
    ],
    ids=["at_the_bounds", "one_parameter_too_many", "one_character_too_long"],
)
def test_cluster_parameters_in_a_hello_are_bounded(count: int, chars: int, accepted: bool) -> None:
    """A HELLO's parameters are read before the peer proved its key: at most 32 of at
    most 128 characters each (name and value), else the HELLO is malformed."""
    client, server = two_members()
    parameters = tuple((f"p{i}".ljust(chars, "x"), "v".ljust(chars, "9")) for i in range(count))
    settings = dataclasses.replace(SETTINGS, cluster_parameters=parameters)
    link = Link(client, server, client_settings=settings)
    link.pump()
    assert link.server is not None
    if accepted:
        assert link.server.authenticated
        assert link.server.peer_parameters == parameters
    else:
        closed = link.closed("server")
        assert closed.fault is not None and closed.fault.reason == "malformed_hello"
        assert closed.fault.detail == "parameters out of bounds"
        assert not link.server.authenticated


def test_data_on_another_stream_is_a_fault() -> None:
    client, server = two_members()
    link = Link(client, server)
    link.pump()
    link.client.quic.send_stream_data(4, b"hello?")
    link.pump()
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "unexpected_stream"


def test_keepalive_pings_measure_rtt_and_silence_closes() -> None:
    client, server = two_members()
    link = Link(client, server)
    link.pump()
    link.advance(SETTINGS.keepalive_interval + 0.01)
    assert any(isinstance(e, PongReceived) for e in link.events["client"])
    assert link.client.srtt is not None
    # the server goes silent (we stop delivering its datagrams): the client gives up
    silent_for = 0.0
    while not link.client.closed and silent_for < 10:
        link.now += 0.5
        silent_for += 0.5
        link.client.handle_timer(link.now)
        link.client.datagrams_to_send(link.now)  # lost
        while (event := link.client.next_event()) is not None:
            link.events["client"].append(event)
    closed = link.closed("client")
    assert closed.code == CloseCode.KEEPALIVE_TIMEOUT
    assert SETTINGS.liveness_timeout <= silent_for <= SETTINGS.liveness_timeout + 1.5


def test_handshake_deadline() -> None:
    client, server = two_members()
    link = Link(client, server)
    # nothing is ever delivered: the client's deadline closes it
    link.client.datagrams_to_send(link.now)
    link.now += SETTINGS.handshake_timeout + 0.1
    link.client.handle_timer(link.now)
    event = link.client.next_event()
    assert isinstance(event, Closed) and event.code == CloseCode.HANDSHAKE_TIMEOUT


def _send_at_the_end_of_the_window(link: Link) -> int:
    """The client sends one byte at the very end of the server's stream window, the bytes
    before it left out (a Byzantine member growing the server's buffer); returns the
    window it aimed at."""
    quic = link.client.quic
    stream = quic._streams[0]
    window = min(stream.max_stream_data_remote, quic._remote_max_data)
    sender = stream.sender
    sender._buffer = bytearray()
    sender._buffer_start = sender._buffer_stop = window - 1
    sender.write(b"x")
    link.pump()
    return window


def test_a_peer_grows_no_buffer_beyond_the_window_past_what_was_delivered() -> None:
    """aioquic doubled the window whenever the highest offset passed half of it, out of
    order included: one byte at its end per round trip doubled what the receiver buffered.
    The window ends ``receive_window`` past the delivered bytes: 64 KiB before the peer
    authenticated (tests/transport/test_service.py), ``receive_window`` after."""
    client, server = two_members()
    link = Link(client, server)
    link.pump()
    assert link.server is not None and link.server.authenticated
    # the window opened with authentication: a burst well past 64 KiB goes through
    frames = [encode_frame(FrameType.MSG, b"y" * 30_000, max_frame_bytes=1 << 16)] * 12
    for frame in frames:
        link.client.send_messages([frame])
    link.pump()

    def received() -> int:
        return sum(isinstance(e, MessageReceived) for e in link.events["server"])

    for _ in range(10):  # QUIC's pacing and congestion window, on the fake clock
        if received() == len(frames):
            break
        link.advance(0.5)
    assert received() == len(frames)
    delivered = link.server.quic._streams[0].receiver._buffer_start
    assert delivered > 5 * UNAUTHENTICATED_RECEIVE_WINDOW
    granted = link.client.quic._streams[0].max_stream_data_remote - delivered
    assert granted > SETTINGS.receive_window // 2  # what the client was told: the flow window
    aimed = [_send_at_the_end_of_the_window(link) for _ in range(6)]
    assert aimed[-1] <= delivered + SETTINGS.receive_window  # never raised past it
    assert link.server.quic.buffered_out_of_order() < SETTINGS.receive_window
    limit = link.server.quic._local_max_data.value
    assert limit <= link.server.quic._local_max_data.used + SETTINGS.receive_window


def _send_gapped_bytes(link: Link, count: int) -> None:
    """The client sends ``count`` one-byte frames, each after a one-byte gap: it writes
    twice ``count`` bytes and marks only every second one as to be sent."""
    sender = link.client.quic._streams[0].sender
    base = sender._buffer_stop
    sender.write(b"x" * (2 * count))
    pending = RangeSet()
    for i in range(count):
        pending.add(base + 2 * i + 1, base + 2 * i + 2)
    sender._pending = pending
    for _ in range(20):  # a frame per packet: the congestion window paces them
        link.pump()
        if len(sender._pending) == 0 or (link.server and not link.server.authenticated):
            break


def test_a_member_leaving_more_gaps_than_lost_packets_would_is_closed() -> None:
    """Gaps are what lost packets leave; a hundred of them is a bad path, more than
    AUTHENTICATED_MAX_GAPS a peer keeping the receiver's books busy: a fault."""
    client, server = two_members()
    link = Link(client, server)
    link.pump()
    assert link.server is not None and link.server.authenticated
    _send_gapped_bytes(link, 100)
    received = link.server.quic._streams[0].receiver._ranges
    assert isinstance(received, GapSet)  # bisected, not scanned (test_bounded_quic.py)
    assert link.server.authenticated and len(received) == 100
    _send_gapped_bytes(link, AUTHENTICATED_MAX_GAPS - 100 + 1)
    closed = link.closed("server")
    assert closed.fault is not None and closed.fault.reason == "stream_fragmented"


# ---- packets larger than 16 KiB between members on one host -------------------------

LARGE = dataclasses.replace(
    SETTINGS,
    max_frame_bytes=1 << 20,
    inflight_max_bytes=4 << 20,
    receive_window=4 << 20,
    features=(LARGE_DATAGRAMS_FEATURE,),
)


def _send_and_collect(link: Link, count: int) -> list[bytes]:
    """``count`` 150-KB messages from the client (random: incompressible), as received."""
    sent = [os.urandom(150_000) for _ in range(count)]
    link.client.send_messages(
        [encode_frame(FrameType.MSG, body, max_frame_bytes=1 << 20) for body in sent]
    )
    link.sizes["client"].clear()
    link.pump(4000)
    got = [e.body for e in link.events["server"] if isinstance(e, MessageReceived)]
    assert got == sent  # every byte, in order: the frames within each packet parse
    return got


def test_members_on_one_host_that_both_offer_it_send_packets_over_16_kib() -> None:
    """aioquic writes one STREAM frame per packet with a 2-byte length: a packet over
    16 KiB corrupted. Several frames per packet carry 60,000-byte packets intact."""
    client, server = two_members()
    link = Link(
        client, server, client_settings=LARGE, server_settings=LARGE, max_datagram_size=15000
    )
    link.pump()
    assert link.client.sends_large_datagrams and link.server is not None
    assert link.server.sends_large_datagrams
    _send_and_collect(link, 8)
    sizes = link.sizes["client"]
    assert max(sizes) == LARGE_LOOPBACK_DATAGRAM_BYTES
    assert sum(sizes) / len(sizes) > 2 * 16384, sizes  # most packets are large
    assert not any(
        isinstance(e, Closed) for side in ("client", "server") for e in link.events[side]
    )


@pytest.mark.parametrize(
    ("client_features", "addresses"),
    [
        ((), (CLIENT_ADDR, SERVER_ADDR)),  # a peer that does not offer it (an older one)
        ((LARGE_DATAGRAMS_FEATURE,), (("10.1.0.1", 1001), ("10.1.0.2", 1002))),  # not this host
    ],
    ids=["not-offered", "not-loopback"],
)
def test_packets_stay_at_the_configured_size_otherwise(
    client_features: tuple[str, ...], addresses: tuple[tuple[str, int], tuple[str, int]]
) -> None:
    client, server = two_members()
    link = Link(
        client,
        server,
        client_settings=dataclasses.replace(LARGE, features=client_features),
        server_settings=LARGE,
        max_datagram_size=15000,
        addresses=addresses,
    )
    link.pump()
    assert link.client.authenticated and link.server is not None and link.server.authenticated
    assert not link.client.sends_large_datagrams and not link.server.sends_large_datagrams
    _send_and_collect(link, 4)
    assert max(link.sizes["client"]) <= 15000

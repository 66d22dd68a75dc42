"""transport service: authenticated QUIC between nodes (see docs/transport.md).

Layers, from the wire up: ``framing`` (sans-I/O frame codec), ``auth`` and
``tls`` (handshake transcript, channel binding, signed address records),
``connection`` (one peer connection, sans-I/O), ``endpoint`` (the UDP socket),
``queues`` (bounded queues and drop policy), ``node`` (peers, dialing, bans,
faults, discovery), ``servicer`` (the gRPC contract), ``service`` (build from config).
"""

"""The gateway service: a node's public REST, WebSocket and gRPC APIs (docs/gateway.md)."""

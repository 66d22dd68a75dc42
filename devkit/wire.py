"""Protobuf wire bytes written by hand, for tests and benchmarks that need messages as
bytes without building them (already-serialized fields, or shapes protobuf would refuse
to build): the services' own helpers (:mod:`cretoai.protowire`)."""

from __future__ import annotations

from cretoai.protowire import length_delimited, varint

__all__ = ["length_delimited", "varint"]

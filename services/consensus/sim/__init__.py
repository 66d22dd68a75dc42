"""A deterministic, seeded simulator for the PBFT core (see docs/consensus.md)."""

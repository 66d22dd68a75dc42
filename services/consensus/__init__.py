"""consensus service."""

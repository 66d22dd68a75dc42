"""transport service."""

"""CretoAI node: shared library of the four services (config, crypto, serving, telemetry, CLI)."""

__version__ = "0.1.0"

"""The four services of a CretoAI node (consensus, transport, storage, gateway)."""

"""``python -m services.consensus.sim`` (also mounted as ``cretoai-node sim``)."""

from __future__ import annotations

import sys

from services.consensus.sim.cli import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
